//! `cargo xtask bench-analyze`: how fast `vramtrace analyze` reads traces of 10^5 to 10^7
//! events, with every CPU it may use and pinned to one, against `jq empty` merely parsing the
//! same file. Prints a table; asserts nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use vramtrace::ledger::READ_AHEAD_BATCH;
use vramtrace::trace::write::TraceWriter;
use vramtrace::trace::{
    Call, FORMAT_MAJOR, FORMAT_MINOR, Frame, Header, Mem, Process, Record, Stack, TraceReader,
};

#[derive(Debug, Args)]
pub struct BenchAnalyzeArgs {
    /// Event counts to generate (repeatable).
    #[arg(long = "events", default_values_t = [100_000u64, 1_000_000, 10_000_000])]
    pub events: Vec<u64>,
    /// The vramtrace binary to measure (build it with `cargo build --release` first).
    #[arg(long, default_value = "target/release/vramtrace")]
    pub vramtrace: PathBuf,
    /// Where the generated traces go.
    #[arg(long, default_value = "target/bench-analyze")]
    pub dir: PathBuf,
    /// Skip `jq` even when it is installed.
    #[arg(long)]
    pub no_jq: bool,
    /// Runs of each command; the fastest counts (the others met a busy machine).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
}

const START: u64 = 1_000_000_000_000;
const THREADS: u32 = 8;
const STACKS: u32 = 64;
const PROCS: u32 = 2;

/// A realistic mix: weights loaded first, then steps of alloc/free pairs on several threads
/// from a few dozen stacks, a little of it stream-ordered, a rare failure.
pub fn generate(path: &Path, events: u64) -> Result<()> {
    let mut w = TraceWriter::create(path)?;
    w.write(&Record::Header(Box::new(Header {
        format: "vramtrace".into(),
        version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        tool_version: "bench".into(),
        host: "bench".into(),
        kernel: "6.18".into(),
        start_monotonic_ns: START,
        start_unix_ns: 1_784_000_000_000_000_000,
        ..Default::default()
    })))?;
    for p in 1..=PROCS {
        w.write(&Record::Process(Process {
            id: p,
            pid: 1000 + p,
            comm: format!("worker{p}"),
            ..Default::default()
        }))?;
    }
    for s in 1..=STACKS {
        w.write(&Record::Stack(Stack {
            id: s,
            frames: (0..12)
                .map(|i| Frame {
                    addr: 0x5555_0000_0000 + u64::from(s) * 0x1000 + i * 0x40,
                    file: Some("/usr/lib/python3/dist-packages/torch/lib/libc10_cuda.so".into()),
                    build_id: Some("a1b2c3d4e5f6".into()),
                    offset: Some(u64::from(s) * 0x1000 + i * 0x40),
                    sym: Some(format!("c10::cuda::CUDACachingAllocator::fn{s}_{i}")),
                    ..Default::default()
                })
                .collect(),
            truncated: None,
        }))?;
    }
    // Outstanding allocations per (proc, thread): freed in order, a working set of 32.
    let mut live: Vec<std::collections::VecDeque<(u64, bool)>> =
        vec![Default::default(); (PROCS * THREADS) as usize];
    let mut ts = START + 1_000_000;
    let mut next_addr = 0x7f00_0000_0000u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut n = 0u64;
    while n < events {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let slot = (rng % u64::from(PROCS * THREADS)) as usize;
        let proc = slot as u32 / THREADS + 1;
        let tid = 1000 + proc + (slot as u32 % THREADS) * 10;
        ts += 1 + rng % 5000;
        let q = &mut live[slot];
        let call = |api: &str| Call {
            api: api.into(),
            proc,
            pid: 1000 + proc,
            tid,
            ts_ns: ts,
            dur_ns: 1200 + rng % 800,
            ret: 0,
            device: Some(0),
            ..Default::default()
        };
        if q.len() >= 32 || (q.len() > 4 && rng.is_multiple_of(3)) {
            let Some((addr, asy)) = q.pop_front() else {
                continue;
            };
            let rec = if asy {
                Record::Free(Call {
                    addr: Some(addr),
                    stream: Some(0x55),
                    ..call("cuMemFreeAsync")
                })
            } else {
                Record::Free(Call {
                    addr: Some(addr),
                    ..call("cuMemFree_v2")
                })
            };
            w.write(&rec)?;
        } else {
            let asy = rng.is_multiple_of(7);
            let bytes = 512 << (rng % 16);
            next_addr += bytes.max(4096);
            let stack = Some(1 + (rng >> 20) as u32 % STACKS);
            let rec = if rng.is_multiple_of(100_003) {
                Record::Failed(Call {
                    ret: 2,
                    bytes: Some(bytes << 20),
                    mem: Some(Mem::Device),
                    stack,
                    ..call("cuMemAlloc_v2")
                })
            } else if asy {
                q.push_back((next_addr, true));
                Record::Alloc(Call {
                    addr: Some(next_addr),
                    bytes: Some(bytes),
                    mem: Some(Mem::DeviceAsync),
                    stream: Some(0x55),
                    stack,
                    ..call("cuMemAllocAsync")
                })
            } else {
                q.push_back((next_addr, false));
                Record::Alloc(Call {
                    addr: Some(next_addr),
                    bytes: Some(bytes),
                    mem: Some(Mem::Device),
                    stack,
                    ..call("cuMemAlloc_v2")
                })
            };
            w.write(&rec)?;
        }
        n += 1;
    }
    w.finish(ts + 1000, 0, 0)?;
    Ok(())
}

