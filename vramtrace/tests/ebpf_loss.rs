//! eBPF integration tests of loss accounting: the real programs, loaded through the library
//! with bookkeeping maps small enough to fill, each loss provoked on the simulated driver and
//! seen counted exactly once; and the load itself, which no signal to the process may abort.

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{require_root, sim};
use vramtrace::{
    decode::RawEvent,
    probe::{Config, Counters, MapSizes, Tracer},
};

/// The size of the allocation that springs the simulated driver's trap.
const TRAP_BYTES: u64 = 5 << 20;
/// What the trapped-call scenario's main thread allocates while the trap holds its worker.
const DURING_BYTES: u64 = 3 << 20;

/// A shell that waits for a line on stdin, then runs `script` (the workload is `$W`, the
/// driver `$L`), with the simulated driver's trap set to block in `dir`.
struct Target {
    child: Child,
    dir: PathBuf,
}

impl Target {
    fn start(script: &str, dir: &Path) -> Target {
        let (lib, workload) = sim();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _; {script}"))
            .env("W", workload)
            .env("L", lib)
            .env("SIMCUDA_TRAP", format!("block:{}", dir.display()))
            .env("SIMCUDA_TRAP_BYTES", TRAP_BYTES.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sh");
        Target {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) {
        self.child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("writing to the target");
    }

    /// Waits for the file `name` in the trap's directory.
    fn wait_for(&mut self, name: &str) {
        let path = self.dir.join(name);
        let start = Instant::now();
        while !path.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the target ended ({status}) before {name} appeared");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} did not appear within 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the trapped call return and waits for the target to end successfully.
    fn release_and_wait(self) {
        std::fs::write(self.dir.join("release"), b"").expect("writing release");
        let out = self
            .child
            .wait_with_output()
            .expect("waiting for the target");
        assert!(
            out.status.success(),
            "the target failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A tracer on the simulated driver with these map sizes, tracing `pids` and their children.
fn tracer(pids: Vec<u32>, maps: MapSizes) -> Tracer {
    require_root();
    let (lib, _) = sim();
    Tracer::start(&Config {
        libraries: vec![lib.clone()],
        pids,
        stacks: vramtrace::probe::StackMode::Off,
        maps,
        ..Config::default()
    })
    .expect("starting the probes")
}

/// Every event delivered so far, and the counters.
fn drain(tracer: &mut Tracer) -> (Vec<RawEvent>, Counters) {
    let mut events = Vec::new();
    let bad = tracer.drain(&mut events, &mut |_| {});
    assert_eq!(bad, 0, "undecodable ring buffer items");
    (events, tracer.counters())
}

/// The calls of `pid`: (symbol, bytes argument, return code).
fn calls(tracer: &Tracer, events: &[RawEvent], pid: u32) -> Vec<(String, u64, i32)> {
    events
        .iter()
        .filter_map(|e| match e {
            RawEvent::Call(c) if c.pid == pid => Some((
                tracer.apis[c.api as usize].symbol.to_string(),
                c.args[1],
                c.ret,
            )),
            _ => None,
        })
        .collect()
}

fn allocs_of(calls: &[(String, u64, i32)], bytes: u64) -> usize {
    calls
        .iter()
        .filter(|(api, b, _)| api == "cuMemAlloc_v2" && *b == bytes)
        .count()
}

/// The verifier gives up on a program with `EAGAIN` when a signal is pending for the thread
/// that loads it, and a spawn that fails (a program not installed) signals the process from a
/// thread that blocks every signal, so the exit signal is queued though it is ignored. With
/// another thread failing to spawn a program as fast as it can, the probes still load, and
/// attach, every time.
#[test]
fn the_probes_load_while_the_process_is_signalled_without_pause() {
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let spawned = Command::new("/nonexistent/vramtrace-no-such-program").spawn();
                assert!(spawned.is_err(), "the program does not exist");
                failed += 1;
            }
            failed
        })
    };
    for _ in 0..3 {
        let tracer = tracer(vec![std::process::id()], MapSizes::default());
        assert!(!tracer.apis.is_empty());
    }
    stop.store(true, Ordering::Relaxed);
    let failed = spawner.join().expect("the spawning thread");
    assert!(failed > 0, "no spawn was tried while the probes loaded");
}

#[test]
fn a_full_inflight_map_loses_a_call_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut target = Target::start("exec \"$W\" --lib \"$L\" trapped-call", dir.path());
    // One in-flight entry: the trapped call holds it while the main thread calls.
    let mut tracer = tracer(
        vec![target.pid()],
        MapSizes {
            inflight: 1,
            ..MapSizes::default()
        },
    );
    let pid = target.pid();
    target.go();
    target.wait_for("during-done");
    target.release_and_wait();
    let (events, counters) = drain(&mut tracer);
    let calls = calls(&tracer, &events, pid);
    assert_eq!(
        (counters.lost_entry, counters.return_without_entry),
        (1, 0),
        "the call made while the map was full is lost once, at its entry; {counters:?}"
    );
    assert_eq!(allocs_of(&calls, DURING_BYTES), 0, "{calls:?}");
    assert_eq!(
        allocs_of(&calls, TRAP_BYTES),
        1,
        "the call that held the entry is delivered: {calls:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RawEvent::Exit(x) if x.pid == pid)),
        "the exit is delivered"
    );
}

#[test]
fn a_return_whose_entry_was_never_seen_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The filter starts with a bystander, so the target's calls are not traced at entry.
    let mut bystander = Command::new("sleep")
        .arg("120")
        .spawn()
        .expect("starting sleep");
    let mut target = Target::start("exec \"$W\" --lib \"$L\" trapped-call", dir.path());
    let mut tracer = tracer(vec![bystander.id()], MapSizes::default());
    let pid = target.pid();
    target.go();
    target.wait_for("during-done");
    // Traced from now on, while its worker is inside the driver.
    tracer
        .trace_pid(pid)
        .expect("adding the target to the filter");
    target.release_and_wait();
    let _ = bystander.kill();
    let _ = bystander.wait();
    let (events, counters) = drain(&mut tracer);
    let calls = calls(&tracer, &events, pid);
    assert_eq!(
        (counters.return_without_entry, counters.lost_entry),
        (1, 0),
        "{counters:?}"
    );
    assert_eq!(allocs_of(&calls, TRAP_BYTES), 0, "{calls:?}");
    // The calls after it are traced: the main thread frees what it allocated.
    let frees = calls
        .iter()
        .filter(|(api, _, _)| api == "cuMemFree_v2")
        .count();
    assert_eq!(frees, 3, "{calls:?}");
}

