//! `vramtrace record`: the [`Recorder`] attaches the probes, optionally starts the command to
//! trace, and streams every event through the converter into the trace file until the
//! command exits, the duration elapses, or the user interrupts.
//!
//! The path that drains the ring buffer converts events and normalizes stacks only; stacks
//! are symbolized on a thread of their own ([`SymbolWorker`]), and the records behind a
//! stack being symbolized wait in a backlog so that the trace keeps its order.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    analyze::human_bytes,
    decode::{Converter, Environment, RawEvent},
    ledger::{Change, Class, Ledger},
    nvml::{self, Nvml, Poller},
    probe::{self, Counters, Tracer},
    procinfo,
    stacks::python::{PyWatcher, PythonStacks},
    stacks::unwind::{CopyUnwinder, Unwound},
    stacks::{Job, MappedFile, Normalized, StackNormalizer, SymbolWorker},
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
    /// Overwrite `output` if it exists; otherwise an existing file is refused, before
    /// anything is attached.
    pub force: bool,
    pub pids: Vec<u32>,
    pub libcuda: Vec<PathBuf>,
    pub duration: Option<Duration>,
    pub command: Vec<String>,
    pub stacks: crate::probe::StackMode,
    /// Stop each new process at its first driver call until it has been read (`--hold-new`).
    pub hold_new: bool,
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

/// The live [`Environment`]: `/proc`, the kernel's stack map and the normalizer. It only
/// normalizes; the files behind the frames of the last stack it normalized wait in
/// `files` for the symbolizer.
struct LiveEnv<'a> {
    tracer: &'a Tracer,
    normalizer: &'a mut StackNormalizer,
    unwinder: &'a mut CopyUnwinder,
    python: Option<&'a PyWatcher>,
    early: &'a mut HashMap<u32, Process>,
    files: Vec<Option<MappedFile>>,
}

impl Environment for LiveEnv<'_> {
    fn process(&mut self, pid: u32) -> Option<Process> {
        if let Some(w) = self.python {
            w.watch(pid);
        }
        if let Some(p) = self.early.remove(&pid) {
            return Some(p);
        }
        self.normalizer.remember(pid);
        self.unwinder.learn(pid);
        procinfo::read_process(pid).ok().map(|p| p.into_record(0))
    }
    fn stack(&mut self, stack_id: u32) -> Option<Vec<u64>> {
        self.tracer.stack(stack_id)
    }
    fn unwound(&mut self, tid: u32, ts_entry_ns: u64) -> Option<Unwound> {
        self.unwinder.take(tid, ts_entry_ns)
    }
    fn frames(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let n = self.normalizer.normalize(pid, addrs);
        self.files = n.files;
        n.frames
    }
    fn exited(&mut self, pid: u32) {
        self.normalizer.forget(pid);
        self.unwinder.forget(pid);
        if let Some(w) = self.python {
            w.forget(pid);
        }
    }
}

/// Lets a process stopped at its first driver call go on.
fn resume(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory preconditions; a process that is gone yields ESRCH.
    if unsafe { libc::kill(pid, libc::SIGCONT) } != 0 {
        tracing::debug!("SIGCONT to {pid}: {}", std::io::Error::last_os_error());
    }
}

