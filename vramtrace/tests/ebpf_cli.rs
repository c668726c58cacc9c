//! `vramtrace record` as a user meets it: every process, `-p PID`, signals, a full ring
//! buffer, and the advice it gives when something is wrong.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{require_root, sim};
use vramtrace::trace::{Record, read::TraceReader};

fn vramtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vramtrace"))
}

fn read(path: &std::path::Path) -> (Vec<Record>, vramtrace::trace::read::ReadSummary) {
    let mut reader = TraceReader::open(path).expect("trace opens");
    let records: Vec<Record> = reader.by_ref().collect();
    (records, reader.summary())
}

/// Waits until the recorder has attached (its banner is on stderr) by polling the trace
/// file for the header line.
fn wait_for_header(path: &std::path::Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            // The header is written after the probes are attached.
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the recorder did not start within 30 s");
}

#[test]
fn traces_every_process_until_sigterm() {
    require_root();
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("all.jsonl");
    let mut rec = vramtrace()
        .args(["record", "-o"])
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_header(&trace);
    // Two unrelated processes, started by someone else.
    let out1 = Command::new(workload)
        .arg("--lib")
        .arg(lib)
        .arg("host")
        .output()
        .unwrap();
    let out2 = Command::new(workload)
        .arg("--lib")
        .arg(lib)
        .arg("exit-without-free")
        .output()
        .unwrap();
    // SAFETY: kill with a valid pid and signal has no memory effects.
    unsafe { libc::kill(rec.id() as i32, libc::SIGTERM) };
    let status = rec.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the recording cleanly: {status:?}"
    );
    let (records, summary) = read(&trace);
    assert!(summary.complete, "{:?}", summary.problems);
    for out in [out1, out2] {
        let truth: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        let pid = truth["pid"].as_u64().unwrap() as u32;
        let allocs = records
            .iter()
            .filter(|r| matches!(r, Record::Alloc(c) if c.pid == pid))
            .count();
        assert!(allocs > 0, "pid {pid} was traced without being named");
        assert!(
            records
                .iter()
                .any(|r| matches!(r, Record::Exit(e) if e.pid == pid))
        );
    }
}

/// A workload `scenario` that waits for a line on its stdin before touching the driver,
/// its stdout going to `stdout`.
fn waiting_workload(scenario: &str, stdout: Stdio) -> std::process::Child {
    let (lib, workload) = sim();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read _; exec {} --lib {} {scenario}",
            workload.display(),
            lib.display()
        ))
        .stdin(Stdio::piped())
        .stdout(stdout)
        .spawn()
        .unwrap()
}

