//! `probe-all` recorded on an H100 with NVIDIA's driver 580.159.04 (CUDA 13.0), where the
//! calls succeed: every entry point resolved through `cuGetProcAddress_v2` at `cudaVersion`
//! 12000, 12050 and 13000 (tests/data/gpu/probe-all-580/VERSION.jsonl.gz, with the workload's
//! ground truth in VERSION.truth.json). Replayed to hold what was traced there: every hooked
//! call (116 probes: pools' attributes, synchronizations, green contexts, memory shared between processes and graph memory included), `cuCtxCreate` resolving to `_v3` at 12000 and `_v4` from 12050, and each context
//! variant's flags (4) and device (0) read by its own signature.

mod common;

use std::path::Path;

use vramtrace::trace::Record;

#[test]
fn driver_580_traced_every_call_at_every_cuda_version() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpu/probe-all-580");
    for (version, ctx_create) in [
        (12000, "cuCtxCreate_v3"),
        (12050, "cuCtxCreate_v4"),
        (13000, "cuCtxCreate_v4"),
    ] {
        // Read whole and intact, and every hooked call the workload made traced with its
        // result and bytes.
        let r = common::replay(
            &dir.join(format!("{version}.jsonl.gz")),
            &dir.join(format!("{version}.truth.json")),
        );
        common::truth::check_against_truth(&r);
        let truth = &r.truth;
        assert_eq!(truth["driver"]["init_ret"].as_u64(), Some(0), "a GPU");
        assert_eq!(
            truth["cuda_version"]["cuCtxCreate"].as_str(),
            Some(ctx_create),
            "{version}"
        );

        let hooked = common::truth::hooked(&r.header);
        assert_eq!(hooked.len(), 116, "{version}: {hooked:?}");
        assert!(hooked.contains("cuCtxCreate_v4"), "{version}");
        let uncalled: Vec<&String> = hooked
            .iter()
            .filter(|api| truth["calls"].get(api.as_str()).is_none())
            .collect();
        assert!(
            uncalled.is_empty(),
            "{version}: every hooked symbol called, not {uncalled:?}"
        );
        // cuGetProcAddress_v2 gives `cuCtxSynchronize_v2` for "cuCtxSynchronize" at 13000
        // (where the workload, asking for the unversioned export, falls back to dlsym) and
        // the unversioned export before; probe-all calls `_v2` itself.
        let via = truth["resolved_via"]["cuCtxSynchronize"].as_str();
        let want = if version >= 13000 {
            "dlsym"
        } else {
            "cuGetProcAddress_v2"
        };
        assert_eq!(via, Some(want), "{version}: how cuCtxSynchronize was found");

        let pid = truth["pid"].as_u64().expect("pid") as u32;
        let asked = &truth["ctx_create"];
        for c in r.records.iter().filter_map(|r| match r {
            Record::CtxCreate(c) if c.pid == pid && c.api.starts_with("cuCtxCreate") => Some(c),
            _ => None,
        }) {
            assert_eq!(
                (c.device.map(i64::from), c.flags),
                (asked["device"].as_i64(), asked["flags"].as_u64()),
                "{version}: {}",
                c.api
            );
        }
        let v4 = r.records.iter().any(|r| {
            matches!(r, Record::CtxCreate(c) if c.pid == pid && &*c.api == "cuCtxCreate_v4" && c.ret == 0)
        });
        assert!(v4, "{version}: cuCtxCreate_v4 succeeded and was traced");
    }
}

/// The simulated driver's workloads, each recorded on the same H100 and driver with NVIDIA's
/// real libcuda underneath (tests/data/gpu/workloads-580/SCENARIO.jsonl.gz with the
/// workload's ground truth): every hooked call, its bytes, what was held at exit, the peak
/// and the bytes pools kept agree exactly on the real driver as on the simulated one.
#[test]
fn simulated_workloads_on_driver_580_match_their_ground_truth() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpu/workloads-580");
    let mut seen: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/data/gpu/workloads-580")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".truth.json").map(str::to_string)
        })
        .collect();
    seen.sort();
    for scenario in &seen {
        let mut r = common::replay(
            &dir.join(format!("{scenario}.jsonl.gz")),
            &dir.join(format!("{scenario}.truth.json")),
        );
        assert_eq!(
            r.truth["driver"]["init_ret"].as_u64(),
            Some(0),
            "{scenario}: a GPU"
        );
        assert!(
            r.header
                .libraries
                .iter()
                .any(|l| l.path.contains("libcuda.so.580")),
            "{scenario}: recorded on driver 580"
        );
        if scenario == "graphs" {
            driver_graph_pool(&mut r);
        }
        common::truth::check_against_truth(&r);
    }
    assert_eq!(
        seen,
        [
            "contexts",
            "copies",
            "ctx-cycles",
            "graphs",
            "host",
            "host-pools",
            "leak",
            "mixed",
            "partly-filled",
            "pool-release",
            "pools",
            "vmm",
        ],
    );
}

/// The `graphs` workload's book counts graph memory by the byte; the real driver reserves it in
/// 32 MiB chunks, and says so when asked (`cuDeviceGetGraphMemAttribute`), which the workload
/// does and the Ledger takes as the truth. So what the pool holds at exit is the driver's last
/// `RESERVED_MEM_CURRENT` less the book's, not the book's alone.
fn driver_graph_pool(r: &mut common::Recorded) {
    const RESERVED_MEM_CURRENT: u64 = 2;
    let last = r.truth["graphs"]["readings"]
        .as_array()
        .expect("the driver's readings")
        .iter()
        .rev()
        .find(|x| x["attr"].as_u64() == Some(RESERVED_MEM_CURRENT))
        .expect("a reading of the reserved bytes")
        .clone();
    let (driver, book) = (
        last["driver"].as_u64().expect("driver"),
        last["expected"].as_u64().expect("book"),
    );
    assert_eq!(
        (driver, book),
        (32 << 20, 8 << 20),
        "a 32 MiB chunk for 8 MiB"
    );
    let held = r.truth["pool_held_bytes_at_exit"].as_u64().expect("held");
    r.truth["pool_held_bytes_at_exit"] = serde_json::json!(held - book + driver);
}
