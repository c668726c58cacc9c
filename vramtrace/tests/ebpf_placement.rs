//! Probes placed past the symbol (`record --probe-at auto`) must see exactly what probes on
//! the symbol (`--probe-at entry`) see: the same calls, arguments, return codes and
//! addresses, for every hooked entry point, on NVIDIA's driver and on the simulated one.

mod common;

use std::{collections::BTreeMap, path::Path};

use common::{nvidia::generations, record_with, sim};
use vramtrace::{
    probe::placement::{self, ProbeAt},
    trace::{Header, Record},
};

/// Per entry point, in call order: (return code, bytes, address).
type Seen = BTreeMap<String, Vec<(i32, Option<u64>, Option<u64>)>>;

/// Records `workload --lib LIB probe-all` under `vramtrace record --probe-at PROBE_AT`.
fn record_probe_all(lib: &Path, probe_at: &str) -> (Header, Seen) {
    let r = record_with(lib, &["--probe-at", probe_at], "probe-all", &[]);
    let pid = r.truth["pid"].as_u64().expect("pid in the ground truth") as u32;
    let mut seen = Seen::new();
    for c in r
        .records
        .iter()
        .filter_map(Record::call)
        .filter(|c| c.pid == pid)
    {
        seen.entry(c.api.to_string())
            .or_default()
            // Host addresses come from malloc and move with ASLR between the two runs.
            .push((
                c.ret,
                c.bytes,
                c.addr.filter(|_| !c.mem.is_some_and(|m| m.is_host())),
            ));
    }
    let lost: u64 = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::Lost(l) => Some(l.events()),
            _ => None,
        })
        .sum();
    assert_eq!(lost, 0, "--probe-at {probe_at}: events lost");
    (r.header, seen)
}

/// Both placements trace the same calls; `auto` moved the probes where placement chose.
fn same_events_at_entry_and_auto(lib: &Path, expected_offset: u64) {
    let (entry_header, entry) = record_probe_all(lib, "entry");
    let (auto_header, auto) = record_probe_all(lib, "auto");
    assert!(
        entry.len() >= 30,
        "probe-all calls the whole surface: {:?}",
        entry.keys()
    );
    for (api, calls) in &entry {
        assert_eq!(auto.get(api), Some(calls), "{api}: entry vs auto");
    }
    assert_eq!(
        entry.keys().collect::<Vec<_>>(),
        auto.keys().collect::<Vec<_>>()
    );

    let probes =
        |h: &Header| -> Vec<_> { h.libraries.iter().flat_map(|l| l.probes.clone()).collect() };
    let entry_probes = probes(&entry_header);
    let auto_probes = probes(&auto_header);
    assert!(
        entry_probes.iter().all(|p| p.probe_offset == 0),
        "{entry_probes:?}"
    );
    assert_eq!(entry_probes.len(), auto_probes.len());
    for p in &auto_probes {
        let chosen = placement::place(lib, p.symbol_offset, ProbeAt::Auto);
        assert_eq!(
            p.probe_offset, chosen.offset,
            "{}: {}",
            p.symbol, chosen.reason
        );
        if p.symbol.starts_with("cuMem") {
            assert_eq!(
                p.probe_offset, expected_offset,
                "{}: {}",
                p.symbol, chosen.reason
            );
        }
    }
}

/// Each of NVIDIA's driver generations Debian ships: 535, 550 and 555.
fn nvidia_generation_is_traced_identically(name: &str) {
    let g = generations()
        .into_iter()
        .find(|g| g.name == name)
        .expect("a generation common::nvidia lists");
    // cmpl $imm32, disp32(%rip) is 10 bytes; the je after it is emulated.
    same_events_at_entry_and_auto(&g.path, 10);
}

#[test]
fn nvidia_535_is_traced_identically_at_the_symbol_and_on_its_je() {
    nvidia_generation_is_traced_identically("535");
}

#[test]
fn nvidia_550_is_traced_identically_at_the_symbol_and_on_its_je() {
    nvidia_generation_is_traced_identically("550");
}

#[test]
fn nvidia_555_is_traced_identically_at_the_symbol_and_on_its_je() {
    nvidia_generation_is_traced_identically("555");
}

#[test]
fn simulated_driver_is_traced_identically_at_the_symbol_and_on_its_je() {
    let (lib, _) = sim();
    // cmpl $imm8, disp32(%rip) is 7 bytes.
    same_events_at_entry_and_auto(lib, 7);
}
