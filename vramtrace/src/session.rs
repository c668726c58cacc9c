//! `vramtrace record`: attaches the probes, optionally starts the command to trace, and
//! streams every event through the converter into the trace file until the command exits,
//! the duration elapses, or the user interrupts.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    analyze::human_bytes,
    decode::{Converter, Environment},
    ledger::{Change, Class, Ledger},
    nvml::{self, Nvml, Poller},
    probe::{self, Counters, Tracer},
    procinfo,
    stacks::StackResolver,
    trace::{
        FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Frame, Header, NvmlInfo, NvmlSample, Process,
        Record, Scope, write::TraceWriter,
    },
};

/// What a host-memory allocation by a traced process is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// A finding: recorded and listed by `analyze`.
    #[default]
    Report,
    /// A violation: also printed as it happens and counted in the footer.
    VramOnly,
}

/// What `record` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct RecordOptions {
    /// The trace file; `None` records into the sink of [`record_with`] only.
    pub output: Option<PathBuf>,
    pub pids: Vec<u32>,
    pub libcuda: Vec<PathBuf>,
    pub duration: Option<Duration>,
    pub command: Vec<String>,
    pub stacks: bool,
    pub ring_bytes: u32,
    pub probe_at: probe::placement::ProbeAt,
    pub verbose: bool,
    /// Suppress the summary on stderr (the traced command owns the terminal).
    pub quiet: bool,
    /// How often to sample NVML; `None`: not at all.
    pub nvml_interval: Option<Duration>,
    /// Whether host-memory allocations are violations.
    pub policy: Policy,
    /// Signal the probes send to a thread that allocates host memory (0: none); only with
    /// [`Policy::VramOnly`].
    pub host_signal: u32,
}

/// One line on stderr for what the ledger decided that a user must see as it happens: a
/// violation, an out-of-memory failure.
fn change_line(ch: &Change, ledger: &Ledger, policy: Policy) -> Option<String> {
    let p = ledger.process(ch.proc()?)?;
    let (pid, comm) = (p.pid, p.comm());
    match ch {
        Change::HostFinding { finding: f, .. } => {
            if policy != Policy::VramOnly {
                return None;
            }
            let mut s = format!(
                "vramtrace: VIOLATION (vram-only): pid {pid} ({comm}) tid {} put {} in host RAM with {}",
                f.tid,
                human_bytes(f.bytes),
                f.api
            );
            if let Some(flags) = f.flags {
                s.push_str(&format!(" (flags {flags:#x})"));
            }
            if let Some(sig) = f.signalled {
                s.push_str(&format!("; signal {sig} sent to the thread"));
            }
            Some(s)
        }
        Change::Oom { oom, .. } => {
            let held = oom.device_bytes;
            let classes: Vec<String> = oom
                .live_by_class
                .iter()
                .filter(|(c, b)| **b > 0 && **c != Class::HostFallback)
                .map(|(c, b)| format!("{c} {}", human_bytes(*b)))
                .collect();
            Some(format!(
                "vramtrace: OOM in pid {pid} ({comm}): {} of {} failed on GPU {}; held {}{}",
                oom.api,
                oom.requested_bytes
                    .map_or_else(|| "? bytes".to_owned(), human_bytes),
                oom.device.map_or_else(|| "?".to_owned(), |d| d.to_string()),
                human_bytes(held),
                if classes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", classes.join(", "))
                }
            ))
        }
        _ => None,
    }
}

/// How a recording ended.
#[derive(Debug)]
pub struct RecordOutcome {
    /// Lines written between header and footer.
    pub records: u64,
    /// Events the kernel side could not deliver.
    pub lost_events: u64,
    /// The traced command's exit status, when one was started.
    pub command_status: Option<ExitStatus>,
    /// Processes seen.
    pub processes: u64,
}

/// The live [`Environment`]: `/proc`, the kernel's stack map and the symbolizer.
struct LiveEnv<'a> {
    tracer: &'a Tracer,
    resolver: &'a mut StackResolver,
}