#[test]
fn traces_only_the_named_pid() {
    require_root();
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("pid.jsonl");
    let mut target = waiting_workload("host", Stdio::piped());
    let mut rec = vramtrace()
        .args(["record", "-o"])
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .args(["-p", &target.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_header(&trace);
    // A bystander that must not appear.
    let bystander = Command::new(workload)
        .arg("--lib")
        .arg(lib)
        .arg("host")
        .output()
        .unwrap();
    use std::io::Write as _;
    target.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = target.wait_with_output().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    assert!(rec.wait().unwrap().success());
    let (records, summary) = read(&trace);
    assert!(summary.complete);
    let pid_of = |stdout: &[u8]| -> u32 {
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(stdout).lines().last().unwrap()).unwrap();
        v["pid"].as_u64().unwrap() as u32
    };
    let (traced, other) = (pid_of(&out.stdout), pid_of(&bystander.stdout));
    let pids: std::collections::BTreeSet<u32> = records
        .iter()
        .filter_map(|r| r.call())
        .map(|c| c.pid)
        .collect();
    assert_eq!(pids, [traced].into(), "only pid {traced}, never {other}");
}

#[test]
fn a_full_ring_buffer_is_counted_never_silent() {
    require_root();
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("lost.jsonl");
    // One page of ring buffer cannot hold a burst of 4 threads.
    let out = vramtrace()
        .args(["record", "--ring-size", "4096", "-o"])
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .arg("--")
        .arg(workload)
        .arg("--lib")
        .arg(lib)
        .args(["llm-server", "--threads", "4"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (records, summary) = read(&trace);
    let footer = summary.footer.expect("footer");
    let delivered = records.iter().filter(|r| r.call().is_some()).count() as u64;
    assert!(
        footer.lost_events > 0,
        "a 4 KiB ring loses events under this burst"
    );
    assert!(
        stderr.contains("events lost"),
        "loss is reported as it happens: {stderr}"
    );
    let lost_records: u64 = records
        .iter()
        .filter_map(|r| {
            if let Record::Lost(l) = r {
                Some(l.events())
            } else {
                None
            }
        })
        .sum();
    assert_eq!(lost_records, footer.lost_events);
    // The command's exit is in the trace even when the ring had no room for its event: the
    // recorder reaped it.
    let pid = records
        .iter()
        .find_map(|r| r.call().map(|c| c.pid))
        .expect("a traced call");
    assert!(
        records
            .iter()
            .any(|r| matches!(r, Record::Exit(e) if e.pid == pid)),
        "the command's exit is recorded"
    );
    assert_eq!(footer.stopped_by.as_deref(), Some("command exited"));
    assert!(footer.untraced_after.is_empty());
    let analysis = vramtrace().args(["analyze"]).arg(&trace).output().unwrap();
    let text = String::from_utf8_lossy(&analysis.stdout);
    assert!(
        text.to_lowercase().contains("events lost"),
        "analyze says events were lost: {text}"
    );
    eprintln!("delivered {delivered}, lost {}", footer.lost_events);
}

#[test]
fn advice_for_what_a_user_gets_wrong() {
    require_root();
    let (lib, _) = sim();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.jsonl");

    let missing = vramtrace()
        .args(["record", "--libcuda", "/nonexistent/libcuda.so.1", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let e = String::from_utf8_lossy(&missing.stderr);
    assert!(
        e.contains("/nonexistent/libcuda.so.1") && e.contains("no such file"),
        "{e}"
    );

    let not_a_driver = vramtrace()
        .args(["record", "--libcuda", "/bin/true", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!not_a_driver.status.success());
    let e = String::from_utf8_lossy(&not_a_driver.stderr);
    assert!(e.contains("/bin/true") && e.contains("libcuda"), "{e}");

    let bad_pid = vramtrace()
        .args(["record", "-p", "999999999", "--libcuda"])
        .arg(lib)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad_pid.status.success());
    let e = String::from_utf8_lossy(&bad_pid.stderr);
    assert!(e.contains("no process with PID 999999999"), "{e}");

    // Without privileges: the kernel refuses with EPERM, and the advice names sudo and the
    // capabilities.
    let unprivileged = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_vramtrace"))
        .args(["record", "--libcuda"])
        .arg(lib)
        .args(["-o", "/tmp/vramtrace-unprivileged.jsonl", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!unprivileged.status.success());
    let e = String::from_utf8_lossy(&unprivileged.stderr);
    assert!(e.contains("sudo") && e.contains("CAP_BPF"), "{e}");
}

/// `--log-format json` (and `VRAMTRACE_LOG_FORMAT=json`): every line `record` writes on stderr
/// is a JSON object with a timestamp, a level and a message; an error is at level ERROR.
#[test]
fn record_writes_json_lines_when_asked() {
    require_root();
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.jsonl");
    let lines = |stderr: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(stderr)
            .lines()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                assert!(
                    v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                    "{l}"
                );
                assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
                v
            })
            .collect()
    };
    let ok = vramtrace()
        .args(["--log-format", "json", "record", "--libcuda"])
        .arg(lib)
        .arg("-o")
        .arg(&out)
        .arg("--")
        .arg(workload)
        .arg("--lib")
        .arg(lib)
        .arg("exit-without-free")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let said = lines(&ok.stderr);
    let message = |v: &serde_json::Value| v["message"].as_str().unwrap_or("").to_owned();
    assert!(
        said.iter().any(|v| message(v).starts_with("tracing ")),
        "{said:?}"
    );
    assert!(
        said.iter().any(|v| message(v).contains("written to")),
        "{said:?}"
    );

    let missing = vramtrace()
        .env("VRAMTRACE_LOG_FORMAT", "json")
        .args(["record", "--libcuda", "/nonexistent/libcuda.so.1", "-o"])
        .arg(dir.path().join("y.jsonl"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let said = lines(&missing.stderr);
    assert!(
        said.iter()
            .any(|v| v["level"] == "ERROR" && message(v).contains("/nonexistent/libcuda.so.1")),
        "{said:?}"
    );
}

/// `record` run as the unprivileged user `nobody` with `caps` as its ambient capabilities,
/// tracing a simulated workload into a directory that user may write.
fn record_as_nobody(
    caps: &[&str],
) -> (std::process::Output, std::path::PathBuf, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt as _;
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let trace = dir.path().join("caps.jsonl");
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = list.join(",");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={list}"))
        .arg(format!("--ambient-caps={list}"))
        .arg(env!("CARGO_BIN_EXE_vramtrace"))
        .args(["record", "--no-nvml", "--libcuda"])
        .arg(lib)
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .arg(workload)
        .arg("--lib")
        .arg(lib)
        .arg("mixed")
        .output()
        .unwrap();
    (out, trace, dir)
}

#[test]
fn the_documented_capabilities_are_enough_and_a_missing_one_is_named() {
    require_root();
    // Exactly the four the README lists, as an unprivileged user: a whole trace.
    let (out, trace, _dir) = record_as_nobody(&["bpf", "perfmon", "sys_ptrace", "dac_read_search"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (records, summary) = read(&trace);
    assert_eq!(
        summary.integrity,
        vramtrace::trace::Integrity::Complete,
        "{stderr}"
    );
    assert!(
        records.iter().any(|r| matches!(r, Record::Alloc(_))),
        "allocations traced: {stderr}"
    );

    // Without CAP_DAC_READ_SEARCH tracefs cannot be read: the error says that is what lacks,
    // not to grant what the user already has.
    let (out, trace, _dir) = record_as_nobody(&["bpf", "perfmon", "sys_ptrace"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("this process lacks CAP_DAC_READ_SEARCH"),
        "{stderr}"
    );
    assert!(!stderr.contains("lacks CAP_BPF"), "{stderr}");
    assert!(!trace.exists(), "a refused recording leaves no file");
}

/// `record -- workload trapped-call` whose worker thread blocks inside cuMemAlloc_v2 until
/// released, in a process group of its own (as a shell puts a job), waiting until the call
/// is entered. Returns the recorder, the trace path, the trap directory and the temp dir;
/// the recorder's stderr goes to `stderr.txt` there (a pipe would stay open as long as the
/// command that inherits it runs).
fn record_blocked_command() -> (
    std::process::Child,
    std::path::PathBuf,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    use std::os::unix::process::CommandExt as _;
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("sig.jsonl");
    let trap = dir.path().join("trap");
    std::fs::create_dir(&trap).unwrap();
    let mut rec = vramtrace();
    rec.args(["record", "--no-nvml", "-o"])
        .arg(&trace)
        .arg("--libcuda")
        .arg(lib)
        .arg("--")
        .arg(workload)
        .arg("--lib")
        .arg(lib)
        .arg("trapped-call")
        .env("SIMCUDA_TRAP", format!("block:{}", trap.display()))
        .env("SIMCUDA_TRAP_BYTES", "12345")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.txt")).unwrap());
    // As in a terminal: the test may run where SIGINT is ignored (a job started in the
    // background by a script ignores it), and an ignored signal stays ignored in the command
    // vramtrace starts.
    // SAFETY: signal() is async-signal-safe; the closure touches nothing else between fork
    // and exec.
    unsafe {
        rec.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let rec = rec.spawn().unwrap();
    let start = Instant::now();
    while !trap.join("entered").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the call was not entered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (rec, trace, trap, dir)
}

#[test]
fn ctrl_c_ends_the_command_and_vramtrace_with_its_status_recorded() {
    require_root();
    let (mut rec, trace, _trap, dir) = record_blocked_command();
    // Ctrl-C in a terminal: SIGINT to the whole process group.
    // SAFETY: signalling a process group this test created.
    unsafe { libc::killpg(rec.id() as i32, libc::SIGINT) };
    let status = rec.wait().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("continues untraced"), "{stderr}");
    let (records, summary) = read(&trace);
    assert!(summary.complete, "{stderr}");
    assert!(
        records.iter().any(|r| matches!(r, Record::Exit(_))),
        "the command's end is recorded: {stderr}"
    );
    let footer = summary.footer.expect("a footer");
    assert_eq!(footer.stopped_by.as_deref(), Some("SIGINT"));
    assert!(
        footer.untraced_after.is_empty(),
        "{:?}",
        footer.untraced_after
    );
}

#[test]
fn a_signal_to_vramtrace_alone_leaves_the_command_running_and_says_so_in_the_trace() {
    require_root();
    let (mut rec, trace, trap, dir) = record_blocked_command();
    // SAFETY: signalling the recorder this test started.
    unsafe { libc::kill(rec.id() as i32, libc::SIGTERM) };
    let status = rec.wait().unwrap();
    // Let the workload go and end.
    std::fs::write(trap.join("release"), b"").unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("continues untraced"), "{stderr}");
    let (records, summary) = read(&trace);
    assert!(summary.complete, "{stderr}");
    let pid = records
        .iter()
        .find_map(|r| r.call().map(|c| c.pid))
        .expect("a traced call");
    assert!(!records.iter().any(|r| matches!(r, Record::Exit(_))));
    let footer = summary.footer.expect("a footer");
    assert_eq!(footer.stopped_by.as_deref(), Some("SIGTERM"));
    assert_eq!(footer.untraced_after, [pid]);
    let report = vramtrace().arg("analyze").arg(&trace).output().unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("stopped: SIGTERM"), "{text}");
    assert!(
        text.contains(&format!(
            "pid {pid} (vramtrace-workl) still running when the recording stopped: it went on untraced"
        )),
        "{text}"
    );
}

/// Records `-p` the PID of `target` (a workload waiting for a line on its stdin) into `trace`,
/// with `args`, then lets it go: the recorder must end by itself once the PID has exited, and
/// succeed. Gives the recorder's stderr.
fn record_waiting_target(
    target: &mut std::process::Child,
    trace: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> String {
    let stderr_path = trace.with_extension("stderr");
    let mut rec = vramtrace()
        .args(["record", "--no-nvml", "-o"])
        .arg(trace)
        .args(args)
        .args(["-p", &target.id().to_string()])
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    wait_for_header(trace);
    use std::io::Write as _;
    target.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(target.wait().unwrap().success());
    // No signal: the recorder ends by itself once the process it was given has exited.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = rec.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the recorder did not end after its PID exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(status.success(), "{stderr}");
    stderr
}

/// A process with a root of its own, as a container's: `-p PID` before it loads the driver
/// finds the copy its image holds where its loader looks, through the image's absolute links
/// (`/lib64 -> /usr/lib64`, `libcuda.so.1 -> /run/nvidia/driver/.../libcuda.so.580.95.05`,
/// here the simulated driver), and its calls are traced there. The image shares the host's
/// `/usr` through a bind mount in a private mount namespace, as images share a base layer.
#[test]
fn a_process_in_its_own_root_is_traced_on_the_driver_copy_its_links_lead_to() {
    require_root();
    let (lib, workload) = sim();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    let drivers = image.join("run/nvidia/driver/usr/lib64");
    std::fs::create_dir_all(&drivers).unwrap();
    std::fs::create_dir_all(image.join("usr")).unwrap();
    std::fs::create_dir_all(image.join("opt")).unwrap();
    for (link, target) in [
        ("bin", "/usr/bin"),
        ("lib", "/usr/lib"),
        ("lib64", "/usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, image.join(link)).unwrap();
    }
    std::fs::copy(lib, drivers.join("libcuda.so.580.95.05")).unwrap();
    std::os::unix::fs::symlink(
        "/run/nvidia/driver/usr/lib64/libcuda.so.580.95.05",
        drivers.join("libcuda.so.1"),
    )
    .unwrap();
    std::fs::copy(workload, image.join("opt/workload")).unwrap();
    let trace = dir.path().join("root.jsonl");
    // unshare, sh and chroot each exec the next: the PID stays the workload's.
    let mut target = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind /usr {0}/usr && exec chroot {0} /bin/sh -c \
             'read _; exec /opt/workload --lib /run/nvidia/driver/usr/lib64/libcuda.so.1 mixed'",
            image.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = target.id();
    let start = Instant::now();
    while std::fs::read_link(format!("/proc/{pid}/root")).ok() != Some(image.clone()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the process did not chroot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = record_waiting_target(&mut target, &trace, &[]);
    let (records, summary) = read(&trace);
    let copy = summary
        .header
        .libraries
        .iter()
        .find(|l| l.path.ends_with(&format!(" (in PID {pid}'s root)")))
        .unwrap_or_else(|| panic!("the image's copy is attached: {stderr}"));
    assert_eq!(copy.build_id, vramtrace::probe::libcuda::build_id(lib));
    let calls: Vec<&str> = records
        .iter()
        .filter_map(|r| r.call())
        .filter(|c| c.pid == pid)
        .map(|c| &*c.api)
        .collect();
    assert!(calls.contains(&"cuMemAlloc_v2"), "{calls:?}\n{stderr}");
    assert!(calls.contains(&"cuMemCreate"), "{calls:?}\n{stderr}");
}

#[test]
fn attaching_with_pid_says_what_is_unseen_and_ends_when_the_pids_exit() {
    require_root();
    let (lib, _) = sim();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("attach.jsonl");
    // Already running when the recorder attaches; it touches the driver once told to.
    let mut target = waiting_workload("mixed", Stdio::null());
    let stderr = record_waiting_target(&mut target, &trace, &["--libcuda".as_ref(), lib.as_ref()]);
    assert!(
        stderr.contains("what they allocated before now is not in the trace"),
        "{stderr}"
    );
    let (_, summary) = read(&trace);
    let footer = summary.footer.expect("a footer");
    assert_eq!(
        footer.stopped_by.as_deref(),
        Some("traced processes exited")
    );
    let report = vramtrace().arg("analyze").arg(&trace).output().unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains("traced since the recording started (it was already running)"),
        "{text}"
    );
}
