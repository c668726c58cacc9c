//! `vramtrace analyze` with filters: which processes, which GPU, which time window, how many
//! stacks. The whole trace is always replayed (a window needs what was allocated before it);
//! the filters choose what the report shows. A moment ([`Filters::at`]) is the exception: the
//! replay stops applying records there, and the report is the state at that moment.

use std::io::{BufReader, IsTerminal as _, Read};
use std::path::Path;

use std::collections::{BTreeMap, BTreeSet};

use super::window::Window;
use super::{AppliedFilters, ReadStatus, Report, postmortem::Collector};
use crate::ledger::{ClassBytes, Ledger, Step};
use crate::trace::read::{ReadError, TraceReader, decompressed, open_file};

/// A moment in a recording.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Moment {
    /// Seconds after the start of the recording (the header's `start_monotonic_ns`).
    AfterStart(f64),
    /// A CLOCK_MONOTONIC time in nanoseconds, the clock of the records' `ts_ns` (Python's
    /// `time.monotonic_ns()` in a traced program).
    Monotonic(u64),
}

impl Moment {
    /// The moment on the records' clock, for a recording that started at `start_ns`.
    pub fn ts_ns(self, start_ns: u64) -> u64 {
        match self {
            Moment::AfterStart(s) => start_ns.saturating_add(secs_to_ns(s)),
            Moment::Monotonic(ns) => ns,
        }
    }
}

/// What the report shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Filters {
    /// Only these PIDs (empty: all).
    pub pids: Vec<u32>,
    /// Only this device ordinal.
    pub gpu: Option<i32>,
    /// Seconds after the start of the recording.
    pub from_s: Option<f64>,
    /// Seconds after the start of the recording.
    pub to_s: Option<f64>,
    /// The state at this moment instead of at the end of the recording.
    pub at: Option<Moment>,
    /// Stacks and allocations listed per finding.
    pub top: usize,
    /// A progress bar on stderr, when stderr is a terminal.
    pub progress: bool,
}

impl Default for Filters {
    fn default() -> Self {
        Filters {
            pids: Vec::new(),
            gpu: None,
            from_s: None,
            to_s: None,
            at: None,
            top: 10,
            progress: false,
        }
    }
}

