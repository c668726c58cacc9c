//! eBPF integration tests of the postmortem on the simulated driver: a workload that leaks
//! from one call site is recorded and analyzed, and an out-of-memory run is explained and
//! exported to every format.

mod common;

use std::{path::Path, process::Command};

use common::{Recorded, record, record_with, sim};
use serde_json::Value;
use vramtrace::trace::Record;

/// Runs vramtrace with `args`; returns its stdout, asserting it succeeded.
fn vramtrace(args: &[&str], trace: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .args(args)
        .arg(trace)
        .output()
        .expect("running vramtrace");
    assert!(
        out.status.success(),
        "vramtrace {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The workload's own pid's entries of a postmortem list.
fn of_pid<'a>(r: &Recorded, list: &'a Value) -> Vec<&'a Value> {
    let pid = r.truth["pid"].as_u64().expect("truth has pid");
    list.as_array()
        .expect("a list")
        .iter()
        .filter(|v| v["pid"].as_u64() == Some(pid))
        .collect()
}

fn frames(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn one_leaking_call_site_is_the_only_suspect() {
    let (lib, _) = sim();
    // Held at its first driver call, so that its call sites have names however late the
    // reader comes (the workload lives some 40 ms).
    let r = record_with(lib, &["--hold-new"], "leak", &[]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    let leak = &r.truth["leak"];
    let function = leak["function"].as_str().expect("leak function");
    let per_step = leak["bytes_per_step"].as_u64().expect("bytes_per_step");
    let steps = leak["steps"].as_u64().expect("steps");
    assert!(steps > 3, "the workload leaked: {}", r.truth);

    let leaks = &r.analysis["postmortem"]["leaks"];
    let suspects = of_pid(&r, &leaks["suspects"]);
    assert_eq!(
        suspects.len(),
        1,
        "exactly one leak suspect: {:#}",
        leaks["suspects"]
    );
    let s = suspects[0];
    assert!(
        frames(&s["stack"]).iter().any(|f| f.contains(function)),
        "the suspect's stack names {function}: {:#}",
        s["stack"]
    );
    assert_eq!(
        s["live_bytes"].as_u64(),
        Some(per_step * steps),
        "what the leaking site holds at exit: {s:#}"
    );
    let thirds: Vec<u64> = s["live_at_thirds"]
        .as_array()
        .expect("live_at_thirds")
        .iter()
        .map(|v| v.as_u64().expect("bytes"))
        .collect();
    let growth = thirds[3] - thirds[0];
    assert!(
        growth.abs_diff(per_step * steps) <= per_step,
        "growth {growth} is {per_step} x {steps} within one step: {s:#}"
    );

    // Held by design: the default pool and the caching segment are retention or nothing.
    let retention = of_pid(&r, &leaks["retention"]);
    let pool_held = r.truth["pool_held_bytes_at_exit"].as_u64().expect("pool");
    assert!(pool_held > 0, "the pool retains memory: {}", r.truth);
    assert!(
        retention
            .iter()
            .any(|k| k["kind"] == "pool" && k["bytes"].as_u64() == Some(pool_held)),
        "the pool's {pool_held} bytes are retention: {:#}",
        leaks["retention"]
    );
    for k in &retention {
        assert!(
            k["stack"].is_null() || !frames(&k["stack"]).iter().any(|f| f.contains(function)),
            "the leak is not retention: {k:#}"
        );
    }
}

#[test]
fn oom_is_explained_and_exported() {
    let (lib, _) = sim();
    let r = record(lib, "oom", &[]);
    assert_eq!(r.status, 1);
    let requested = r.truth["oom"]["request_bytes"]
        .as_u64()
        .expect("the workload failed a request");

    let ooms = of_pid(&r, &r.analysis["postmortem"]["ooms"]);
    assert!(
        !ooms.is_empty(),
        "an OOM explanation: {:#}",
        r.analysis["postmortem"]
    );
    let e = ooms[0];
    assert_eq!(e["request_bytes"].as_u64(), Some(requested), "{e:#}");
    let top = e["top_stacks"].as_array().expect("top_stacks");
    assert!(!top.is_empty(), "top stacks: {e:#}");
    // Symbolized: a frame names a function of the workload.
    assert!(
        top.iter().any(|h| frames(&h["stack"])
            .iter()
            .any(|f| f.contains("load_weights") || f.contains("scenarios::oom"))),
        "a top stack names a workload function: {:#}",
        e["top_stacks"]
    );
    let verdict = e["verdict"].as_str().expect("verdict");
    assert!(!verdict.is_empty());
    let text = vramtrace(&["analyze"], &r.trace);
    // The text wraps nothing: the verdict's first words appear as they are.
    let head: String = verdict.chars().take(40).collect();
    assert!(
        text.contains(&head),
        "the text report has the verdict {verdict:?}:\n{text}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let export = |format: &str| -> Vec<u8> {
        let out = dir.path().join(format);
        let out_s = out.to_str().expect("utf-8 path");
        vramtrace(&["export", "--format", format, "--output", out_s], &r.trace);
        std::fs::read(&out).expect("export written")
    };

    let perfetto: Value = serde_json::from_slice(&export("perfetto")).expect("perfetto is JSON");
    let events = perfetto["traceEvents"].as_array().expect("traceEvents");
    assert!(!events.is_empty());
    for ev in events {
        for key in ["ph", "pid"] {
            assert!(ev.get(key).is_some(), "{key} in {ev}");
        }
        // Metadata events (process and thread names) have no time in the format.
        if ev["ph"] != "M" {
            assert!(ev["ts"].is_number(), "ts in {ev}");
        }
    }
    assert!(events.iter().any(|ev| ev["ph"] == "C"), "counter events");
    assert!(events.iter().any(|ev| ev["ph"] == "i"), "an OOM instant");

    let folded = String::from_utf8(export("folded")).expect("folded is text");
    assert!(!folded.trim().is_empty());
    for line in folded.lines() {
        let (stack, bytes) = line.rsplit_once(' ').expect("`stack bytes`");
        assert!(!stack.is_empty(), "{line}");
        assert!(
            bytes.parse::<u64>().is_ok_and(|b| b > 0),
            "positive bytes: {line}"
        );
    }

    let svg = String::from_utf8(export("flamegraph")).expect("svg is text");
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.contains("<svg"));

    let pickle = export("memory-viz");
    assert_eq!(pickle.first(), Some(&0x80), "a pickle");
    // Read as PyTorch's memory viewer reads it: only the opcodes its unpickler knows, and
    // every block in a segment at every step (scripts/setup.sh installs python3).
    let check = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/memviz_check.py"
        ))
        .arg(dir.path().join("memory-viz"))
        .output()
        .expect("python3 runs");
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(
        !said.contains(" 0 ooms"),
        "the OOM is in the snapshot: {said}"
    );
}

