//! `vramtrace record`: attaches the probes, optionally starts the command to trace, and
//! streams every event through the converter into the trace file until the command exits,
//! the duration elapses, or the user interrupts.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    decode::{Converter, Environment},
    probe::{self, Counters, Tracer},
    procinfo,
    stacks::StackResolver,
    trace::{
        FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Frame, Header, Process, Record, Scope,
        write::TraceWriter,
    },
};

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
}

impl Sinks {
    fn write(&mut self, rec: Record) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.write(&rec)?;
        }
        if self.live.is_some() {
            self.batch.push(rec);
        }
        Ok(())
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
        nvml: None,
        policy: None,
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
    };
    writer.write(Record::Header(header))?;
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
        let mut env = LiveEnv { tracer, resolver };
        for ev in raw.drain(..) {
            converter.convert(&ev, &mut env, &mut records);
            for rec in records.drain(..) {
                writer.write(rec)?;
            }
        }
        let now = tracer.counters();
        let lost = now.lost_since(reported, monotonic_ns());
        if lost.events() > 0 || lost.stack_failed > 0 {
            // A live view shows the loss itself; stderr would tear its screen.
            if lost.events() > 0 && writer.live.is_none() {
                eprintln!(
                    "vramtrace: {} events lost (ring buffer full: {}, in-flight map full: {}, exits: {}); enlarge --ring-size",
                    lost.events(),
                    lost.ringbuf_full,
                    lost.entry_map_full,
                    lost.exit_dropped
                );
            }
            *lost_total += lost.events();
            *stack_failed += lost.stack_failed;
            writer.write(Record::Lost(lost))?;
            *reported = now;
        }
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
    let processes = converter.processes_seen();
    let lines = match writer.writer.take() {
        Some(w) => {
            let lines = w.lines_written();
            w.finish(monotonic_ns(), lost_total, stack_failed)
                .context("finishing the trace")?;
            lines
        }
        None => 0,
    };
    if !opts.quiet {
        eprintln!(
            "vramtrace: {} records from {} processes written to {}{}",
            lines.saturating_sub(1),
            processes,
            output_name,
            if lost_total > 0 {
                format!("; {lost_total} events LOST")
            } else {
                "; no events lost".into()
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
