//! `analyze --strict` and `export` against traces that are complete, cut short, altered and
//! appended to: the exit status and the warnings a user sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vramtrace::trace::{
    Call, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Header, Mem, Record, TraceWriter,
};

fn vramtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vramtrace"))
}

/// A finished trace of one allocation that stays live, written by the trace writer.
fn complete_trace(dir: &Path) -> PathBuf {
    let path = dir.join("complete.jsonl");
    let mut w = TraceWriter::create(&path).expect("create");
    let header = Header {
        format: FORMAT_NAME.into(),
        version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        start_monotonic_ns: 5_000_000_000,
        ..Header::default()
    };
    w.write(&Record::Header(Box::new(header))).expect("header");
    w.write(&Record::Alloc(Call {
        api: "cuMemAlloc_v2".into(),
        proc: 1,
        pid: 4242,
        tid: 4242,
        ts_ns: 5_000_001_000,
        bytes: Some(1 << 20),
        addr: Some(0x7f00_0000_0000),
        mem: Some(Mem::Device),
        device: Some(0),
        ..Call::default()
    }))
    .expect("alloc");
    w.finish(5_000_002_000, 0, 0).expect("finish");
    path
}

/// The four verdicts, each as a file: (name, path).
fn traces(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let complete = complete_trace(dir);
    let text = std::fs::read_to_string(&complete).expect("read");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let write = |name: &str, body: String| {
        let path = dir.join(format!("{name}.jsonl"));
        std::fs::write(&path, body).expect("write");
        path
    };
    let cut = write("cut", lines[..lines.len() - 1].concat());
    let altered = write(
        "altered",
        text.replacen("\"bytes\":1048576", "\"bytes\":2048576", 1),
    );
    assert_ne!(std::fs::read_to_string(&altered).expect("read"), text);
    let appended = write("appended", format!("{text}{}", lines[1]));
    vec![
        ("complete", complete),
        ("cut_short", cut),
        ("altered", altered),
        ("appended", appended),
    ]
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("runs vramtrace")
}

#[test]
fn strict_analyze_fails_on_anything_but_a_complete_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (verdict, path) in traces(dir.path()) {
        let out = run(vramtrace().arg("analyze").arg("--strict").arg(&path));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("cuMemAlloc") || stdout.contains("pid"),
            "{verdict}: {stdout}"
        );
        let want = if verdict == "complete" { 0 } else { 3 };
        assert_eq!(out.status.code(), Some(want), "{verdict}: {stdout}");

        let out = run(vramtrace()
            .args(["analyze", "--strict", "--json"])
            .arg(&path));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
        assert_eq!(json["integrity"], verdict);
        assert_eq!(out.status.code(), Some(want), "{verdict} --json");

        // Without --strict the report is all that changes.
        let out = run(vramtrace().arg("analyze").arg(&path));
        assert_eq!(out.status.code(), Some(0), "{verdict} without --strict");
    }
}

#[test]
fn export_warns_unless_the_trace_is_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (verdict, path) in traces(dir.path()) {
        for format in ["perfetto", "memory-viz", "folded", "flamegraph"] {
            let out_file = dir.path().join(format!("{verdict}.{format}"));
            let out = run(vramtrace()
                .args(["export", "-f", format, "-o"])
                .arg(&out_file)
                .arg(&path));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{verdict} {format}: {stderr}");
            let warnings: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("vramtrace: warning: TRACE"))
                .collect();
            let want = match verdict {
                "complete" => None,
                "cut_short" => Some("TRACE CUT SHORT"),
                "altered" => Some("TRACE ALTERED"),
                _ => Some("TRACE APPENDED TO"),
            };
            match want {
                None => assert_eq!(warnings, Vec::<&str>::new(), "{format}"),
                Some(w) => {
                    assert_eq!(warnings.len(), 1, "{verdict} {format}: {stderr}");
                    assert!(warnings[0].contains(w), "{verdict} {format}: {stderr}");
                }
            }
        }
    }
}