/// The workload's own report in the analysis.
fn process_of<'a>(r: &Recorded, analysis: &'a Value) -> &'a Value {
    let pid = r.truth["pid"].as_u64().expect("truth has pid");
    analysis["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("process {pid} in the analysis: {:#}", analysis["processes"]))
}

#[test]
fn memory_of_destroyed_contexts_is_no_leak() {
    let (lib, _) = sim();
    // The workload lives a few tens of milliseconds: held at its first driver call until its
    // mappings are read, its call sites have names however far behind a loaded machine
    // leaves the reader (without, a reader that comes after the exit finds no mappings).
    let r = record_with(lib, &["--hold-new"], "ctx-cycles", &[]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    let cycles = &r.truth["ctx_cycles"];
    let function = cycles["function"].as_str().expect("function");
    let per_cycle = cycles["bytes_per_cycle"].as_u64().expect("bytes_per_cycle");
    assert_eq!(cycles["cycles"].as_u64(), Some(12), "{}", r.truth);

    // The site is named when its memory is live: at a moment inside the first cycle, between
    // its allocation and the next call (the cuCtxDestroy that frees it), the folded export
    // holds its bytes under its name. So the checks below that it is absent can fail.
    let at = r
        .records
        .iter()
        .filter_map(Record::call)
        .filter(|c| u64::from(c.pid) == r.truth["pid"].as_u64().expect("pid"))
        .collect::<Vec<_>>();
    let i = at
        .iter()
        .position(|c| c.api.as_ref() == "cuMemAlloc_v2" && c.bytes == Some(per_cycle))
        .expect("a per-context allocation in the trace");
    let next = at.get(i + 1).expect("a call after it");
    let mid_ns = (at[i].ts_ns + next.ts_ns) / 2 - r.header.start_monotonic_ns;
    let secs = format!("{}", mid_ns as f64 / 1e9);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("folded");
    let out_s = out.to_str().expect("utf-8 path");
    vramtrace(
        &[
            "export", "--format", "folded", "--at", &secs, "--output", out_s,
        ],
        &r.trace,
    );
    let folded = std::fs::read_to_string(&out).expect("folded written");
    assert!(
        folded.lines().any(|l| l.contains(function)
            && l.rsplit_once(' ').and_then(|(_, b)| b.parse::<u64>().ok()) == Some(per_cycle)),
        "{per_cycle} bytes under {function} at +{secs} s:\n{folded}"
    );

    // At the end: no suspect is that site, and the process holds none of its memory.
    let leaks = &r.analysis["postmortem"]["leaks"];
    for s in of_pid(&r, &leaks["suspects"]) {
        assert!(
            !frames(&s["stack"]).iter().any(|f| f.contains(function)),
            "memory freed by cuCtxDestroy is a leak suspect: {s:#}"
        );
    }
    let p = process_of(&r, &r.analysis);
    let kept = r.truth["kept_allocations"].as_u64().expect("kept");
    assert_eq!(
        p["device_bytes_at_exit"].as_u64(),
        r.truth["device_bytes_at_exit"].as_u64(),
        "only the weights are held at exit: {p:#}"
    );
    assert_eq!(p["live_allocations_at_exit"].as_u64(), Some(kept), "{p:#}");
    let held = p["largest_at_exit"].as_array().expect("largest_at_exit");
    assert!(
        held.iter().all(|a| a["bytes"].as_u64() != Some(per_cycle)),
        "no per-context buffer is held at exit: {held:#?}"
    );
}

/// The simulated driver with two GPUs of 2 GiB: 3 GiB fails on either.
const TWO_GPUS: [(&str, &str); 2] = [("SIMCUDA_DEVICES", "2"), ("SIMCUDA_CAPACITY", "2G")];

/// Records `second-gpu-oom` with `env` besides [`TWO_GPUS`], without NVML so that the
/// header lists no GPUs whatever the machine has: an ordinal maps to an NVML index through
/// `CUDA_VISIBLE_DEVICES` alone.
fn second_gpu_oom(env: &[(&str, &str)]) -> Recorded {
    let (lib, _) = sim();
    let env: Vec<(&str, &str)> = TWO_GPUS.iter().chain(env).copied().collect();
    let r = common::record_env(lib, &["--no-nvml"], &env, "second-gpu-oom", &[]);
    assert_eq!(r.status, 1, "{}", r.stderr);
    let oom = &r.truth["oom"];
    assert_eq!(
        (oom["device"].as_u64(), oom["ret"].as_u64()),
        (Some(1), Some(2)),
        "the workload failed on device 1: {}",
        r.truth
    );
    r
}

/// The one OOM explanation of the workload, checked for what holds whatever the mapping:
/// device 1, the request, nothing held there, and the Ledger's own record of it.
fn oom_on_second_gpu(r: &Recorded) -> &Value {
    let requested = r.truth["oom"]["request_bytes"].as_u64().expect("request");
    let ooms = of_pid(r, &r.analysis["postmortem"]["ooms"]);
    assert_eq!(
        ooms.len(),
        1,
        "one OOM: {:#}",
        r.analysis["postmortem"]["ooms"]
    );
    let e = ooms[0];
    assert_eq!(e["device"].as_i64(), Some(1), "{e:#}");
    assert_eq!(e["request_bytes"].as_u64(), Some(requested), "{e:#}");
    assert_eq!(
        e["held_device_bytes"].as_u64(),
        Some(0),
        "nothing held on device 1: {e:#}"
    );
    let verdict = e["verdict"].as_str().expect("verdict");
    assert!(
        verdict.contains("this process held 0 B on the device"),
        "{verdict}"
    );
    let p = process_of(r, &r.analysis);
    let ooms = p["ooms"].as_array().expect("the process's ooms");
    assert_eq!(ooms.len(), 1, "{p:#}");
    assert_eq!(ooms[0]["device"].as_i64(), Some(1), "{:#}", ooms[0]);
    assert_eq!(ooms[0]["device_bytes"].as_u64(), Some(0), "{:#}", ooms[0]);
    // What it held was on device 0, and still is at exit.
    let held = r.truth["held_on_device0"].as_u64().expect("held");
    assert_eq!(p["device_bytes_at_exit"].as_u64(), Some(held), "{p:#}");
    e
}

#[test]
fn oom_on_the_second_gpu_is_on_device_1() {
    let r = second_gpu_oom(&[]);
    let e = oom_on_second_gpu(&r);
    // No CUDA_VISIBLE_DEVICES and no NVML list: the ordinal is the NVML index.
    assert_eq!(e["nvml_index"].as_u64(), Some(1), "{e:#}");
}

#[test]
fn cuda_visible_devices_maps_the_oom_to_its_nvml_index() {
    // The simulated driver ignores CUDA_VISIBLE_DEVICES (its ordinal 1 is its second device
    // either way); what is tested is the tracer's reading of it and the Ledger's mapping.
    let r = second_gpu_oom(&[("CUDA_VISIBLE_DEVICES", "1,0")]);
    assert_eq!(
        r.truth["cuda_visible_devices"].as_str(),
        Some("1,0"),
        "{}",
        r.truth
    );
    let pid = r.truth["pid"].as_u64().expect("pid");
    let process = r
        .records
        .iter()
        .find_map(|rec| match rec {
            Record::Process(p) if u64::from(p.pid) == pid => Some(p),
            _ => None,
        })
        .expect("the workload's process record");
    assert_eq!(
        process.cuda_visible_devices.as_deref(),
        Some("1,0"),
        "{process:?}"
    );
    let e = oom_on_second_gpu(&r);
    // Ordinal 1 is the second entry of "1,0": NVML index 0.
    assert_eq!(e["nvml_index"].as_u64(), Some(0), "{e:#}");
}