/// Reads what `/proc` says about a process seen for the first time (its command line, and
/// its mappings for the normalizer, from the unwinder's read), before its first event.
fn early_sight(
    pid: u32,
    unwinder: &CopyUnwinder,
    normalizer: &mut StackNormalizer,
    early: &mut HashMap<u32, Process>,
) {
    if let Some(maps) = unwinder.maps(pid) {
        normalizer.remember_maps(pid, maps.to_vec());
    }
    if let Ok(p) = procinfo::read_process(pid) {
        early.insert(pid, p.into_record(0));
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
    /// The samples that arrived and are worth writing, given that `emitted` records were
    /// emitted so far. A sample equal to the previous one apart from its time is left out
    /// when nothing else was emitted since: an idle GPU does not fill the trace, and every
    /// sample that could change a reconciliation is kept.
    fn take(&mut self, mut emitted: u64) -> Vec<NvmlSample> {
        let mut out = Vec::new();
        let Some(rx) = &self.rx else { return out };
        while let Ok(sample) = rx.try_recv() {
            let same = self
                .last
                .as_ref()
                .is_some_and(|l| !nvml::changed(l, &sample));
            if same && emitted == self.lines_at_last {
                continue;
            }
            emitted += 1;
            self.lines_at_last = emitted;
            self.last = Some(sample.clone());
            out.push(sample);
        }
        out
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
                crate::say!(
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

/// Records in trace order on their way to the sinks, held back behind a `stack` record
/// whose frames are being symbolized, so that the trace keeps its order (a stack before the
/// first call that refers to it) while the ring buffer goes on being drained.
#[derive(Debug, Default)]
struct Backlog {
    queue: VecDeque<Record>,
    /// Stack ids being symbolized → their frames once done.
    waiting: HashMap<u32, Option<Vec<Frame>>>,
}

impl Backlog {
    fn push(&mut self, rec: Record) {
        self.queue.push_back(rec);
    }

    /// The stack `id`, pushed already, waits for its symbols.
    fn hold(&mut self, id: u32) {
        self.waiting.insert(id, None);
    }

    /// The symbolized frames of stack `id`.
    fn symbolized(&mut self, id: u32, frames: Vec<Frame>) {
        if let Some(slot) = self.waiting.get_mut(&id) {
            *slot = Some(frames);
        }
    }

    /// The next record that can be written: the front, unless it is a stack still waiting
    /// for its symbols.
    fn pop_ready(&mut self) -> Option<Record> {
        if let Some(Record::Stack(s)) = self.queue.front()
            && self.waiting.get(&s.id).is_some_and(Option::is_none)
        {
            return None;
        }
        let mut rec = self.queue.pop_front()?;
        if let Record::Stack(s) = &mut rec
            && let Some(Some(frames)) = self.waiting.remove(&s.id)
        {
            s.frames = frames;
        }
        Some(rec)
    }

    /// Stops waiting: the stacks still held go out as they are (normalized, not named).
    fn release_all(&mut self) {
        self.waiting.retain(|_, frames| frames.is_some());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

/// Time spent on the path that drains the ring buffer, for `--verbose` and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Ring-buffer items taken.
    pub events: u64,
    /// Nanoseconds spent taking, converting (normalizing stacks included) and accounting
    /// them.
    pub ns: u64,
}

impl DrainStats {
    /// Mean microseconds per event.
    pub fn us_per_event(&self) -> f64 {
        if self.events == 0 {
            0.0
        } else {
            self.ns as f64 / self.events as f64 / 1e3
        }
    }
}

/// A recording: the attached probes, the converter, the stack normalizer and its symbolizer
/// thread, the NVML feed and the sinks. [`attach`](Self::attach) starts it,
/// [`pump`](Self::pump) moves what arrived into the trace, [`finish`](Self::finish) seals it;
/// [`record_with`] drives them from the ring buffer, a tick, signals and the traced command.
pub struct Recorder {
    tracer: Tracer,
    converter: Converter,
    normalizer: StackNormalizer,
    unwinder: CopyUnwinder,
    /// Finds CPython interpreters in traced processes (`--stacks dwarf`).
    python: Option<PyWatcher>,
    /// Processes read when their first stack copy arrived, before their first event.
    early: HashMap<u32, Process>,
    symbols: SymbolWorker,
    /// The same accounting as `analyze`, live, for what must be printed or counted as it
    /// happens (OOMs, vram-only violations); `None` when nothing reads it (the live view
    /// runs the one Ledger of its own).
    ledger: Option<Ledger>,
    sinks: Sinks,
    backlog: Backlog,
    nvml_feed: NvmlFeed,
    nvml_poller: Option<Poller>,
    policy: Policy,
    quiet: bool,
    verbose: bool,
    output_name: String,
    raw: Vec<RawEvent>,
    converted: Vec<Record>,
    /// Records emitted so far (the header included), written or still in the backlog.
    emitted: u64,
    reported: Counters,
    lost_total: u64,
    stack_failed: u64,
    undecodable: u64,
    drain: DrainStats,
}

/// What [`Recorder::finish`] leaves.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    /// Lines written between header and footer.
    pub records: u64,
    pub lost_events: u64,
    pub processes: u64,
    pub drain: DrainStats,
}

impl Recorder {
    /// Finds the driver libraries, attaches the probes, starts NVML and writes the header:
    /// from here on every call is recorded.
    pub fn attach(
        opts: &RecordOptions,
        live: Option<Box<dyn FnMut(Vec<Record>) + Send>>,
    ) -> Result<Self> {
        if let Some(path) = &opts.output
            && !opts.force
            && path.exists()
        {
            bail!(
                "{} exists: pass --force to overwrite it, or choose another -o",
                path.display()
            );
        }
        // Held until the probes are attached: a copy found inside a process's root is
        // attached through the descriptor it was opened with.
        let mut found = Vec::new();
        let libraries = if opts.libcuda.is_empty() {
            found = probe::libcuda::discover(&[], &opts.pids)
                .context("finding the CUDA driver library")?;
            found.iter().map(|l| l.path.clone()).collect()
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
            hold_new: opts.hold_new,
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
        // The header names each copy as the traced process does, not by the `/proc` link
        // it was attached through.
        for lib in &mut tracer.libraries {
            if let Some(f) = found
                .iter()
                .find(|f| f.path.display().to_string() == lib.path)
            {
                lib.path.clone_from(&f.shown);
            }
        }
        drop(found);
        let python = if opts.stacks == crate::probe::StackMode::Dwarf {
            let map = tracer.take_python_map().context("the CPython layout map")?;
            let w = PyWatcher::spawn(map).context("starting the CPython watcher thread")?;
            for &pid in &opts.pids {
                w.watch(pid);
            }
            Some(w)
        } else {
            None
        };
        if opts.verbose {
            for lib in &tracer.libraries {
                crate::say!("vramtrace: {} probes on {}", lib.probes.len(), lib.path);
                for p in &lib.probes {
                    crate::say!(
                        "  {:<32} at {:#x}+{}",
                        p.symbol,
                        p.symbol_offset,
                        p.probe_offset
                    );
                }
            }
        }

        let (nvml_info, nvml_feed, nvml_poller) = start_nvml(opts.nvml_interval, opts.quiet);
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
        let mut sinks = Sinks {
            writer,
            live,
            batch: Vec::new(),
            lines: 0,
            violations: 0,
        };
        sinks.write(Record::Header(Box::new(header)))?;
        // On disk at once: the header says the probes are attached.
        sinks.flush()?;

        let mut converter = Converter::new(tracer.apis.clone());
        converter.set_host_signal(config.host_signal);
        Ok(Self {
            tracer,
            converter,
            normalizer: StackNormalizer::new(),
            unwinder: {
                let mut u = CopyUnwinder::new();
                if let Some(w) = &python {
                    u.python = PythonStacks::new(w.registry());
                }
                u
            },
            python,
            early: HashMap::new(),
            symbols: SymbolWorker::spawn().context("starting the symbolizer thread")?,
            ledger: (!opts.quiet || opts.policy == Policy::VramOnly).then(Ledger::new),
            sinks,
            backlog: Backlog::default(),
            nvml_feed,
            nvml_poller,
            policy: opts.policy,
            quiet: opts.quiet,
            verbose: opts.verbose,
            output_name,
            raw: Vec::with_capacity(4096),
            converted: Vec::with_capacity(4096),
            emitted: 1,
            reported: Counters::default(),
            lost_total: 0,
            stack_failed: 0,
            undecodable: 0,
            drain: DrainStats::default(),
        })
    }

    /// Starts the command to trace (the probes already follow this process's children) and
    /// says what is being traced.
    pub fn spawn(&self, opts: &RecordOptions) -> Result<Option<tokio::process::Child>> {
        let child = if opts.command.is_empty() {
            None
        } else {
            let mut cmd = tokio::process::Command::new(&opts.command[0]);
            cmd.args(&opts.command[1..]);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", opts.command[0]))?;
            // Looked at from its start: a shared libpython is mapped before the program's
            // first line, so its first call already has its Python frames.
            if let (Some(w), Some(pid)) = (&self.python, child.id()) {
                w.watch(pid);
            }
            Some(child)
        };
        if !self.quiet {
            match &child {
                Some(c) => crate::say!(
                    "vramtrace: tracing {} (pid {}) into {}",
                    opts.command.join(" "),
                    c.id().unwrap_or(0),
                    self.output_name
                ),
                None if opts.pids.is_empty() => crate::say!(
                    "vramtrace: tracing every process into {}; Ctrl-C to stop",
                    self.output_name
                ),
                None => crate::say!(
                    "vramtrace: tracing PIDs {:?} and their children into {} until they exit \
                     (Ctrl-C to stop); attached while they run: what they allocated before now \
                     is not in the trace",
                    opts.pids,
                    self.output_name
                ),
            }
        }
        Ok(child)
    }

    /// The ring buffer's descriptor, to wait on.
    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.tracer.ring_fd()
    }

    /// Moves everything that arrived into the trace: the ring buffer's events, the stacks
    /// symbolized since, the losses counted, the NVML samples; then flushes, so that what was
    /// recorded reaches the file within a tick (a recorder that is killed leaves a trace
    /// readable up to that point).
    pub fn pump(&mut self) -> Result<()> {
        self.drain();
        while let Some(job) = self.symbols.try_done() {
            self.backlog.symbolized(job.id, job.stack.frames);
        }
        if self.symbols.outstanding() == 0 {
            // Nothing is being symbolized: a stack still held would wait forever (the
            // thread died); it goes out as normalized.
            self.backlog.release_all();
        }
        self.account_losses();
        for sample in self.nvml_feed.take(self.emitted) {
            self.emit(Record::Nvml(sample));
        }
        self.release()?;
        self.sinks.flush()
    }

    /// The path that drains the ring buffer: events become records, stacks are normalized
    /// (never symbolized: a stack that needs symbols goes to the symbolizer thread), the
    /// ledger notes what must be said at once.
    fn drain(&mut self) {
        let started = std::time::Instant::now();
        let (unwinder, normalizer, early) =
            (&mut self.unwinder, &mut self.normalizer, &mut self.early);
        let bad = self.tracer.drain(&mut self.raw, &mut |sample| {
            let new = !unwinder.knows(sample.pid);
            unwinder.add(sample);
            if new {
                // The first copy of a process wakes this reader at once: what the process
                // is and what it maps are read now, while it most likely still runs.
                early_sight(sample.pid, unwinder, normalizer, early);
            }
        });
        if bad > 0 {
            tracing::warn!("{bad} ring buffer items could not be decoded");
        }
        self.undecodable += bad;
        self.drain.events += self.raw.len() as u64 + bad;
        for ev in &self.raw {
            if let RawEvent::Hold(h) = ev {
                // Stopped at its first driver call: read it, then let it go on.
                if let Some(w) = &self.python {
                    // Its interpreter is known to the probes before its first stack.
                    w.look_now(h.pid);
                }
                self.unwinder.learn(h.pid);
                early_sight(h.pid, &self.unwinder, &mut self.normalizer, &mut self.early);
                resume(h.pid);
            }
        }
        let mut env = LiveEnv {
            tracer: &self.tracer,
            normalizer: &mut self.normalizer,
            unwinder: &mut self.unwinder,
            python: self.python.as_ref(),
            early: &mut self.early,
            files: Vec::new(),
        };
        let mut raw = std::mem::take(&mut self.raw);
        for ev in raw.drain(..) {
            self.converter.convert(&ev, &mut env, &mut self.converted);
            for rec in self.converted.drain(..) {
                if let Some(ledger) = self.ledger.as_mut() {
                    ledger.apply(&rec);
                    for ch in ledger.changes() {
                        if self.policy == Policy::VramOnly
                            && matches!(ch, Change::HostFinding { .. })
                        {
                            self.sinks.count_violations(1);
                        }
                        if let Some(line) = change_line(ch, ledger, self.policy)
                            && !self.quiet
                        {
                            crate::say!("{line}");
                        }
                    }
                }
                if let Record::Stack(s) = &rec {
                    // The files are those of the native frames: Python frames have none.
                    let mut native = std::mem::take(&mut env.files).into_iter();
                    let stack = Normalized {
                        frames: s.frames.clone(),
                        files: s
                            .frames
                            .iter()
                            .map(|f| {
                                if f.python {
                                    None
                                } else {
                                    native.next().flatten()
                                }
                            })
                            .collect(),
                    };
                    if stack.needs_symbols() && self.symbols.submit(Job { id: s.id, stack }) {
                        self.backlog.hold(s.id);
                    }
                }
                self.backlog.push(rec);
                self.emitted += 1;
            }
        }
        self.raw = raw;
        self.drain.ns += started.elapsed().as_nanos() as u64;
    }

    /// Queues a record that does not come from the ring buffer.
    fn emit(&mut self, rec: Record) {
        self.backlog.push(rec);
        self.emitted += 1;
    }

    /// Writes what the backlog can give.
    fn release(&mut self) -> Result<()> {
        while let Some(rec) = self.backlog.pop_ready() {
            self.sinks.write(rec)?;
        }
        Ok(())
    }

    /// What the probes counted, and what reached user space but could not become a record:
    /// a `lost` record, and a line on stderr.
    fn account_losses(&mut self) {
        let mut now = self.tracer.counters();
        now.unknown_api += self.converter.unknown_api;
        now.undecodable = self.undecodable;
        let lost = now.lost_since(&self.reported, monotonic_ns());
        if lost.events() == 0 && lost.stack_failed == 0 {
            return;
        }
        // A live view shows the loss itself; stderr would tear its screen.
        if lost.events() > 0 && self.sinks.live.is_none() {
            let kinds: Vec<String> = lost
                .kinds()
                .filter(|&(_, n)| n > 0)
                .map(|(kind, n)| format!("{kind}: {n}"))
                .collect();
            crate::say!(
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
        self.lost_total += lost.events();
        self.stack_failed += lost.stack_failed;
        self.emit(Record::Lost(lost));
        self.reported = now;
    }

    /// Time spent on the path that drains the ring buffer so far.
    pub fn drain_stats(&self) -> DrainStats {
        self.drain
    }

    /// The traced command exited and this process reaped it: its exit is recorded even
    /// when the ring buffer lost the event (the converter ignores an exit it already saw).
    /// What the ring still holds goes first.
    pub fn reaped(&mut self, pid: u32) -> Result<()> {
        self.pump()?;
        self.raw.push(RawEvent::Exit(vramtrace_common::ExitEvent {
            kind: vramtrace_common::EVENT_EXIT,
            pid,
            tid: pid,
            _pad: 0,
            ts_ns: monotonic_ns(),
        }));
        self.pump()
    }

    /// What the footer says of how the recording stopped: why, and which traced processes
    /// were still running then (they go on untraced).
    pub fn stopped(&mut self, why: &str) {
        let running = self.converter.running();
        if let Some(w) = self.sinks.writer.as_mut() {
            w.stopped(why, running);
        }
    }

    /// Takes what is left, waits for the stacks still being symbolized, writes the footer
    /// and says what was recorded.
    pub fn finish(mut self) -> Result<Finished> {
        self.pump()?;
        if let Some(p) = self.nvml_poller.take() {
            p.stop();
        }
        while let Some(job) = self.symbols.wait_done() {
            self.backlog.symbolized(job.id, job.stack.frames);
        }
        self.backlog.release_all();
        self.release()?;
        self.sinks.flush()?;
        let processes = self.converter.processes_seen();
        let lines = self.sinks.lines;
        let violations = self.sinks.violations;
        if let Some(w) = self.sinks.writer.take() {
            w.finish(monotonic_ns(), self.lost_total, self.stack_failed)
                .context("finishing the trace")?;
        }
        if self.verbose {
            crate::say!(
                "vramtrace: drain path: {} events, {:.1} µs per event",
                self.drain.events,
                self.drain.us_per_event()
            );
        }
        if !self.quiet {
            crate::say!(
                "vramtrace: {} records from {} process{} written to {}{}{}",
                lines.saturating_sub(1),
                processes,
                if processes == 1 { "" } else { "es" },
                self.output_name,
                if self.lost_total > 0 {
                    format!("; {} events LOST", self.lost_total)
                } else {
                    "; no events lost".into()
                },
                if self.policy == Policy::VramOnly {
                    format!("; {violations} vram-only violations")
                } else {
                    String::new()
                }
            );
        }
        Ok(Finished {
            records: lines.saturating_sub(1),
            lost_events: self.lost_total,
            processes,
            drain: self.drain,
        })
    }
}

/// A live consumer of the recording (the `top` view).
pub struct LiveSink {
    /// Receives every batch of records as it is written, the header included.
    pub on_records: Box<dyn FnMut(Vec<Record>) + Send>,
    /// The recording stops when this fires or its sender is dropped.
    pub stop: tokio::sync::oneshot::Receiver<()>,
}

/// Whether process `pid` still runs (a zombie has ended: its memory is gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command, which is in parentheses and may hold anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// How long a signal that stops the recording waits for the traced command to end too.
const CHILD_GRACE: Duration = Duration::from_millis(1500);

/// How long, after the command was ended by SIGINT or SIGTERM, the recording waits for the
/// same signal to reach vramtrace (sent to the process group), before it says that the
/// command's end stopped it.
const SIGNAL_LAG: Duration = Duration::from_millis(500);

/// Runs a recording to its end, handing every batch of records to `live` as well: pumps on
/// every wake-up of the ring buffer and every 100 ms, until the command exits, the duration
/// elapses, a signal arrives or the live sink hangs up.
pub async fn record_with(opts: RecordOptions, live: Option<LiveSink>) -> Result<RecordOutcome> {
    let (live, mut stop) = match live {
        Some(l) => (Some(l.on_records), Some(l.stop)),
        None => (None, None),
    };
    let mut recorder = Recorder::attach(&opts, live)?;
    let mut child = recorder.spawn(&opts)?;
    let ring_fd = recorder.ring_fd().try_clone_to_owned()?;
    // SAFETY: `ring_fd` is an OwnedFd moved into the AsyncFd, which keeps it open and
    // unchanged for its whole life.
    let ring = unsafe { AsyncFd::register(ring_fd) }
        .map_err(std::io::Error::from)
        .context("watching the ring buffer")?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut command_status = None;
    let child_pid = child.as_ref().and_then(tokio::process::Child::id);

    let why = loop {
        // Biased, signals first: Ctrl-C ends the command too, and when both are ready the
        // recording was stopped by the signal, not by the command's end.
        let why = tokio::select! {
            biased;
            _ = sigint.recv() => Some("SIGINT"),
            _ = sigterm.recv() => Some("SIGTERM"),
            guard = ring.readable() => {
                let mut guard = guard?;
                guard.clear_ready();
                None
            }
            _ = tick.tick() => {
                // `-p PID...`: the recording ends when every process it was given has exited.
                (!opts.pids.is_empty()
                    && opts.command.is_empty()
                    && opts.pids.iter().all(|&pid| !process_alive(pid)))
                .then_some("traced processes exited")
            }
            _ = async {
                match stop.as_mut() {
                    Some(s) => { let _ = s.await; }
                    None => std::future::pending().await,
                }
            } => Some("live view closed"),
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => Some("duration"),
            status = async {
                match child.as_mut() {
                    Some(c) => c.wait().await,
                    None => std::future::pending().await,
                }
            } => {
                command_status = Some(status.context("waiting for the traced command")?);
                child = None;
                // Everything the command did was submitted before it exited: take it all.
                Some("command exited")
            }
        };
        if let Some(why) = why {
            break why;
        }
        recorder.pump()?;
    };
    // A signal to the whole process group (Ctrl-C, `kill -- -PGID`) ends the command and
    // reaches vramtrace too, but its handler may run on another of our threads a moment after
    // the command's end is seen: wait a little for it, so that the trace says the recording
    // was stopped by the signal whichever was seen first.
    let why = match command_status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)) {
        Some(libc::SIGINT | libc::SIGTERM) if why == "command exited" => {
            tokio::select! {
                biased;
                _ = sigint.recv() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
                _ = tokio::time::sleep(SIGNAL_LAG) => why,
            }
        }
        _ => why,
    };
    if let Some(c) = child.as_mut()
        && matches!(why, "SIGINT" | "SIGTERM")
    {
        // Ctrl-C in a terminal reaches the command too: give it a moment to end, so that
        // its end is recorded and its status passed on, rather than said to go on.
        if let Ok(status) = tokio::time::timeout(CHILD_GRACE, c.wait()).await {
            command_status = Some(status.context("waiting for the traced command")?);
            child = None;
        }
    }
    recorder.pump()?;
    if let Some(mut c) = child {
        if let Ok(Some(status)) = c.try_wait() {
            command_status = Some(status);
        } else if let Some(pid) = c.id() {
            // Interrupted while the command still runs: it keeps running untraced, as the
            // user started it; say so, here and in the trace's footer.
            crate::say!("vramtrace: stopped tracing; pid {pid} continues untraced");
        }
    }
    if command_status.is_some()
        && let Some(pid) = child_pid
    {
        recorder.reaped(pid)?;
    }
    recorder.stopped(why);
    let done = recorder.finish()?;
    Ok(RecordOutcome {
        records: done.records,
        lost_events: done.lost_events,
        command_status,
        processes: done.processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Call, Exit, Stack};

    fn stack(id: u32, sym: Option<&str>) -> Record {
        Record::Stack(Stack {
            id,
            frames: vec![Frame {
                addr: 0x1000,
                file: Some("/bin/app".into()),
                offset: Some(0x10),
                sym: sym.map(str::to_owned),
                ..Frame::default()
            }],
            truncated: None,
        })
    }

    fn call(stack: u32) -> Record {
        Record::Alloc(Call {
            api: "cuMemAlloc_v2".into(),
            stack: Some(stack),
            ..Call::default()
        })
    }

    fn exit() -> Record {
        Record::Exit(Exit {
            proc: 1,
            pid: 1,
            ts_ns: 1,
        })
    }

    fn drain(b: &mut Backlog) -> Vec<Record> {
        std::iter::from_fn(|| b.pop_ready()).collect()
    }

    #[test]
    fn the_backlog_holds_records_behind_a_stack_being_symbolized() {
        let mut b = Backlog::default();
        b.push(stack(1, None));
        b.push(call(1));
        assert_eq!(drain(&mut b), [stack(1, None), call(1)]);

        b.push(stack(2, None));
        b.hold(2);
        b.push(call(2));
        b.push(exit());
        assert_eq!(drain(&mut b), []);
        assert_eq!(b.len(), 3);
        // A result for a stack that is not held changes nothing.
        b.symbolized(9, Vec::new());
        assert_eq!(drain(&mut b), []);
        let Record::Stack(done) = stack(2, Some("train_step")) else {
            unreachable!()
        };
        b.symbolized(2, done.frames);
        assert_eq!(
            drain(&mut b),
            [stack(2, Some("train_step")), call(2), exit()]
        );
        assert!(b.waiting.is_empty());
    }

    #[test]
    fn a_stack_that_never_comes_back_goes_out_as_normalized() {
        let mut b = Backlog::default();
        b.push(stack(1, None));
        b.hold(1);
        b.push(call(1));
        assert_eq!(drain(&mut b), []);
        b.release_all();
        assert_eq!(drain(&mut b), [stack(1, None), call(1)]);
    }

    #[test]
    fn stacks_come_back_in_trace_order_whatever_order_they_finish() {
        let mut b = Backlog::default();
        for id in [1, 2] {
            b.push(stack(id, None));
            b.hold(id);
            b.push(call(id));
        }
        let Record::Stack(named) = stack(0, Some("f")) else {
            unreachable!()
        };
        b.symbolized(2, named.frames.clone());
        assert_eq!(drain(&mut b), []);
        b.symbolized(1, named.frames);
        assert_eq!(
            drain(&mut b),
            [stack(1, Some("f")), call(1), stack(2, Some("f")), call(2)]
        );
    }

    #[test]
    fn nvml_samples_repeat_only_after_other_records() {
        let (tx, rx) = mpsc::channel();
        let mut feed = NvmlFeed {
            rx: Some(rx),
            last: None,
            lines_at_last: 0,
        };
        let sample = |ts_ns| NvmlSample {
            ts_ns,
            ..NvmlSample::default()
        };
        for ts in [1, 2, 3] {
            tx.send(sample(ts)).expect("send");
        }
        // The first is new; the next two say the same with nothing written between.
        assert_eq!(feed.take(5).len(), 1);
        tx.send(sample(4)).expect("send");
        assert_eq!(feed.take(6).len(), 0);
        tx.send(sample(5)).expect("send");
        assert_eq!(feed.take(7).len(), 1);
    }

    #[test]
    fn drain_stats_are_per_event() {
        let d = DrainStats {
            events: 4,
            ns: 10_000,
        };
        assert_eq!(d.us_per_event(), 2.5);
        assert_eq!(DrainStats::default().us_per_event(), 0.0);
    }
}
