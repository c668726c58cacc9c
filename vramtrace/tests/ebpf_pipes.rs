//! A reader that goes away: `analyze` and `export` end quietly when their output pipe is
//! closed (as under `| head`), and `record` keeps recording, and finishes its trace, when
//! the reader of its stderr is gone. Also `record --` with no command after it, which is
//! refused before anything is written.

mod common;

use std::{
    io::Read as _,
    process::{Command, Stdio},
};

use common::{record, require_root, sim};
use vramtrace::trace::read::TraceReader;

fn vramtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vramtrace"))
}

/// Runs `cmd` with its stdout (or stderr) a pipe whose reading end is closed before the
/// command writes to it; returns the exit status and the other stream.
fn run_with_closed(mut cmd: Command, close_stdout: bool) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting vramtrace");
    let mut other = if close_stdout {
        drop(child.stdout.take());
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read>
    } else {
        drop(child.stderr.take());
        Box::new(child.stdout.take().unwrap())
    };
    let mut text = String::new();
    other.read_to_string(&mut text).unwrap();
    (child.wait().unwrap(), text)
}

#[test]
fn analyze_ends_quietly_when_its_reader_goes_away() {
    let (lib, _) = sim();
    let recorded = record(lib, "llm-server", &["--threads", "2"]);
    for json in [true, false] {
        let mut cmd = vramtrace();
        cmd.arg("analyze").arg(&recorded.trace);
        if json {
            cmd.arg("--json");
        }
        let (status, stderr) = run_with_closed(cmd, true);
        assert!(!stderr.contains("panicked"), "json {json}: {stderr}");
        assert_eq!(status.code(), Some(0), "json {json}: {stderr}");
    }
}

#[test]
fn export_ends_quietly_when_its_stderr_reader_goes_away() {
    let (lib, _) = sim();
    let recorded = record(lib, "host", &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace.perfetto.json");
    let mut cmd = vramtrace();
    cmd.args(["export", "-f", "perfetto", "-o"])
        .arg(&out)
        .arg(&recorded.trace);
    let (status, stdout) = run_with_closed(cmd, false);
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert!(std::fs::metadata(&out).is_ok_and(|m| m.len() > 0));
}

#[test]
fn record_keeps_recording_when_its_stderr_reader_goes_away() {
    require_root();
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let mut cmd = vramtrace();
    // -v: the probes are listed on stderr, then every finding of the host workload. The
    // workload's own stderr goes elsewhere: only vramtrace's writes meet the closed pipe.
    cmd.args(["-v", "record", "-o"])
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .args(["--", "sh", "-c"])
        .arg(format!(
            "exec {} --lib {} host 2>/dev/null",
            workload.display(),
            lib.display()
        ));
    let (status, stdout) = run_with_closed(cmd, false);
    assert_eq!(status.code(), Some(0), "the workload's status: {stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with('{')),
        "the workload ran and reported: {stdout}"
    );
    let mut reader = TraceReader::open(&trace).expect("trace opens");
    let calls = reader.by_ref().filter(|r| r.call().is_some()).count();
    let summary = reader.summary();
    assert!(summary.complete, "{:?}", summary.problems);
    assert!(summary.footer.is_some(), "the footer is written");
    assert!(calls > 0, "the workload's calls were recorded");
}

#[test]
fn record_with_an_empty_command_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let out = vramtrace()
        .args(["record", "-o"])
        .arg(&trace)
        .args(["--duration", "1", "--"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("command"), "{stderr}");
    assert!(!trace.exists(), "no trace is left behind");
}