#[test]
fn a_child_the_filter_has_no_room_for_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The shell forks the workload: with room for the shell alone, the child is left out.
    let mut target = Target::start("\"$W\" --lib \"$L\" host >/dev/null; true", dir.path());
    let mut tracer = tracer(
        vec![target.pid()],
        MapSizes {
            filter: 1,
            ..MapSizes::default()
        },
    );
    target.go();
    target.release_and_wait();
    let (events, counters) = drain(&mut tracer);
    assert_eq!(counters.filter_full, 1, "{counters:?}");
    assert!(
        events.is_empty(),
        "the child left out of the filter is not traced: {} events",
        events.len()
    );
}

#[test]
fn full_process_and_thread_maps_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first workload waits inside the driver while the second runs to its end: with room
    // for one process and one thread, the first holds both.
    let script = format!(
        "\"$W\" --lib \"$L\" trapped-call >/dev/null & \
         while [ ! -e {d}/during-done ]; do sleep 0.01; done; \
         \"$W\" --lib \"$L\" host >{d}/second.json; touch {d}/second-done; wait",
        d = dir.path().display()
    );
    let mut target = Target::start(&script, dir.path());
    let mut tracer = tracer(
        vec![target.pid()],
        MapSizes {
            seen: 1,
            threads: 1,
            ..MapSizes::default()
        },
    );
    target.go();
    target.wait_for("second-done");
    let second: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("second.json"))
            .expect("the second workload's report")
            .lines()
            .last()
            .expect("a report line"),
    )
    .expect("the report is JSON");
    let second = second["pid"].as_u64().expect("pid") as u32;
    target.release_and_wait();
    let (events, counters) = drain(&mut tracer);
    let calls = calls(&tracer, &events, second);
    assert!(
        !calls.is_empty(),
        "the second workload's calls are delivered: {counters:?}, pids {:?}",
        events
            .iter()
            .map(|e| match e {
                RawEvent::Call(c) => c.pid,
                RawEvent::Exit(x) | RawEvent::Hold(x) => x.pid,
            })
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        counters.seen_full >= calls.len() as u64,
        "every event of the process that did not fit is counted: {counters:?}, {} calls",
        calls.len()
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RawEvent::Exit(x) if x.pid == second)),
        "its exit is not reported, as the count says"
    );
    assert!(
        counters.threads_full >= calls.len() as u64,
        "every call of a thread that did not fit is counted: {counters:?}"
    );
    assert_eq!(
        (counters.lost_entry, counters.return_without_entry),
        (0, 0),
        "{counters:?}"
    );
}