/// One command measured: wall seconds, CPU seconds (user and system), peak RSS in KiB.
#[derive(Clone, Copy)]
struct Measured {
    wall: f64,
    cpu: f64,
    rss_kib: i64,
}

/// Wall seconds, CPU seconds and the child's peak RSS (KiB) of one command.
fn measure(cmd: &mut Command) -> Result<(f64, f64, i64)> {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_CHILDREN is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `ru` outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((secs, tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss))
}

/// Peak RSS of one child, alone: the maximum over children so far is only its own when the
/// child runs in a fresh process of ours. With `cpu`, the child and its threads run on that
/// CPU only.
fn measure_alone(cpu: Option<usize>, args: &[&str]) -> Result<Measured> {
    let exe = std::env::current_exe()?;
    let pin = cpu.map(|c| c.to_string());
    let out = Command::new(exe)
        .arg("__measure")
        .args(pin.iter().flat_map(|c| ["--cpu", c.as_str()]))
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace();
    match (
        it.next().and_then(|v| v.parse().ok()),
        it.next().and_then(|v| v.parse().ok()),
        it.next().and_then(|v| v.parse().ok()),
    ) {
        (Some(wall), Some(cpu), Some(rss_kib)) if out.status.success() => {
            Ok(Measured { wall, cpu, rss_kib })
        }
        _ => bail!("measuring {args:?} failed: {s}"),
    }
}

