//! Shared by the eBPF integration tests: builds the simulated driver and the workloads, runs
//! `vramtrace record` on them, and reads back the trace and the workload's ground truth.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;
use vramtrace::trace::{Record, read::TraceReader};

pub mod nvidia;
pub mod truth;

/// NVIDIA's driver library from Debian's libcuda1 package (bookworm: 535), installed.
pub const NVIDIA_LIBCUDA: &str = nvidia::INSTALLED_LIBCUDA;

fn target_dir() -> PathBuf {
    // The test binary lives in target/<profile>/deps.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// Builds (once) the simulated driver and the workload binary; returns their paths.
pub fn sim() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = target_dir();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "simcuda", "-p", "workloads"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(
            status.success(),
            "building the simulated driver and workloads failed"
        );
        (dir.join("libsimcuda.so"), dir.join("vramtrace-workload"))
    })
}

/// Says what is missing when eBPF cannot be used, instead of skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF integration tests load BPF programs and need root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH): \
         run ./scripts/test.sh, which runs them under sudo"
    );
}

/// What one recording produced.
pub struct Recorded {
    pub records: Vec<Record>,
    pub header: vramtrace::trace::Header,
    pub truth: Value,
    pub analysis: Value,
    pub status: i32,
    pub trace: PathBuf,
    /// vramtrace's and the workload's stderr.
    pub stderr: String,
    _dir: tempfile::TempDir,
}

/// Records `workload --lib LIB SCENARIO ARGS` under `vramtrace record --libcuda LIB`.
pub fn record(lib: &Path, scenario: &str, args: &[&str]) -> Recorded {
    record_with(lib, &[], scenario, args)
}

/// Like [`record`], with more options for `vramtrace record`.
pub fn record_with(lib: &Path, record_args: &[&str], scenario: &str, args: &[&str]) -> Recorded {
    record_env(lib, record_args, &[], scenario, args)
}

/// Like [`record_with`], with environment variables for the recorder and so the workload.
pub fn record_env(
    lib: &Path,
    record_args: &[&str],
    env: &[(&str, &str)],
    scenario: &str,
    args: &[&str],
) -> Recorded {
    run(lib, record_args, env, scenario, args, true)
}

/// Like [`record_env`], for a workload that dies before it reports: `truth` is null.
pub fn record_dying(
    lib: &Path,
    record_args: &[&str],
    env: &[(&str, &str)],
    scenario: &str,
    args: &[&str],
) -> Recorded {
    run(lib, record_args, env, scenario, args, false)
}

fn run(
    lib: &Path,
    record_args: &[&str],
    env: &[(&str, &str)],
    scenario: &str,
    args: &[&str],
    truth_required: bool,
) -> Recorded {
    require_root();
    let (_, workload) = sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .arg("record")
        .arg("-o")
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .args(record_args)
        .envs(env.iter().copied())
        .arg("--")
        .arg(workload)
        .arg("--lib")
        .arg(lib)
        .arg(scenario)
        .args(args)
        .output()
        .expect("running vramtrace record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let truth_line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let truth: Value = match truth_line {
        Some(line) => serde_json::from_str(line).expect("ground truth is JSON"),
        None if !truth_required => Value::Null,
        None => {
            panic!("no ground truth from the workload; stdout:\n{stdout}\nstderr:\n{stderr}")
        }
    };
    let (records, header, analysis) = read_back(&trace, &stderr);
    Recorded {
        records,
        header,
        truth,
        analysis,
        status: out.status.code().unwrap_or(-1),
        trace,
        stderr: stderr.into_owned(),
        _dir: dir,
    }
}

/// What `vramtrace record -- CMD` produced for a command of the test's own.
pub struct RecordedCommand {
    pub records: Vec<Record>,
    /// The command's standard output.
    pub stdout: String,
    /// vramtrace's and the command's standard error.
    pub stderr: String,
}

/// Records `cmd` under `vramtrace record --libcuda LIB RECORD_ARGS -- CMD`; the trace must be
/// complete and intact.
pub fn record_command(
    lib: &Path,
    record_args: &[&str],
    cmd: &[&std::ffi::OsStr],
) -> RecordedCommand {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .arg("record")
        .arg("-o")
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .args(record_args)
        .arg("--")
        .args(cmd)
        .output()
        .expect("running vramtrace record");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stderr}");
    let mut reader = TraceReader::open(&trace).expect("trace opens");
    let records: Vec<Record> = reader.by_ref().collect();
    let summary = reader.summary();
    assert!(
        summary.complete && summary.problems.is_empty(),
        "{:?}",
        summary.problems
    );
    RecordedCommand {
        records,
        stdout,
        stderr,
    }
}

/// Compiles the test program `tests/native/NAME` with `compiler` and `flags` into `dir`.
pub fn compile_native(name: &str, compiler: &str, flags: &[&str], dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/native")
        .join(name);
    let out = dir.join(name.split('.').next().unwrap_or(name));
    let status = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(status.success(), "compiling {}", source.display());
    out
}

/// A trace's records, its header and `vramtrace analyze --json` of it; the trace must be
/// complete and intact. `context` is shown when it is not.
fn read_back(trace: &Path, context: &str) -> (Vec<Record>, vramtrace::trace::Header, Value) {
    let mut reader = TraceReader::open(trace).expect("trace opens");
    let records: Vec<Record> = reader.by_ref().collect();
    let summary = reader.summary();
    assert!(
        summary.complete,
        "trace incomplete: {:?}\n{context}",
        summary.problems
    );
    assert_eq!(summary.digest_ok, Some(true));
    assert!(summary.problems.is_empty(), "{:?}", summary.problems);
    let analysis = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .args(["analyze", "--json"])
        .arg(trace)
        .output()
        .expect("running vramtrace analyze");
    assert!(
        analysis.status.success(),
        "{}",
        String::from_utf8_lossy(&analysis.stderr)
    );
    let analysis: Value = serde_json::from_slice(&analysis.stdout).expect("analyze --json is JSON");
    (records, summary.header.clone(), analysis)
}

/// A trace kept as a fixture with the ground truth its workload wrote, read back as if it
/// had just been recorded.
pub fn replay(trace: &Path, truth: &Path) -> Recorded {
    let text = std::fs::read_to_string(truth).expect("ground truth readable");
    let truth: Value = serde_json::from_str(&text).expect("ground truth is JSON");
    let (records, header, analysis) = read_back(trace, &format!("fixture {}", trace.display()));
    Recorded {
        records,
        header,
        truth,
        analysis,
        status: 0,
        trace: trace.to_path_buf(),
        stderr: String::new(),
        _dir: tempfile::tempdir().expect("temp dir"),
    }
}
