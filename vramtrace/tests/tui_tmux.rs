//! `vramtrace top` in a real terminal: tmux runs it, keys are sent with `send-keys`, and the
//! screen is read back with `capture-pane`. Needs tmux; the live view also needs root, as
//! every eBPF test does.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use vramtrace::{
    trace::{Record, read::TraceReader},
    tui::synth,
};

/// A tmux server of our own, killed on drop even when the test fails.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is needed for this test: apt-get install tmux")
    }

    fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success(), "send-keys {keys:?}");
    }

    /// Waits until the screen shows `what`; the last screen in the panic message otherwise.
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what:?}; it shows:\n{s}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn start(name: &str, trace: &Path) -> Tmux {
    start_with(name, &format!("--replay '{}'", trace.display()))
}

/// Runs `vramtrace top ARGS` in a tmux session of its own.
fn start_with(name: &str, args: &str) -> Tmux {
    let tmux = Tmux {
        socket: format!("vramtrace-test-{}-{name}", std::process::id()),
    };
    let command = format!(
        "'{}' top {args}; echo \"EXITED $?\"; sleep 60",
        env!("CARGO_BIN_EXE_vramtrace"),
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    assert!(
        out.status.success(),
        "tmux new-session failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tmux
}

#[test]
fn replay_select_open_the_stack_and_quit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.jsonl");
    synth::write_trace(&trace, &synth::scenario(30)).expect("writing the trace");
    let tmux = start("replay", &trace);

    let s = tmux.wait_for("server");
    assert!(s.contains("vramtrace top │ replay trace.jsonl"), "{s}");
    assert!(s.contains("trainer"), "{s}");
    tmux.wait_for("Allocations: pid 1001 trainer");

    // The second process: its allocations follow the selection.
    tmux.keys(&["Down"]);
    tmux.wait_for("Allocations: pid 1002 server");

    // Into the allocations, largest first (the 2 GiB buffer, above the newer pinned host
    // buffer), then the stack of the first one.
    tmux.keys(&["Enter"]);
    tmux.keys(&["s"]);
    tmux.wait_for("largest first");
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("Stack (Esc closes)");
    tmux.wait_for("ggml_backend_cuda_buffer_alloc");
    assert!(s.contains("llama_load_model") || tmux.screen().contains("llama_load_model"));

    tmux.keys(&["q"]);
    let s = tmux.wait_for("EXITED 0");
    // The alternate screen is gone: the shell's own output is what remains.
    assert!(
        !s.contains("vramtrace top │"),
        "the view is still drawn:\n{s}"
    );
}

#[test]
fn a_missing_trace_is_an_error_with_a_restored_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmux = start("missing", &dir.path().join("missing.jsonl"));
    let s = tmux.wait_for("EXITED 2");
    assert!(s.contains("vramtrace: error: reading"), "{s}");
    assert!(!s.contains("vramtrace top │"), "{s}");
}

/// The live view over the simulated driver: it shows the workload as it runs, and the trace
/// it writes on the side is sealed on quit with its stacks symbolized.
#[test]
fn live_view_shows_a_workload_and_writes_a_symbolized_trace() {
    common::require_root();
    let (lib, workload) = common::sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("live.jsonl");
    let tmux = start_with(
        "live",
        &format!("--libcuda '{}' -o '{}'", lib.display(), trace.display()),
    );
    tmux.wait_for("live: every process");
    // The header is written once the probes are attached.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&trace).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "the probes never attached");
        thread::sleep(Duration::from_millis(50));
    }
    let out = std::process::Command::new(workload)
        .arg("--lib")
        .arg(lib)
        .arg("mixed")
        // Alive a second past its calls: named while it runs, however late the view reads.
        .args(["--hold", "1"])
        .output()
        .expect("running the workload");
    assert!(out.status.success(), "{out:?}");
    tmux.wait_for("vramtrace-workl");

    tmux.keys(&["q"]);
    tmux.wait_for("EXITED 0");
    let mut reader = TraceReader::open(&trace).expect("the trace opens");
    let records: Vec<Record> = reader.by_ref().collect();
    let summary = reader.summary();
    assert!(summary.complete, "{:?}", summary.problems);
    assert_eq!(summary.digest_ok, Some(true));
    let named = records.iter().any(|r| match r {
        Record::Stack(s) => s
            .frames
            .iter()
            .any(|f| f.sym.as_deref().is_some_and(|n| n.contains("scenarios::"))),
        _ => false,
    });
    assert!(named, "a stack names the workload's own functions");
}
