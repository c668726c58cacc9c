//! eBPF integration tests of the postmortem on the simulated driver: a workload that leaks
//! from one call site is recorded and analyzed, and an out-of-memory run is explained and
//! exported to every format.

mod common;

use std::{path::Path, process::Command};

use common::{Recorded, record, sim};
use serde_json::Value;

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
    let r = record(lib, "leak", &[]);
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