/// Counts the bytes read into a progress bar.
struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} reading trace {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Reads a trace file (gzip-compressed or not), streaming, and reports what `filters` select.
pub fn analyze_file_with(path: &Path, filters: &Filters) -> Result<Report, ReadError> {
    let (file, len) = open_file(path)?;
    // The bar counts the bytes on disk, compressed or not: those are the ones whose total
    // is known (not for a pipe).
    let len = len.unwrap_or(0);
    // Only long reads get a bar: a short one would flash.
    let bar = (filters.progress && std::io::stderr().is_terminal() && len > (64 << 20))
        .then(|| progress_bar(len));
    let input: Box<dyn Read + Send> = match &bar {
        Some(b) => Box::new(Progress {
            inner: file,
            bar: b.clone(),
        }),
        None => file,
    };
    let input = decompressed(input).map_err(|source| ReadError::Open {
        path: path.to_owned(),
        source,
    })?;
    let reader = TraceReader::new(BufReader::with_capacity(1 << 20, input))?;
    let start = reader.header().start_monotonic_ns;
    let at_ns = filters.at.map(|m| m.ts_ns(start));
    let from_ns = filters.from_s.map(|s| Moment::AfterStart(s).ts_ns(start));
    let to_ns = filters.to_s.map(|s| Moment::AfterStart(s).ts_ns(start));
    // The end of a window is a moment: what is held "at exit" is held there.
    let cutoff = at_ns.or(to_ns);
    let mut replay = crate::ledger::Replay::new(reader).until(cutoff);
    let mut post = Collector::new(filters.top);
    let mut window = Window::new(from_ns);
    replay.run_read_ahead_around(|step, ledger, rec| match step {
        Step::Before => window.before(ledger, rec),
        Step::After => {
            post.observe(ledger, rec);
            window.after(ledger, rec);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (ledger, summary) = replay.finish();
    let mut status = ReadStatus::from(summary);
    if cutoff.is_some() {
        // The footer's end and counts are the whole recording's, not the moment's.
        status.footer = None;
    }
    let unmatched = unmatched(&ledger, filters);
    let in_window: BTreeSet<u32> = ledger
        .processes()
        .filter(|p| window.saw(p))
        .map(|p| p.proc)
        .collect();
    // Per GPU, the classes are those of the allocations on it: only the Ledger knows them.
    let gpu_classes: BTreeMap<u32, ClassBytes> = match filters.gpu {
        Some(g) => ledger
            .processes()
            .map(|p| (p.proc, p.classes_on(Some(g))))
            .collect(),
        None => BTreeMap::new(),
    };
    let mut report = super::report(ledger, post, None, None, Some(&status), filters.top);
    if let Some(at) = cutoff {
        report.at_ns = at_ns;
        report.duration_ns = (start > 0 && at >= start).then(|| at - start);
    }
    report.processes.retain(|p| in_window.contains(&p.proc));
    window.narrow_machine(&mut report.machine);
    for p in &mut report.processes {
        window.narrow(p);
        if let Some(c) = gpu_classes.get(&p.proc) {
            p.classes_at_exit = c.to_map();
        }
    }
    apply(&mut report, filters);
    report.filters = AppliedFilters {
        pids: filters.pids.clone(),
        gpu: filters.gpu,
        from_s: filters.from_s,
        to_s: filters.to_s,
        unmatched,
    };
    Ok(report)
}

/// What a `--pid` or `--gpu` filter names that the trace does not hold, each with what it
/// does hold.
fn unmatched(ledger: &Ledger, f: &Filters) -> Vec<String> {
    let mut out = Vec::new();
    let held: Vec<String> = ledger
        .processes()
        .map(|p| format!("{} ({})", p.pid, p.comm()))
        .collect();
    let held = if held.is_empty() {
        "no process".to_owned()
    } else {
        held.join(", ")
    };
    for pid in &f.pids {
        if !ledger.processes().any(|p| p.pid == *pid) {
            out.push(format!("pid {pid} is not in this trace; it has {held}"));
        }
    }
    if let Some(g) = f.gpu {
        let gpus: BTreeSet<i32> = ledger
            .processes()
            .flat_map(|p| p.devices.keys().flatten().copied())
            .collect();
        if !gpus.contains(&g) {
            let have = if gpus.is_empty() {
                "no GPU told apart".to_owned()
            } else {
                gpus.iter()
                    .map(|d| format!("GPU {d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(format!("GPU {g} is not in this trace; it has {have}"));
        }
    }
    out
}

fn secs_to_ns(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        // Rounded: 0.3 s is 300000000 ns, not 299999999.
        (s * 1e9).round() as u64
    } else {
        0
    }
}

/// Narrows a report to what `f` selects.
pub fn apply(r: &mut Report, f: &Filters) {
    let start = r
        .header
        .as_ref()
        .map(|h| h.start_monotonic_ns)
        .filter(|&s| s > 0)
        .unwrap_or(r.postmortem.timeline.start_ns);
    let from = f.from_s.map(|s| start.saturating_add(secs_to_ns(s)));
    let to = f.to_s.map(|s| start.saturating_add(secs_to_ns(s)));
    let pid_ok = |pid: u32| f.pids.is_empty() || f.pids.contains(&pid);
    let pm = &mut r.postmortem;

    r.processes.retain(|p| pid_ok(p.pid));
    pm.ooms.retain(|o| {
        pid_ok(o.pid)
            && from.is_none_or(|t| o.ts_ns >= t)
            && to.is_none_or(|t| o.ts_ns <= t)
            && f.gpu.is_none_or(|g| o.device == Some(g))
    });
    pm.leaks.suspects.retain(|l| pid_ok(l.pid));
    pm.leaks.suspects.truncate(f.top);
    pm.leaks.retention.retain(|l| pid_ok(l.pid));
    pm.timeline.processes.retain(|p| pid_ok(p.pid));
    pm.timeline.clip(from, to);
    if let Some(g) = f.gpu {
        r.machine.devices.retain(|d| d.device == Some(g));
        // A process that never touched the GPU is not in its report; one that did shows
        // its figures there (calls are counted per process, on every GPU).
        r.processes
            .retain(|p| p.devices.iter().any(|d| d.device == Some(g)));
        for p in &mut r.processes {
            p.devices.retain(|d| d.device == Some(g));
            if let Some(d) = p.devices.first() {
                p.peak_device_bytes = d.peak_device_bytes;
                p.peak_ts_ns = d.peak_ts_ns;
                p.device_bytes_at_exit = d.device_bytes_at_exit;
                p.pool_held_bytes_at_exit = d.pool_held_bytes_at_exit;
            }
            p.ooms.retain(|o| o.oom.device == Some(g));
            p.largest_at_exit.retain(|a| a.device == Some(g));
        }
    }
    for p in &mut r.processes {
        p.largest_at_exit.truncate(f.top);
    }
}