/// `path` compressed with gzip, beside it as `NAME.gz`.
fn gzipped(path: &Path) -> PathBuf {
    use std::io::Write as _;
    let gz = path.with_extension("jsonl.gz");
    let mut z = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::default(),
    );
    z.write_all(&std::fs::read(path).expect("read"))
        .expect("compress");
    z.finish().expect("compress");
    gz
}

fn json_report(cmd: &mut Command) -> serde_json::Value {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json report")
}

#[test]
fn analyze_and_export_read_a_gzip_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = complete_trace(dir.path());
    let gz = gzipped(&plain);
    let analyze = |path: &Path| json_report(vramtrace().args(["analyze", "--json"]).arg(path));
    let report = analyze(&gz);
    assert_eq!(report["integrity"], "complete");
    assert_eq!(report, analyze(&plain));
    let out_file = dir.path().join("gz.perfetto");
    let out = run(vramtrace()
        .args(["export", "-f", "perfetto", "-o"])
        .arg(&out_file)
        .arg(&gz));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn analyze_at_a_moment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gz = gzipped(&complete_trace(dir.path()));
    let at = |args: &[&str]| {
        json_report(
            vramtrace()
                .args(["analyze", "--json", "--top", "1000000"])
                .args(args)
                .arg(&gz),
        )
    };
    // The allocation is 1000 ns after the start; the recording ends 2000 ns after it.
    let before = at(&["--at", "0.0000005"]);
    assert_eq!(before["at_ns"], 5_000_000_500u64);
    let live: u64 = before["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["live_allocations_at_exit"].as_u64())
        .sum();
    assert_eq!(live, 0, "{before}");
    let after = at(&["--at-ns", "5000001500"]);
    assert_eq!(after["at_ns"], 5_000_001_500u64);
    assert_eq!(after["integrity"], "complete");
    let p = &after["processes"][0];
    assert_eq!(p["live_allocations_at_exit"], 1);
    assert_eq!(p["device_bytes_at_exit"], 1 << 20);
    assert_eq!(p["largest_at_exit"].as_array().map(Vec::len), Some(1));
    let end = json_report(vramtrace().args(["analyze", "--json"]).arg(&gz));
    assert_eq!(end["at_ns"], serde_json::Value::Null);

    let text = run(vramtrace()
        .args(["analyze", "--at-ns", "5000001500"])
        .arg(&gz));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("state at +0.000 s (ts 5000001500 ns)"),
        "{text}"
    );

    for bad in [
        &["--at", "-1"][..],
        &["--at", "nan"],
        &["--at", "inf"],
        &["--at", "1", "--from", "0"],
        &["--at", "1", "--to", "2"],
        &["--at-ns", "5", "--to", "2"],
        &["--at", "1", "--at-ns", "5"],
    ] {
        let out = run(vramtrace().arg("analyze").args(bad).arg(&gz));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("--at"), "{bad:?}: {stderr}");
    }
}

#[test]
fn analyze_refuses_bad_windows_and_filters_that_match_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = complete_trace(dir.path());
    for (bad, says) in [
        (
            &["--from", "2", "--to", "1"][..],
            "--from must be before --to",
        ),
        (&["--from", "1", "--to", "1"], "--from must be before --to"),
        (&["--from", "-1"], "not a moment"),
        (&["--to", "nan"], "not a moment"),
        (&["--pid", "1"], "pid 1 is not in this trace; it has 4242"),
        (&["--gpu", "3"], "GPU 3 is not in this trace; it has GPU 0"),
    ] {
        let out = run(vramtrace().arg("analyze").args(bad).arg(&trace));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains(says), "{bad:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad:?}: no report");
    }
    let ok = json_report(
        vramtrace()
            .args(["analyze", "--json", "--pid", "4242", "--gpu", "0"])
            .arg(&trace),
    );
    assert_eq!(ok["filters"]["pids"], serde_json::json!([4242]));
    assert_eq!(ok["filters"]["gpu"], 0);
    assert_eq!(ok["processes"].as_array().map(Vec::len), Some(1));
}
