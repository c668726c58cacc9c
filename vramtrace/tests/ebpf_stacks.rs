//! Recorded stacks against ground truth: C and C++ programs built at -O2 without frame
//! pointers (so only CFI unwinding recovers their stacks), with threads and with exceptions
//! thrown and caught, print the call path of every allocation; the stack recorded for that
//! allocation must name exactly those functions, in order, and then end where the thread
//! began (`main` and the C runtime, or the thread library), complete and untruncated.

mod common;

use std::collections::HashMap;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{compile_native, record_command, require_root, sim};
use vramtrace::trace::{Frame, Record, Stack, read::TraceReader};

/// Bytes → the stack recorded for the allocation of that size.
fn stacks_by_size(records: &[Record]) -> HashMap<u64, Stack> {
    stacks_by_size_of(records, None)
}

/// Bytes → the stack recorded for the allocation of that size, by process `proc` (a
/// `process` record's id) or by any.
fn stacks_by_size_of(records: &[Record], proc: Option<u32>) -> HashMap<u64, Stack> {
    let stacks: HashMap<u32, &Stack> = records
        .iter()
        .filter_map(|r| match r {
            Record::Stack(s) => Some((s.id, s)),
            _ => None,
        })
        .collect();
    records
        .iter()
        .filter_map(|r| match r {
            Record::Alloc(c) if proc.is_none_or(|p| p == c.proc) => {
                Some((c.bytes?, (*stacks.get(&c.stack?)?).clone()))
            }
            _ => None,
        })
        .collect()
}

/// The function name of a frame, without parameters or a clone suffix.
fn function(sym: &str) -> &str {
    sym.split('(').next().unwrap_or(sym)
}

/// A frame as the programs print it in a path: its function, marked when it was inlined.
fn path_name(f: &Frame) -> String {
    let name = function(f.sym.as_deref().unwrap_or("?"));
    if f.inlined {
        format!("{name} [inlined]")
    } else {
        name.to_string()
    }
}

/// Checks every `BYTES PATH` line the program printed against the recorded stack of that
/// allocation. `ends` are the functions a complete stack may end with after the path.
fn check_paths(stdout: &str, by_size: &HashMap<u64, Stack>, ends: &[&[&str]]) -> usize {
    let mut checked = 0;
    for line in stdout.lines() {
        let Some((bytes, path)) = line.split_once(' ') else {
            continue;
        };
        let bytes: u64 = bytes.parse().expect("a size");
        let want: Vec<&str> = path.split(',').collect();
        let stack = by_size
            .get(&bytes)
            .unwrap_or_else(|| panic!("no stack recorded for the allocation of {bytes} bytes"));
        let got: Vec<String> = stack.frames.iter().map(path_name).collect();
        assert_eq!(
            &got[..want.len().min(got.len())],
            &want[..],
            "allocation of {bytes} bytes: recorded {got:?}, ran through {want:?}"
        );
        for f in &stack.frames {
            assert!(
                f.unknown.is_none() && f.file.is_some(),
                "every frame lies in a mapped file: {f:?}"
            );
        }
        if !ends.is_empty() {
            let rest = &got[want.len()..];
            assert!(
                ends.iter().any(|end| rest == *end),
                "allocation of {bytes} bytes: after {want:?} the stack ends with {rest:?}, \
                 not where its thread began ({ends:?})"
            );
            assert_eq!(stack.truncated, None, "{bytes} bytes: {got:?}");
        }
        checked += 1;
    }
    checked
}

/// Builds `tests/native/SOURCE` with `compiler` and `flags`, and records it running against
/// the simulated driver under `vramtrace record RECORD_ARGS`.
fn record_native(
    source: &str,
    compiler: &str,
    flags: &[&str],
    record_args: &[&str],
) -> common::RecordedCommand {
    let (lib, _) = sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_native(source, compiler, flags, dir.path());
    record_command(lib, record_args, &[exe.as_os_str(), lib.as_os_str()])
}

/// Flags that leave frame pointers out: only CFI unwinding recovers these stacks.
const NO_FRAME_POINTERS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-pthread"];

const MAIN_THREAD: &[&str] = &["__libc_start_call_main", "__libc_start_main_impl", "_start"];
const OTHER_THREAD: &[&str] = &["start_thread", "clone3"];