/// Seconds to read and check the trace alone (parse every line, verify the digest), in this
/// process: the part of `analyze` that is not the replay.
fn read_only(path: &Path) -> Result<f64> {
    let t = Instant::now();
    let mut reader = TraceReader::open(path)?;
    // In batches, as `analyze` reads.
    let mut batch = Vec::with_capacity(READ_AHEAD_BATCH);
    let mut n = 0;
    loop {
        batch.clear();
        reader.read_into(&mut batch, READ_AHEAD_BATCH);
        if batch.is_empty() {
            break;
        }
        n += batch.len();
    }
    let s = reader.summary();
    if !s.complete {
        bail!("{} read incomplete after {n} records", path.display());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The fastest of `runs` runs; with `one_cpu`, each pinned to one CPU, the next of those
/// this process may use in turn (the CPUs of a virtual machine are not equally busy).
fn best_of(runs: u32, one_cpu: bool, args: &[&str]) -> Result<Measured> {
    let cpus = if one_cpu { allowed_cpus()? } else { Vec::new() };
    let mut best: Option<Measured> = None;
    for i in 0..runs.max(1) as usize {
        let m = measure_alone(cpus.get(i % cpus.len().max(1)).copied(), args)?;
        if best.is_none_or(|b| m.wall < b.wall) {
            best = Some(m);
        }
    }
    Ok(best.expect("at least one run"))
}

/// Runs in a fresh xtask: measures one command and prints `secs cpu_secs maxrss_kib`; with
/// `cpu`, on that CPU only (the command inherits the affinity).
pub fn measure_child(cpu: Option<usize>, args: &[String]) -> Result<()> {
    let Some((prog, rest)) = args.split_first() else {
        bail!("nothing to measure");
    };
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    let (secs, cpu, rss) = measure(Command::new(prog).args(rest))?;
    println!("{secs} {cpu} {rss}");
    Ok(())
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set lives across the call and its size is the one passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads inside the set it is given, for a CPU below its size.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        bail!("this process may run on no CPU");
    }
    Ok(cpus)
}

/// Restricts this process to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set; CPU_SET writes
    // inside the set it is given, for a CPU below its size (checked first).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} is past the largest set of CPUs");
    }
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set lives across the call and its size is the one passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn run(args: &BenchAnalyzeArgs) -> Result<()> {
    if !args.vramtrace.exists() {
        bail!(
            "{} does not exist: run `cargo build --release -p vramtrace` first",
            args.vramtrace.display()
        );
    }
    std::fs::create_dir_all(&args.dir)?;
    let jq = !args.no_jq
        && Command::new("jq")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    println!(
        "{:>10} {:>8} {:>8} {:>8} {:>11} {:>11} {:>8} {:>8} {:>11} {:>8} {:>9} {:>7} {:>8}",
        "events",
        "MiB",
        "analyze",
        "CPU",
        "events/s",
        "ev/CPU-s",
        "RSS MiB",
        "1 core",
        "ev/s 1 core",
        "read",
        "jq empty",
        "jq RSS",
        "speedup"
    );
    for &events in &args.events {
        // Named by version: a trace of an older format reads by that format's rules.
        let path = args.dir.join(format!(
            "trace-{events}-{FORMAT_MAJOR}.{FORMAT_MINOR}.jsonl"
        ));
        if !path.exists() {
            generate(&path, events).with_context(|| format!("writing {}", path.display()))?;
        }
        let mib = std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64;
        let p = path.to_string_lossy();
        let bin = args.vramtrace.to_string_lossy();
        let analyze = [&*bin, "analyze", "--json", &p];
        let a = best_of(args.runs, false, &analyze)?;
        let one = best_of(args.runs, true, &analyze)?;
        let mut read = f64::INFINITY;
        for _ in 0..args.runs.max(1) {
            read = read.min(read_only(&path)?);
        }
        let jq_cols = if jq {
            let j = best_of(args.runs, false, &["jq", "empty", &p])?;
            format!(
                "{:>8.2}s {:>7.1} {:>7.2}x",
                j.wall,
                j.rss_kib as f64 / 1024.0,
                j.wall / a.wall
            )
        } else {
            format!("{:>9} {:>7} {:>8}", "-", "-", "-")
        };
        println!(
            "{:>10} {:>8.1} {:>7.2}s {:>7.2}s {:>11.0} {:>11.0} {:>8.1} {:>7.2}s {:>11.0} {:>7.2}s {jq_cols}",
            events,
            mib,
            a.wall,
            a.cpu,
            events as f64 / a.wall,
            events as f64 / a.cpu,
            a.rss_kib as f64 / 1024.0,
            one.wall,
            events as f64 / one.wall,
            read,
        );
    }
    println!(
        "analyze and jq: the fastest of {} runs each; CPU is user + system time of that run \
         (its reader thread and its Ledger thread together), ev/CPU-s the events per CPU \
         second; 1 core: analyze again, each run pinned to one CPU, the next in turn (wall time; \
         on one CPU it reads and replays in turn on one thread); \
         read: the trace read (parsed, its digest checked) as analyze reads it, alone, on one \
         thread: analyze's 1-core time less this is the replay's",
        args.runs.max(1)
    );
    Ok(())
}
