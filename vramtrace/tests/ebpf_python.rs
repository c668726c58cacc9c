//! eBPF integration test of Python frames: a ctypes workload allocates through the simulated
//! driver from nested functions on several threads, under each CPython of pyenv
//! (`$HOME/.pyenv/versions`), and prints the call path the interpreter itself saw for every
//! allocation. The recorded stack of each allocation must hold exactly those Python frames,
//! in that order, in place of the eval loop's frames: after the ctypes and libffi frames
//! that made the call, before the interpreter's own startup frames.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::sim;
use serde_json::Value;
use vramtrace::trace::{Frame, Record};

/// The versions every machine of the project has, built by pyenv without frame pointers.
const VERSIONS: &[&str] = &["3.10.13", "3.11.7", "3.12.1", "3.13.0"];

fn pyenv_python(version: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let minor = version.rsplit_once('.')?.0;
    let exe = Path::new(&home)
        .join(".pyenv/versions")
        .join(version)
        .join("bin")
        .join(format!("python{minor}"));
    exe.exists().then_some(exe)
}

fn workload() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ctypes_workload.py")
}

/// Records the workload under `python`; returns the trace's records and the paths printed.
///
/// With `--hold-new`: the process is held at its first driver call (`cuInit`) until its
/// interpreter is found, so that even its first allocation has its Python frames however
/// loaded the machine is. Without it the recorder looks for the interpreter from the
/// command's start, which is fast enough in practice but a race all the same.
fn record(python: &Path) -> (Vec<Record>, Vec<Value>) {
    let (lib, _) = sim();
    let workload = workload();
    let r = common::record_command(
        lib,
        &["--hold-new"],
        &[python.as_os_str(), workload.as_os_str(), lib.as_os_str()],
    );
    let printed: Vec<Value> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("the workload prints JSON"))
        .collect();
    (r.records, printed)
}

fn python_frames(frames: &[Frame]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|f| f.python)
        .map(|f| {
            (
                f.sym.clone().unwrap_or_default(),
                f.src.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn check(version: &str, python: &Path) {
    let (records, printed) = record(python);
    let stacks: HashMap<u32, &[Frame]> = records
        .iter()
        .filter_map(|r| match r {
            Record::Stack(s) => Some((s.id, s.frames.as_slice())),
            _ => None,
        })
        .collect();
    let allocs: HashMap<u64, Option<u32>> = records
        .iter()
        .filter_map(|r| match r {
            Record::Alloc(c) => Some((c.bytes?, c.stack)),
            _ => None,
        })
        .collect();
    // 2 allocations in the main thread, 3 in each of 2 threads, 1 more in the main thread.
    assert_eq!(printed.len(), 9, "{version}: {printed:?}");
    let mut threads = std::collections::HashSet::new();
    for p in &printed {
        let bytes = p["bytes"].as_u64().expect("bytes");
        let want: Vec<(String, String)> = p["path"]
            .as_array()
            .expect("path")
            .iter()
            .map(|f| {
                (
                    f[0].as_str().unwrap_or_default().to_string(),
                    f[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let id =
            allocs.get(&bytes).copied().flatten().unwrap_or_else(|| {
                panic!("{version}: no stack for the allocation of {bytes} bytes")
            });
        let frames = stacks[&id];
        let unknown: Vec<_> = frames
            .iter()
            .filter(|f| f.python && f.unknown.is_some())
            .collect();
        assert!(unknown.is_empty(), "{version}, {bytes} bytes: {unknown:?}");
        assert_eq!(
            python_frames(frames),
            want,
            "{version}, {bytes} bytes: the Python frames differ from the interpreter's own"
        );
        threads.insert(want.last().cloned());
        // In their place: after the ctypes/libffi frames that called the driver, before the
        // interpreter's startup (or thread start) frames; no eval-loop frame left over.
        let first = frames.iter().position(|f| f.python).expect("python frames");
        let last = frames
            .iter()
            .rposition(|f| f.python)
            .expect("python frames");
        let native_before = &frames[..first];
        assert!(
            native_before
                .iter()
                .any(|f| f.file.as_deref().is_some_and(|p| p.contains("libffi"))),
            "{version}, {bytes} bytes: no libffi frame before the Python frames: {frames:?}"
        );
        assert!(
            native_before
                .iter()
                .any(|f| f.sym.as_deref() == Some("_ctypes_callproc")),
            "{version}, {bytes} bytes: no ctypes frame before the Python frames: {frames:?}"
        );
        assert!(
            last + 1 < frames.len() && !frames[last + 1..].iter().any(|f| f.python),
            "{version}, {bytes} bytes: no interpreter frame after the Python frames"
        );
        assert!(
            !frames
                .iter()
                .any(|f| f.sym.as_deref() == Some("_PyEval_EvalFrameDefault")),
            "{version}, {bytes} bytes: an eval-loop frame was not replaced: {frames:?}"
        );
    }
    // The main thread's bottom frame is the module, the threads' is threading's bootstrap.
    assert!(threads.len() >= 2, "{version}: {threads:?}");
}

#[test]
fn python_frames_match_the_interpreters_own_call_paths() {
    let mut ran = Vec::new();
    for version in VERSIONS {
        match pyenv_python(version) {
            Some(python) => {
                check(version, &python);
                ran.push(*version);
            }
            None => eprintln!("CPython {version} is not under $HOME/.pyenv/versions: skipped"),
        }
    }
    assert!(
        !ran.is_empty(),
        "no CPython of {VERSIONS:?} under $HOME/.pyenv/versions"
    );
}

/// A CPython whose layout is not known (3.9 here) gets a frame that says so in place of each
/// call of its eval loop, never frames read with a guessed layout.
#[test]
fn an_unknown_version_is_said_not_guessed() {
    const UNKNOWN: &str = "3.9.18";
    let Some(python) = pyenv_python(UNKNOWN) else {
        eprintln!("CPython {UNKNOWN} is not under $HOME/.pyenv/versions: skipped");
        return;
    };
    let (records, printed) = record(&python);
    assert_eq!(printed.len(), 9, "{printed:?}");
    let stacks: Vec<&[Frame]> = records
        .iter()
        .filter_map(|r| match r {
            Record::Stack(s) if s.frames.iter().any(|f| f.python) => Some(s.frames.as_slice()),
            _ => None,
        })
        .collect();
    assert!(!stacks.is_empty(), "no stack with a Python frame");
    for frames in stacks {
        for f in frames.iter().filter(|f| f.python) {
            assert_eq!(f.sym, None, "{f:?}");
            assert_eq!(
                f.unknown.as_deref(),
                Some("CPython 3.9: layout not known"),
                "{f:?}"
            );
        }
    }
}