#[test]
fn c_without_frame_pointers_with_threads() {
    let r = record_native("alloc_paths.c", "cc", NO_FRAME_POINTERS, &["--hold-new"]);
    let by_size = stacks_by_size(&r.records);
    // The path lines of the complete stacks; the deep recursion is checked below.
    let (deep, whole): (Vec<&str>, Vec<&str>) =
        r.stdout.lines().partition(|l| l.ends_with(",deep"));
    let checked = check_paths(&whole.join("\n"), &by_size, &[MAIN_THREAD, OTHER_THREAD]);
    assert_eq!(
        checked, 9,
        "3 layers and 2 threads × 3 steps:\n{}",
        r.stdout
    );

    // The inlined function has a frame of its own, at the line of its call to alloc_leaf;
    // the function it was inlined into is at the line of its call to it.
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/native/alloc_paths.c"),
    )
    .expect("the program's source");
    let line_of = |marker: &str| {
        let n = source
            .lines()
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{marker} is in the source"));
        format!("alloc_paths.c:{}", n + 1)
    };
    let layer = &by_size[&(1 << 20)];
    let places: Vec<(String, bool, String)> = layer.frames[1..3]
        .iter()
        .map(|f| {
            let src = f.src.as_deref().unwrap_or("?");
            let file = src.rsplit('/').next().unwrap_or(src);
            (path_name(f), f.inlined, file.to_string())
        })
        .collect();
    assert_eq!(
        places,
        [
            (
                "reserve_layer [inlined]".to_string(),
                true,
                line_of("/* the call in reserve_layer */")
            ),
            (
                "load_layer".to_string(),
                false,
                line_of("/* the call in load_layer */")
            ),
        ],
        "{:?}",
        layer.frames
    );
    assert_eq!(
        (layer.frames[1].addr, layer.frames[1].offset),
        (layer.frames[2].addr, layer.frames[2].offset),
        "an inlined frame shares its return address with the frame that holds it"
    );

    // 25 frames of over 1 KiB each outgrow the 16 KiB copied: the stack is right as far as
    // it goes and says why it ends.
    let deep_line = deep.first().expect("the deep allocation ran");
    let bytes: u64 = deep_line
        .split(' ')
        .next()
        .and_then(|b| b.parse().ok())
        .expect("size");
    let stack = &by_size[&bytes];
    let names: Vec<&str> = stack
        .frames
        .iter()
        .map(|f| function(f.sym.as_deref().unwrap_or("?")))
        .collect();
    assert_eq!(names[0], "alloc_leaf", "{names:?}");
    assert!(names[1..].iter().all(|n| *n == "deep"), "{names:?}");
    assert!(names.len() > 8, "{names:?}");
    assert_eq!(
        stack.truncated.as_deref(),
        Some("stack deeper than the 16 KiB copied"),
        "{names:?}"
    );
}

#[test]
fn cpp_after_exceptions_without_frame_pointers() {
    let r = record_native("throw_catch.cpp", "c++", NO_FRAME_POINTERS, &["--hold-new"]);
    let by_size = stacks_by_size(&r.records);
    let checked = check_paths(&r.stdout, &by_size, &[MAIN_THREAD]);
    assert_eq!(checked, 4, "{}", r.stdout);
}

#[test]
fn frame_pointer_mode_stays_available() {
    // `--stacks fp` is the kernel's walk: right for code built with frame pointers.
    let r = record_native(
        "alloc_paths.c",
        "cc",
        &[
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-pthread",
        ],
        &["--stacks", "fp", "--hold-new"],
    );
    let by_size = stacks_by_size(&r.records);
    let main_path: String = r
        .stdout
        .lines()
        .filter(|l| l.ends_with(",main"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(check_paths(&main_path, &by_size, &[]), 3, "{}", r.stdout);
}

#[test]
fn twenty_short_lived_processes_recorded_machine_wide() {
    // No `-p` and no command: every process on the machine. Twenty copies of a program that
    // lives a few milliseconds start at once; each must have its command line and every
    // frame of every allocation resolved.
    require_root();
    let (lib, _) = sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_native("alloc_paths.c", "cc", NO_FRAME_POINTERS, dir.path());
    let trace = dir.path().join("all.jsonl");
    let mut rec = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .args(["record", "--no-nvml", "--hold-new", "-o"])
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.txt")).expect("stderr file"))
        .spawn()
        .expect("starting vramtrace record");
    let start = Instant::now();
    while !std::fs::metadata(&trace).is_ok_and(|m| m.len() > 0) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the recorder did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let children: Vec<_> = (0..20)
        .map(|_| {
            Command::new(&exe)
                .arg(lib)
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting a workload")
        })
        .collect();
    let mut outputs = HashMap::new();
    for child in children {
        let pid = child.id();
        let out = child.wait_with_output().expect("workload output");
        assert!(out.status.success(), "workload {pid} failed");
        outputs.insert(pid, String::from_utf8_lossy(&out.stdout).into_owned());
    }
    // Let the recorder drain, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    assert!(rec.wait().expect("recorder status").success());

    let mut reader = TraceReader::open(&trace).expect("trace opens");
    let records: Vec<Record> = reader.by_ref().collect();
    let summary = reader.summary();
    assert!(
        summary.complete && summary.problems.is_empty(),
        "{:?}",
        summary.problems
    );
    let mut seen = 0;
    for rec in &records {
        let Record::Process(p) = rec else { continue };
        let Some(stdout) = outputs.get(&p.pid) else {
            continue;
        };
        assert_eq!(
            p.cmdline.first().map(String::as_str),
            exe.to_str(),
            "pid {} has its command line: {p:?}",
            p.pid
        );
        let by_size = stacks_by_size_of(&records, Some(p.id));
        let whole: Vec<&str> = stdout.lines().filter(|l| !l.ends_with(",deep")).collect();
        assert_eq!(
            check_paths(&whole.join("\n"), &by_size, &[MAIN_THREAD, OTHER_THREAD]),
            9,
            "pid {}",
            p.pid
        );
        seen += 1;
    }
    assert_eq!(seen, 20, "every process was recorded");
}
