//! The replay producer: reads a trace on its own thread and sends its records at the pace
//! they were recorded (times `speed`), with pause, single steps and seeks.
//!
//! Seeking back starts over: the main loop gets [`Msg::Reset`], drops its Ledger, and the
//! records up to the target come again in large batches. The Ledger only moves forward, so
//! this is the one way back that keeps a single accounting path.

use std::{
    path::PathBuf,
    sync::mpsc::{Receiver, RecvTimeoutError, Sender},
    time::{Duration, Instant},
};

use super::{Control, Marks, Msg, ReplayStatus, SeekTo};
use crate::export::Moment;
use crate::ledger::{Change, Replay, header_record};
use crate::trace::{Record, read::TraceReader};

/// Records per message while catching up (seeking, or a burst).
const BATCH: usize = 8192;
/// Longest wait between two looks at the clock and the controls.
const POLL: Duration = Duration::from_millis(20);

/// Reads `path` and sends its records into `tx` until the receiver is gone.
pub struct Replayer {
    path: PathBuf,
    speed: f64,
    tx: Sender<Msg>,
    ctl: Receiver<Control>,
    reader: Option<TraceReader<crate::trace::Input>>,
    /// The next record, read but not sent.
    peeked: Option<Record>,
    batch: Vec<Record>,
    start_ns: Option<u64>,
    pos_ns: u64,
    last_ns: u64,
    /// Wall time and trace time when the clock was last anchored.
    anchor: (Instant, u64),
    paused: bool,
    finished: bool,
    /// Where to open, paused (`top --replay --at`).
    at: Option<Moment>,
    /// The first pass's marks, once it is done.
    marks: Option<Receiver<Result<Marks, String>>>,
}

/// The out-of-memory failures, alerts and peak of the trace at `path`: one pass of the Ledger
/// over it, reading its change stream.
pub fn scan(path: &std::path::Path) -> Result<Marks, String> {
    let mut replay = Replay::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut marks = Marks::default();
    replay.run_read_ahead(|ledger, rec| {
        for c in ledger.changes() {
            match c {
                Change::Oom { oom, .. } => {
                    marks.ooms.push(oom.ts_ns);
                    marks.alerts.push(oom.ts_ns);
                }
                Change::HostFinding { finding, .. } => marks.alerts.push(finding.ts_ns),
                Change::Anomaly { .. } => marks.alerts.extend(rec.ts_ns()),
                _ => {}
            }
        }
    });
    let (ledger, _) = replay.finish();
    marks.peak_ns = ledger.totals().usage.peak_device_ts_ns;
    marks.alerts.sort_unstable();
    marks.alerts.dedup();
    Ok(marks)
}

impl Replayer {
    pub fn new(path: PathBuf, speed: f64, tx: Sender<Msg>, ctl: Receiver<Control>) -> Self {
        Replayer {
            path,
            speed,
            tx,
            ctl,
            reader: None,
            peeked: None,
            batch: Vec::new(),
            start_ns: None,
            pos_ns: 0,
            last_ns: 0,
            anchor: (Instant::now(), 0),
            paused: false,
            finished: false,
            at: None,
            marks: None,
        }
    }

    /// Opens paused at `at` instead of playing from the start.
    pub fn at(mut self, at: Option<Moment>) -> Self {
        self.at = at;
        self
    }

    /// Starts the first pass that finds the marks, on a thread of its own.
    fn start_scan(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("replay-marks".into())
            .spawn(move || {
                let _ = tx.send(scan(&path));
            });
        if spawned.is_ok() {
            self.marks = Some(rx);
        }
    }

    /// Passes the marks on once the first pass is done (`wait`: until it is); returns them.
    fn take_marks(&mut self, wait: bool) -> Option<Marks> {
        let rx = self.marks.as_ref()?;
        let got = if wait {
            rx.recv().ok()
        } else {
            rx.try_recv().ok()
        }?;
        self.marks = None;
        match got {
            Ok(m) => {
                let _ = self.tx.send(Msg::Marks(m.clone()));
                Some(m)
            }
            // The replay itself says what is wrong with the file.
            Err(_) => None,
        }
    }

