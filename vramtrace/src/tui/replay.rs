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

use super::{Control, Msg, ReplayStatus, SeekTo};
use crate::ledger::header_record;
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
        }
    }

    /// Runs until the main loop hangs up. A trace that cannot be opened ends the view with
    /// the reason.
    pub fn run(mut self) {
        if let Err(e) = self.open() {
            let _ = self.tx.send(Msg::Ended(Err(e)));
            return;
        }
        loop {
            if !self.controls() {
                return;
            }
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
            Control::Seek(to) => {
                let start = self.start_ns.unwrap_or(self.pos_ns);
                let target = match to {
                    SeekTo::Start => start,
                    SeekTo::End => u64::MAX,
                    SeekTo::Rel(d) => self.pos_ns.saturating_add_signed(d).max(start),
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
