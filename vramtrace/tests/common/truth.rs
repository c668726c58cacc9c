//! Compares a recording with the ground truth its workload wrote: every hooked call, its
//! result and bytes, and what the process held at exit and at its peak.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use vramtrace::trace::Record;

use super::Recorded;

pub fn as_map(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// The symbols the recording hooked, as its header lists them.
pub fn hooked(header: &vramtrace::trace::Header) -> BTreeSet<String> {
    header
        .libraries
        .iter()
        .flat_map(|l| l.probes.iter().map(|p| p.symbol.clone()))
        .collect()
}

/// Every count and byte the workload reports must be what the trace says.
pub fn check_against_truth(r: &Recorded) {
    let pid = check_calls_against_truth(r);
    check_exit_against_truth(r, pid);
}

/// Every hooked call the workload made is traced once, with its result and its bytes.
/// Returns the workload's PID.
pub fn check_calls_against_truth(r: &Recorded) -> u32 {
    check_calls(r, &r.truth)
}

/// Like [`check_calls_against_truth`], against the ground truth `truth` of one of the
/// recorded processes (a workload's child reports its own).
pub fn check_calls(r: &Recorded, truth: &Value) -> u32 {
    let pid = truth["pid"].as_u64().expect("truth has pid") as u32;
    let calls_of = |f: &dyn Fn(&Record) -> bool| {
        let mut m = BTreeMap::<String, u64>::new();
        for rec in &r.records {
            if let Some(c) = rec.call()
                && c.pid == pid
                && f(rec)
            {
                *m.entry(c.api.to_string()).or_default() += 1;
            }
        }
        m
    };
    // The workload also calls functions that are not hooked (cuInit, cuGetProcAddress).
    let hooked = hooked(&r.header);
    let mut truth_calls = as_map(&truth["calls"]);
    truth_calls.retain(|api, _| hooked.contains(api));
    // The workload counts a call when it returns: one that never did is apart.
    let calls = calls_of(&|rec| !matches!(rec, Record::Unreturned(_)));
    assert_eq!(calls, truth_calls, "calls by API");
    let unreturned = calls_of(&|rec| matches!(rec, Record::Unreturned(_)));
    assert_eq!(
        unreturned,
        as_map(&truth["unreturned"]),
        "calls that never returned, by API"
    );
    let failed = calls_of(&|rec| matches!(rec, Record::Failed(_)));
    let mut truth_failed = as_map(&truth["failed"]);
    truth_failed.retain(|api, _| hooked.contains(api));
    assert_eq!(failed, truth_failed, "failed calls by API");

    let mut alloc_bytes = BTreeMap::<String, u64>::new();
    let mut failed_bytes = BTreeMap::<String, u64>::new();
    for rec in &r.records {
        match rec {
            Record::Alloc(c) | Record::VmmCreate(c) if c.pid == pid => {
                *alloc_bytes.entry(c.api.to_string()).or_default() +=
                    c.bytes.expect("alloc has bytes");
            }
            // A failed copy names its bytes too; the workload counts failed requests for memory.
            Record::Failed(c) if c.pid == pid && c.mem.is_some() => {
                if let Some(b) = c.bytes {
                    *failed_bytes.entry(c.api.to_string()).or_default() += b;
                }
            }
            _ => {}
        }
    }
    let truth_alloc: BTreeMap<_, _> = as_map(&truth["alloc_bytes"])
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    alloc_bytes.retain(|_, v| *v > 0);
    assert_eq!(alloc_bytes, truth_alloc, "allocated bytes by API");
    let truth_failed: BTreeMap<_, _> = as_map(&truth["failed_bytes"])
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    failed_bytes.retain(|_, v| *v > 0);
    assert_eq!(failed_bytes, truth_failed, "failed request bytes by API");
    pid
}

/// What the process held at exit, its peak, and that nothing was lost.
pub fn check_exit_against_truth(r: &Recorded, pid: u32) {
    let procs = r.analysis["processes"].as_array().expect("processes");
    let p = procs
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("pid {pid} not in analysis: {}", r.analysis));
    for key in ["device_bytes_at_exit", "host_bytes_at_exit"] {
        assert_eq!(p[key], r.truth[key], "{key}");
    }
    // With several threads, which of two concurrent calls came first differs between the
    // workload's own book and the order of the calls' returns: the peak may differ by at
    // most the allocations in flight, which the workload states.
    let peak = p["peak_device_bytes"].as_u64().expect("peak");
    let truth_peak = r.truth["peak_device_bytes"].as_u64().expect("truth peak");
    let tolerance = r.truth["peak_tolerance_bytes"].as_u64().unwrap_or(0);
    assert!(
        peak.abs_diff(truth_peak) <= tolerance,
        "peak_device_bytes {peak} vs {truth_peak} (tolerance {tolerance})"
    );
    assert_eq!(
        p["pool_held_bytes_at_exit"], r.truth["pool_held_bytes_at_exit"],
        "pool-held bytes"
    );
    assert_eq!(
        r.analysis["lost_events"].as_u64(),
        Some(0),
        "no lost events"
    );
    assert!(
        r.records
            .iter()
            .any(|rec| matches!(rec, Record::Exit(e) if e.pid == pid)),
        "the process exit is traced"
    );
}