    /// Where `top --replay --at` opens, on the trace clock.
    fn opening(&mut self, at: Moment) -> u64 {
        let header_start = self
            .reader
            .as_ref()
            .map(|r| r.header().start_monotonic_ns)
            .filter(|&s| s > 0)
            .or(self.start_ns)
            .unwrap_or(0);
        match at {
            Moment::End => u64::MAX,
            Moment::Secs(s) => header_start.saturating_add((s * 1e9).round() as u64),
            Moment::Peak | Moment::Oom => {
                let marks = self.take_marks(true).unwrap_or_default();
                let oom = (at == Moment::Oom).then(|| marks.ooms.first().copied());
                oom.flatten()
                    .or(marks.peak_ns)
                    .or(self.start_ns)
                    .unwrap_or(0)
            }
        }
    }

    /// Runs until the main loop hangs up. A trace that cannot be opened ends the view with
    /// the reason.
    pub fn run(mut self) {
        if let Err(e) = self.open() {
            let _ = self.tx.send(Msg::Ended(Err(e)));
            return;
        }
        self.start_scan();
        if let Some(at) = self.at {
            let target = self.opening(at);
            if !self.control(Control::Jump(target)) {
                return;
            }
        }
        loop {
            if !self.controls() {
                return;
            }
            self.take_marks(false);
            let target = if self.paused {
                self.pos_ns
            } else {
                let elapsed = self.anchor.0.elapsed().as_secs_f64() * self.speed * 1e9;
                self.anchor.1.saturating_add(elapsed as u64)
            };
            self.send_until(target);
            if !self.paused {
                self.pos_ns = if self.finished {
                    self.last_ns.max(self.pos_ns)
                } else {
                    target
                };
            }
            if !self.status() {
                return;
            }
            let wait = if self.paused || self.finished {
                Duration::from_millis(250)
            } else {
                POLL
            };
            match self.ctl.recv_timeout(wait) {
                Ok(c) => {
                    if !self.control(c) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn open(&mut self) -> Result<(), String> {
        let reader = TraceReader::open(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        // The header's facts go to the Ledger first, as every replay gives them.
        let header = header_record(&reader);
        self.reader = Some(reader);
        self.peeked = None;
        self.finished = false;
        let _ = self.tx.send(Msg::Records(vec![header]));
        // The clock starts at the first timed record: the header's instant may be long before.
        if let Some(ts) = self.next_ts() {
            self.start_ns.get_or_insert(ts);
            self.pos_ns = ts;
            self.last_ns = ts;
        }
        self.anchor = (Instant::now(), self.pos_ns);
        Ok(())
    }

    fn peek(&mut self) -> Option<&Record> {
        if self.peeked.is_none() {
            self.peeked = self.reader.as_mut().and_then(|r| r.next());
            if self.peeked.is_none() && !self.finished {
                self.finished = true;
                if let Some(r) = &self.reader {
                    let _ = self.tx.send(Msg::Integrity(r.summary().integrity));
                }
            }
        }
        self.peeked.as_ref()
    }

    /// The time of the next timed record, reading past (and queueing) those without one.
    fn next_ts(&mut self) -> Option<u64> {
        loop {
            let rec = self.peek()?;
            if let Some(ts) = rec.ts_ns() {
                return Some(ts);
            }
            if let Some(r) = self.peeked.take() {
                self.push(r);
            }
        }
    }

    fn push(&mut self, r: Record) {
        self.batch.push(r);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let _ = self.tx.send(Msg::Records(std::mem::take(&mut self.batch)));
        }
    }

    /// Sends every record up to `target` on the trace clock.
    fn send_until(&mut self, target: u64) {
        while let Some(ts) = self.next_ts() {
            if ts > target {
                break;
            }
            if let Some(r) = self.peeked.take() {
                self.last_ns = self.last_ns.max(ts);
                self.push(r);
            }
        }
        self.flush();
    }

    /// Sends the records up to and including the next timed one.
    fn step(&mut self) {
        if let Some(ts) = self.next_ts() {
            self.send_until(ts);
            self.pos_ns = ts;
        }
    }

    fn status(&mut self) -> bool {
        let start = self.start_ns.unwrap_or(self.pos_ns);
        self.tx
            .send(Msg::Replay(ReplayStatus {
                start_ns: start,
                pos_ns: if self.finished {
                    self.pos_ns.max(self.last_ns)
                } else {
                    self.pos_ns
                },
                end_ns: self.finished.then_some(self.last_ns),
                paused: self.paused,
                finished: self.finished,
            }))
            .is_ok()
    }

    /// Takes every waiting control; false when the main loop is gone.
    fn controls(&mut self) -> bool {
        loop {
            match self.ctl.try_recv() {
                Ok(c) => {
                    if !self.control(c) {
                        return false;
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn control(&mut self, c: Control) -> bool {
        match c {
            Control::Pause(p) => {
                self.paused = p;
                self.anchor = (Instant::now(), self.pos_ns);
            }
            Control::Step => {
                self.paused = true;
                self.step();
            }
            Control::Jump(ts) => {
                self.paused = true;
                return self.control(Control::Seek(SeekTo::Abs(ts)));
            }
            Control::Seek(to) => {
                let start = self.start_ns.unwrap_or(self.pos_ns);
                let target = match to {
                    SeekTo::Start => start,
                    SeekTo::End => u64::MAX,
                    SeekTo::Rel(d) => self.pos_ns.saturating_add_signed(d).max(start),
                    SeekTo::Abs(ts) => ts.max(start),
                };
                if target < self.pos_ns {
                    if self.tx.send(Msg::Reset).is_err() {
                        return false;
                    }
                    self.batch.clear();
                    if let Err(e) = self.open() {
                        let _ = self.tx.send(Msg::Ended(Err(e)));
                        return false;
                    }
                }
                self.send_until(target);
                self.pos_ns = if target == u64::MAX {
                    self.last_ns
                } else {
                    target
                };
                self.anchor = (Instant::now(), self.pos_ns);
            }
        }
        self.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn gpu_fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/gpu")
            .join(name)
    }

    #[test]
    fn the_marks_are_the_ledgers_ooms_and_peak() {
        // PyTorch on an H100 filling the GPU with 8 GiB tensors: two failed cuMemAlloc_v2
        // (the caching allocator retries once after freeing its cache).
        let m = scan(&gpu_fixture("oom.jsonl.gz")).expect("scans");
        assert_eq!(m.ooms.len(), 2, "{m:?}");
        assert!(m.ooms[0] <= m.ooms[1]);
        assert!(m.alerts.contains(&m.ooms[0]));
        let peak = m.peak_ns.expect("a peak");
        assert!(peak <= m.ooms[0], "the peak comes before the failure");
        assert_eq!(Marks::next(&m.ooms, 0, true), Some(m.ooms[0]));
        assert_eq!(Marks::next(&m.ooms, m.ooms[0], true), Some(m.ooms[1]));
        assert_eq!(Marks::next(&m.ooms, m.ooms[0], false), None);
        assert_eq!(Marks::next(&m.ooms, u64::MAX, false), Some(m.ooms[1]));
    }

    #[test]
    fn at_oom_opens_paused_at_the_first_failure() {
        let path = gpu_fixture("oom.jsonl.gz");
        let first_oom = scan(&path).expect("scans").ooms[0];
        let (tx, rx) = mpsc::channel();
        let (ctl_tx, ctl_rx) = mpsc::channel();
        let replayer = Replayer::new(path, 1.0, tx, ctl_rx).at(Some(Moment::Oom));
        let worker = std::thread::spawn(move || replayer.run());
        let mut failed_seen = 0;
        let mut status = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Msg::Records(recs)) => {
                    failed_seen += recs
                        .iter()
                        .filter(|r| matches!(r, Record::Failed(c) if c.ret == 2))
                        .count();
                }
                Ok(Msg::Replay(s)) if s.paused => {
                    status = Some(s);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        drop(ctl_tx);
        drop(rx);
        let _ = worker.join();
        let s = status.expect("a paused status");
        assert_eq!(s.pos_ns, first_oom);
        assert_eq!(
            failed_seen, 1,
            "the records up to the first failure, and no further"
        );
    }
}
