//! `probe-all` recorded on an H100 with NVIDIA's driver 580.159.04 (CUDA 13.0), where the
//! calls succeed: every entry point resolved through `cuGetProcAddress_v2` at `cudaVersion`
//! 12000, 12050 and 13000 (tests/data/gpu/probe-all-580/VERSION.jsonl.gz, with the workload's
//! ground truth in VERSION.truth.json). Replayed to hold what was traced there: every hooked
//! call, `cuCtxCreate` resolving to `_v3` at 12000 and `_v4` from 12050, and each context
//! variant's flags (4) and device (0) read by its own signature.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_json::Value;
use vramtrace::trace::{Record, read::TraceReader};

fn fixture(version: u32) -> (PathBuf, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpu/probe-all-580");
    let truth = std::fs::read(dir.join(format!("{version}.truth.json"))).expect("truth");
    (
        dir.join(format!("{version}.jsonl.gz")),
        serde_json::from_slice(&truth).expect("truth is JSON"),
    )
}

#[test]
fn driver_580_traced_every_call_at_every_cuda_version() {
    for (version, ctx_create) in [
        (12000, "cuCtxCreate_v3"),
        (12050, "cuCtxCreate_v4"),
        (13000, "cuCtxCreate_v4"),
    ] {
        let (path, truth) = fixture(version);
        let mut reader = TraceReader::open(&path).expect("fixture opens");
        let records: Vec<Record> = reader.by_ref().collect();
        let summary = reader.summary();
        assert!(summary.complete, "{version}: {:?}", summary.problems);
        assert_eq!(summary.digest_ok, Some(true), "{version}");
        assert_eq!(truth["driver"]["init_ret"].as_u64(), Some(0), "a GPU");
        assert_eq!(
            truth["cuda_version"]["cuCtxCreate"].as_str(),
            Some(ctx_create),
            "{version}"
        );

        let hooked: BTreeSet<&str> = summary
            .header
            .libraries
            .iter()
            .flat_map(|l| l.probes.iter().map(|p| p.symbol.as_str()))
            .collect();
        assert_eq!(hooked.len(), 57, "{version}: {hooked:?}");
        assert!(hooked.contains("cuCtxCreate_v4"), "{version}");
        let pid = truth["pid"].as_u64().expect("pid") as u32;
        let mut traced: BTreeMap<&str, u64> = BTreeMap::new();
        for c in records.iter().filter_map(Record::call) {
            if c.pid == pid {
                *traced.entry(&c.api).or_default() += 1;
            }
        }
        let made: BTreeMap<&str, u64> = truth["calls"]
            .as_object()
            .expect("calls")
            .iter()
            .filter(|(api, _)| hooked.contains(api.as_str()))
            .map(|(api, n)| (api.as_str(), n.as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(
            made.len(),
            hooked.len(),
            "{version}: every hooked symbol called"
        );
        assert_eq!(traced, made, "{version}: every call traced");

        let asked = &truth["ctx_create"];
        for c in records.iter().filter_map(|r| match r {
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
        let v4 = records.iter().any(|r| {
            matches!(r, Record::CtxCreate(c) if c.pid == pid && &*c.api == "cuCtxCreate_v4" && c.ret == 0)
        });
        assert!(v4, "{version}: cuCtxCreate_v4 succeeded and was traced");
    }
}
