//! eBPF integration tests on NVIDIA's own driver library, every generation Debian ships
//! (535 installed; 550 and 555 unpacked beside it by scripts/setup.sh: `common::nvidia`).
//! Without a GPU, cuInit returns 100 and every call fails, but the probes attach to NVIDIA's
//! binary and fire: each call must be traced with its size and its return code, and decoded
//! by the signature of the variant that `cuGetProcAddress_v2` returned for the CUDA version a
//! runtime asks for.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::nvidia::{Generation, generations};
use common::record;
use vramtrace::{
    api::{APIS, is_variant},
    probe::libcuda::exported_functions,
    trace::{Call, Record},
};

/// The CUDA versions runtimes ask `cuGetProcAddress_v2` for: 12.0, 12.5 (where `cuCtxCreate`
/// becomes `cuCtxCreate_v4`) and 13.0.
const CUDA_VERSIONS: [i32; 3] = [12000, 12050, 13000];

fn generation(name: &str) -> Generation {
    generations()
        .into_iter()
        .find(|g| g.name == name)
        .expect("a generation common::nvidia lists")
}

#[test]
fn driver_535_traces_every_call_at_every_cuda_version() {
    every_call_at_every_cuda_version(&generation("535"));
}

#[test]
fn driver_550_traces_every_call_at_every_cuda_version() {
    every_call_at_every_cuda_version(&generation("550"));
}

#[test]
fn driver_555_traces_every_call_at_every_cuda_version() {
    every_call_at_every_cuda_version(&generation("555"));
}

fn every_call_at_every_cuda_version(g: &Generation) {
    // What this library exports decides what must be hooked: every variant of every base.
    let exports = exported_functions(&g.path)
        .unwrap_or_else(|e| panic!("{}: reading its exports: {e}", g.label()));
    let variants: BTreeSet<String> = exports
        .iter()
        .filter(|f| APIS.iter().any(|d| is_variant(&f.name, d.base)))
        .map(|f| f.name.clone())
        .collect();
    let has_v4 = variants.contains("cuCtxCreate_v4");
    for version in CUDA_VERSIONS {
        let r = record(
            &g.path,
            "probe-all",
            &["--cuda-version", &version.to_string()],
        );
        let what = format!("{} at cudaVersion {version}", g.label());
        let hooked = every_call_is_traced(&r, &what);
        assert_eq!(hooked, variants, "{what}: every exported variant is hooked");

        // The pointer a runtime of this version gets for cuCtxCreate, and every variant
        // called, read by its own signature: the flags and device the workload passed.
        let want = if has_v4 && version >= 12050 {
            "cuCtxCreate_v4"
        } else {
            "cuCtxCreate_v3"
        };
        assert_eq!(
            r.truth["cuda_version"]["cuCtxCreate"].as_str(),
            Some(want),
            "{what}: cuGetProcAddress_v2(\"cuCtxCreate\")"
        );
        let asked = &r.truth["ctx_create"];
        let apis: Vec<&str> = asked["apis"]
            .as_array()
            .expect("ctx_create.apis")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(apis.contains(&"cuCtxCreate_v4"), has_v4, "{what}: {apis:?}");
        let pid = r.truth["pid"].as_u64().expect("pid") as u32;
        for api in apis {
            let calls: Vec<&Call> = r
                .records
                .iter()
                .filter_map(Record::call)
                .filter(|c| c.pid == pid && &*c.api == api)
                .collect();
            assert_eq!(calls.len(), 1, "{what}: {api} traced once");
            assert_eq!(
                (calls[0].device.map(i64::from), calls[0].flags),
                (asked["device"].as_i64(), asked["flags"].as_u64()),
                "{what}: {api} decoded by its own signature"
            );
        }
        println!(
            "{}: cudaVersion {version}: {} probes, {} exported variants, cuCtxCreate -> {want}, \
             {} calls traced",
            g.label(),
            hooked.len(),
            variants.len(),
            r.records
                .iter()
                .filter_map(Record::call)
                .filter(|c| c.pid == pid)
                .count()
        );
    }
}

/// Every hooked call that `probe-all` made is traced, with its return code; a failed
/// allocation is a failure with its size, never an allocation. Returns the hooked symbols.
fn every_call_is_traced(r: &common::Recorded, what: &str) -> BTreeSet<String> {
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    let rets: BTreeMap<String, i64> = r.truth["rets"]
        .as_object()
        .expect("rets")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(i64::MIN)))
        .collect();
    assert!(
        rets.len() >= 30,
        "{what}: probe-all calls the whole surface: {rets:?}"
    );
    // Per-thread-default-stream variants come back from cuGetProcAddress and are traced
    // under their own names.
    assert!(
        rets.contains_key("cuMemAllocAsync_ptsz"),
        "{what}: {rets:?}"
    );
    assert!(
        rets.contains_key("cuMemcpyHtoD_v2_ptds"),
        "{what}: {rets:?}"
    );
    // Everything was resolved through the driver, none by dlsym.
    let via: BTreeSet<&str> = r.truth["resolved_via"]
        .as_object()
        .expect("resolved_via")
        .values()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        via,
        BTreeSet::from(["cuGetProcAddress_v2"]),
        "{what}: {}",
        r.truth["resolved_via"]
    );

    // The header lists every hooked symbol; probe-all also calls unhooked ones (cuInit).
    let hooked = common::truth::hooked(&r.header);
    let mut traced: BTreeMap<String, Vec<&Call>> = BTreeMap::new();
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
        "{what}: probe-all calls every hooked symbol"
    );
    for (api, &ret) in called_and_hooked {
        let calls = traced.get(api).unwrap_or_else(|| {
            panic!(
                "{what}: {api} was called but not traced; traced: {:?}",
                traced.keys()
            )
        });
        let made = r.truth["calls"][api.as_str()].as_u64().expect("call count");
        assert_eq!(calls.len() as u64, made, "{what}: {api}: every call traced");
        assert_eq!(
            i64::from(calls[calls.len() - 1].ret),
            ret,
            "{what}: {api} return code"
        );
    }
    for rec in &r.records {
        if let Record::Failed(c) = rec
            && c.pid == pid
            && (c.api.starts_with("cuMemAlloc") || c.api.starts_with("cuMemCreate"))
            && !c.api.starts_with("cuMemAllocPitch")
        {
            assert!(
                c.bytes.is_some_and(|b| b > 0),
                "{what}: {} has its requested size",
                c.api
            );
        }
    }
    assert!(
        !r.records
            .iter()
            .any(|rec| matches!(rec, Record::Alloc(c) if c.pid == pid)),
        "{what}: no allocation succeeds without a GPU"
    );
    hooked
}