impl Environment for LiveEnv<'_> {
    fn process(&mut self, pid: u32) -> Option<Process> {
        self.resolver.remember(pid);
        procinfo::read_process(pid).ok().map(|p| p.into_record(0))
    }
    fn stack(&mut self, stack_id: u32) -> Option<Vec<u64>> {
        self.tracer.stack(stack_id)
    }
    fn frames(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        self.resolver.resolve(pid, addrs)
    }
    fn exited(&mut self, pid: u32) {
        self.resolver.forget(pid);
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn uname() -> (String, String) {
    // SAFETY: utsname is plain bytes; uname fills it or fails, leaving zeros.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("?".into(), "?".into());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.nodename), field(&u.release))
}

/// Gives a trace written under sudo back to the user who ran sudo, so that analyzing it
/// needs no root.
fn hand_back_to_sudo_user(path: &Path) {
    let id = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    if let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID"))
        && let Err(err) = std::os::unix::fs::chown(path, Some(uid), Some(gid))
    {
        tracing::warn!("could not give {} to uid {uid}: {err}", path.display());
    }
}

/// NVML samples on their way from the poller thread into the trace.
struct NvmlFeed {
    rx: Option<mpsc::Receiver<NvmlSample>>,
    last: Option<NvmlSample>,
    lines_at_last: u64,
}

impl NvmlFeed {
    /// Writes the samples that arrived. A sample equal to the previous one apart from its
    /// time is left out when nothing else was written since: an idle GPU does not fill the
    /// trace, and every sample that could change a reconciliation is kept.
    fn drain(&mut self, writer: &mut Sinks) -> Result<()> {
        let Some(rx) = &self.rx else { return Ok(()) };
        while let Ok(sample) = rx.try_recv() {
            let same = self
                .last
                .as_ref()
                .is_some_and(|l| !nvml::changed(l, &sample));
            if same && writer.lines_written() == self.lines_at_last {
                continue;
            }
            writer.write(Record::Nvml(sample.clone()))?;
            self.lines_at_last = writer.lines_written();
            self.last = Some(sample);
        }
        Ok(())
    }
}

/// Initializes NVML and starts its poller, or says once why not. Tracing goes on either way.
fn start_nvml(interval: Option<Duration>, quiet: bool) -> (NvmlInfo, NvmlFeed, Option<Poller>) {
    let mut feed = NvmlFeed {
        rx: None,
        last: None,
        lines_at_last: 0,
    };
    let unavailable = |reason: String| NvmlInfo {
        available: false,
        reason: Some(reason),
        ..NvmlInfo::default()
    };
    let Some(interval) = interval else {
        return (
            unavailable("NVML sampling disabled (--no-nvml)".into()),
            feed,
            None,
        );
    };
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            if !quiet {
                eprintln!(
                    "vramtrace: NVML not available: {}; tracing without it",
                    e.reason
                );
            }
            return (e.info(), feed, None);
        }
    };
    let info = nvml.info();
    match Poller::spawn(nvml, interval, monotonic_ns) {
        Ok((poller, rx)) => {
            feed.rx = Some(rx);
            (info, feed, Some(poller))
        }
        Err(e) => (
            unavailable(format!("the NVML poller could not start: {e}")),
            feed,
            None,
        ),
    }
}

/// A live consumer of the recording (the `top` view).
pub struct LiveSink {
    /// Receives every batch of records as it is written, the header included.
    pub on_records: Box<dyn FnMut(Vec<Record>) + Send>,
    /// The recording stops when this fires or its sender is dropped.
    pub stop: tokio::sync::oneshot::Receiver<()>,
}

/// Runs a recording to its end.
pub async fn record(opts: RecordOptions) -> Result<RecordOutcome> {
    record_with(opts, None).await
}

/// Where recorded batches go: the trace file, a live sink, or both.
struct Sinks {
    writer: Option<TraceWriter>,
    live: Option<Box<dyn FnMut(Vec<Record>) + Send>>,
    batch: Vec<Record>,
    /// Records written, the header included, whether or not a file is written.
    lines: u64,
    /// Violations of the vram-only policy.
    violations: u64,
}

impl Sinks {
    fn write(&mut self, rec: Record) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.write(&rec)?;
        }
        self.lines += 1;
        if self.live.is_some() {
            self.batch.push(rec);
        }
        Ok(())
    }

    fn lines_written(&self) -> u64 {
        self.lines
    }

    fn count_violations(&mut self, n: u64) {
        self.violations += n;
        if let Some(w) = self.writer.as_mut() {
            w.count_violations(n);
        }
    }

    /// Flushes the file and hands the batch to the live sink.
    fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush()?;
        }
        if let Some(live) = self.live.as_mut()
            && !self.batch.is_empty()
        {
            live(std::mem::take(&mut self.batch));
        }
        Ok(())
    }
}

