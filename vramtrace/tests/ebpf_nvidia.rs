//! eBPF integration tests on NVIDIA's own driver library (Debian's libcuda1, driver 535).
//! Without a GPU, cuInit returns 100 and every call fails, but the probes attach to NVIDIA's
//! binary and fire: each call must be traced with its size and its return code.

mod common;

use std::{collections::BTreeMap, path::Path};

use common::{NVIDIA_LIBCUDA, record};
use vramtrace::trace::Record;

#[test]
fn every_call_through_get_proc_address_is_traced() {
    assert!(
        Path::new(NVIDIA_LIBCUDA).exists(),
        "{NVIDIA_LIBCUDA} is missing: install Debian's libcuda1 (non-free); scripts/setup.sh does"
    );
    let r = record(Path::new(NVIDIA_LIBCUDA), "probe-all", &[]);
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    let rets: BTreeMap<String, i64> = r.truth["rets"]
        .as_object()
        .expect("rets")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(i64::MIN)))
        .collect();
    assert!(
        rets.len() >= 30,
        "probe-all calls the whole surface: {rets:?}"
    );
    // Per-thread-default-stream variants come back from cuGetProcAddress and are traced
    // under their own names.
    assert!(rets.contains_key("cuMemAllocAsync_ptsz"), "{rets:?}");
    assert!(rets.contains_key("cuMemcpyHtoD_v2_ptds"), "{rets:?}");

    // The header lists every hooked symbol; probe-all also calls unhooked ones (cuInit).
    let hooked: std::collections::BTreeSet<String> = r
        .header
        .libraries
        .iter()
        .flat_map(|l| l.probes.iter().map(|p| p.symbol.clone()))
        .collect();
    assert!(hooked.len() >= 50, "{hooked:?}");
    let mut traced: BTreeMap<String, Vec<&vramtrace::trace::Call>> = BTreeMap::new();
    for rec in &r.records {
        if let Some(c) = rec.call()
            && c.pid == pid
        {
            traced.entry(c.api.to_string()).or_default().push(c);
        }
    }
    let called_and_hooked: Vec<_> = rets
        .iter()
        .filter(|(api, _)| hooked.contains(*api))
        .collect();
    assert_eq!(
        called_and_hooked.len(),
        hooked.len(),
        "probe-all calls every hooked symbol"
    );
    for (api, &ret) in called_and_hooked {
        let calls = traced.get(api).unwrap_or_else(|| {
            panic!(
                "{api} was called but not traced; traced: {:?}",
                traced.keys()
            )
        });
        let made = r.truth["calls"][api.as_str()].as_u64().expect("call count");
        assert_eq!(calls.len() as u64, made, "{api}: every call traced");
        assert_eq!(
            i64::from(calls[calls.len() - 1].ret),
            ret,
            "{api} return code"
        );
    }
    // A failed allocation is a failure with its requested size, never an allocation.
    for rec in &r.records {
        if let Record::Failed(c) = rec
            && c.pid == pid
            && (c.api.starts_with("cuMemAlloc") || c.api.starts_with("cuMemCreate"))
            && !c.api.starts_with("cuMemAllocPitch")
        {
            assert!(
                c.bytes.is_some_and(|b| b > 0),
                "{} has its requested size",
                c.api
            );
        }
    }
    assert!(
        !r.records
            .iter()
            .any(|rec| matches!(rec, Record::Alloc(c) if c.pid == pid))
    );
}