/// Runs a recording to its end, handing every batch of records to `live` as well.
pub async fn record_with(opts: RecordOptions, live: Option<LiveSink>) -> Result<RecordOutcome> {
    let (live, mut stop) = match live {
        Some(l) => (Some(l.on_records), Some(l.stop)),
        None => (None, None),
    };
    let libraries = if opts.libcuda.is_empty() {
        probe::libcuda::discover(&[], &opts.pids)
            .context("finding the CUDA driver library")?
            .into_iter()
            .map(|l| l.path)
            .collect()
    } else {
        for path in &opts.libcuda {
            if !path.exists() {
                bail!("--libcuda {}: no such file", path.display());
            }
        }
        opts.libcuda.clone()
    };
    let config = probe::Config {
        libraries,
        pids: opts.pids.clone(),
        follow_children_of_self: !opts.command.is_empty(),
        stacks: opts.stacks,
        ring_bytes: opts.ring_bytes,
        probe_at: opts.probe_at,
        host_signal: if opts.policy == Policy::VramOnly {
            opts.host_signal
        } else {
            0
        },
        ..probe::Config::default()
    };
    let mut tracer = Tracer::start(&config).context("starting the probes")?;
    if opts.verbose {
        for lib in &tracer.libraries {
            eprintln!("vramtrace: {} probes on {}", lib.probes.len(), lib.path);
            for p in &lib.probes {
                eprintln!(
                    "  {:<32} at {:#x}+{}",
                    p.symbol, p.symbol_offset, p.probe_offset
                );
            }
        }
    }

    let (nvml_info, mut nvml_feed, nvml_poller) = start_nvml(opts.nvml_interval, opts.quiet);
    let (host, kernel) = uname();
    let header = Header {
        format: FORMAT_NAME.into(),
        version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        host,
        kernel,
        libraries: tracer.libraries.clone(),
        start_unix_ns: unix_ns(),
        start_monotonic_ns: monotonic_ns(),
        scope: Scope {
            all: opts.pids.is_empty() && opts.command.is_empty(),
            pids: opts.pids.clone(),
            command: opts.command.clone(),
        },
        nvml: Some(nvml_info),
        policy: (opts.policy == Policy::VramOnly).then(|| "vram-only".to_owned()),
        extra: Default::default(),
    };
    let writer = match &opts.output {
        Some(path) => {
            let w = TraceWriter::create(path)
                .with_context(|| format!("creating the trace {}", path.display()))?;
            hand_back_to_sudo_user(path);
            Some(w)
        }
        None => None,
    };
    let output_name = opts
        .output
        .as_ref()
        .map_or_else(|| "no file".to_string(), |p| p.display().to_string());
    let mut writer = Sinks {
        writer,
        live,
        batch: Vec::new(),
        lines: 0,
        violations: 0,
    };
    writer.write(Record::Header(Box::new(header)))?;
    // On disk at once: the header says the probes are attached.
    writer.flush()?;

    let mut child = if opts.command.is_empty() {
        None
    } else {
        let mut cmd = tokio::process::Command::new(&opts.command[0]);
        cmd.args(&opts.command[1..]);
        Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", opts.command[0]))?,
        )
    };
    if !opts.quiet {
        match &child {
            Some(c) => eprintln!(
                "vramtrace: tracing {} (pid {}) into {}",
                opts.command.join(" "),
                c.id().unwrap_or(0),
                output_name
            ),
            None => eprintln!(
                "vramtrace: tracing {} into {}; Ctrl-C to stop",
                if opts.pids.is_empty() {
                    "every process".to_string()
                } else {
                    format!("PIDs {:?}", opts.pids)
                },
                output_name
            ),
        }
    }

    let mut converter = Converter::new(tracer.apis.clone());
    converter.set_host_signal(config.host_signal);
    // The same accounting as `analyze`, live: what it notices is printed as it happens.
    let mut ledger = Ledger::new();
    let policy = opts.policy;
    let quiet = opts.quiet;
    let mut resolver = StackResolver::new();
    let ring_fd = tracer.ring_fd().try_clone_to_owned()?;
    // SAFETY: `ring_fd` is an OwnedFd moved into the AsyncFd, which keeps it open and
    // unchanged for its whole life.
    let ring = unsafe { AsyncFd::register(ring_fd) }
        .map_err(std::io::Error::from)
        .context("watching the ring buffer")?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut raw = Vec::with_capacity(4096);
    let mut records = Vec::with_capacity(4096);
    let mut reported = Counters::default();
    let mut lost_total = 0u64;
    let mut stack_failed = 0u64;
    let mut command_status = None;
    let mut undecodable = 0u64;

    let mut pump = |tracer: &mut Tracer,
                    resolver: &mut StackResolver,
                    converter: &mut Converter,
                    writer: &mut Sinks,
                    reported: &mut Counters,
                    lost_total: &mut u64,
                    stack_failed: &mut u64|
     -> Result<()> {
        let bad = tracer.drain(&mut raw);
        if bad > 0 {
            tracing::warn!("{bad} ring buffer items could not be decoded");
        }
        undecodable += bad;
        let mut env = LiveEnv { tracer, resolver };
        for ev in raw.drain(..) {
            converter.convert(&ev, &mut env, &mut records);
            for rec in records.drain(..) {
                ledger.apply(&rec);
                for ch in ledger.changes() {
                    if policy == Policy::VramOnly && matches!(ch, Change::HostFinding { .. }) {
                        writer.count_violations(1);
                    }
                    if let Some(line) = change_line(ch, &ledger, policy)
                        && !quiet
                    {
                        eprintln!("{line}");
                    }
                }
                writer.write(rec)?;
            }
        }
        // What the probes counted, and what reached user space but could not become a record.
        let mut now = tracer.counters();
        now.unknown_api += converter.unknown_api;
        now.undecodable = undecodable;
        let lost = now.lost_since(reported, monotonic_ns());
        if lost.events() > 0 || lost.stack_failed > 0 {
            // A live view shows the loss itself; stderr would tear its screen.
            if lost.events() > 0 && writer.live.is_none() {
                let kinds: Vec<String> = lost
                    .kinds()
                    .filter(|&(_, n)| n > 0)
                    .map(|(kind, n)| format!("{kind}: {n}"))
                    .collect();
                eprintln!(
                    "vramtrace: {} events lost ({}){}",
                    lost.events(),
                    kinds.join(", "),
                    if lost.ringbuf_full > 0 {
                        "; enlarge --ring-size"
                    } else {
                        ""
                    }
                );
            }
            *lost_total += lost.events();
            *stack_failed += lost.stack_failed;
            writer.write(Record::Lost(lost))?;
            *reported = now;
        }
        nvml_feed.drain(writer)?;
        // What was recorded reaches the file within a tick: a recorder that is killed leaves
        // a trace readable up to that point.
        writer.flush()?;
        Ok(())
    };

    loop {
        tokio::select! {
            guard = ring.readable() => {
                let mut guard = guard?;
                guard.clear_ready();
            }
            _ = tick.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async {
                match stop.as_mut() {
                    Some(s) => { let _ = s.await; }
                    None => std::future::pending().await,
                }
            } => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            status = async {
                match child.as_mut() {
                    Some(c) => c.wait().await,
                    None => std::future::pending().await,
                }
            } => {
                command_status = Some(status.context("waiting for the traced command")?);
                child = None;
                // Everything the command did was submitted before it exited: take it all.
                pump(&mut tracer, &mut resolver, &mut converter, &mut writer, &mut reported, &mut lost_total, &mut stack_failed)?;
                break;
            }
        }
        pump(
            &mut tracer,
            &mut resolver,
            &mut converter,
            &mut writer,
            &mut reported,
            &mut lost_total,
            &mut stack_failed,
        )?;
    }
    pump(
        &mut tracer,
        &mut resolver,
        &mut converter,
        &mut writer,
        &mut reported,
        &mut lost_total,
        &mut stack_failed,
    )?;
    if let Some(mut c) = child {
        // Interrupted while the command still runs: it keeps running untraced, as the user
        // started it; say so.
        if let Some(pid) = c.id() {
            eprintln!("vramtrace: stopped tracing; pid {pid} continues untraced");
        }
        if let Ok(Some(status)) = c.try_wait() {
            command_status = Some(status);
        }
    }
    if let Some(p) = nvml_poller {
        p.stop();
    }
    let processes = converter.processes_seen();
    let lines = writer.lines_written();
    let violations = writer.violations;
    if let Some(w) = writer.writer.take() {
        w.finish(monotonic_ns(), lost_total, stack_failed)
            .context("finishing the trace")?;
    }
    if !opts.quiet {
        eprintln!(
            "vramtrace: {} records from {} processes written to {}{}{}",
            lines.saturating_sub(1),
            processes,
            output_name,
            if lost_total > 0 {
                format!("; {lost_total} events LOST")
            } else {
                "; no events lost".into()
            },
            if opts.policy == Policy::VramOnly {
                format!("; {violations} vram-only violations")
            } else {
                String::new()
            }
        );
    }
    Ok(RecordOutcome {
        records: lines.saturating_sub(1),
        lost_events: lost_total,
        command_status,
        processes,
    })
}
