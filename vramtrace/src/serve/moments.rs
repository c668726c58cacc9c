//! The state of a replayed trace at any moment, without replaying the whole file again.
//!
//! `serve --replay` replays the trace once at startup. During that pass a copy of the Ledger
//! and of the Model it feeds is kept every [`Moments::every`] records (at a read-ahead batch's
//! end, with the file position there), bounded by [`BUDGET_BYTES`]: past it every other copy
//! goes and the interval doubles. The state at a moment `T` is then the latest copy that
//! holds no record later than `T`, replayed through the same Ledger ([`Replay::resume`]) from
//! its position with the records up to `T`, by a reader that stops where no record at or
//! before `T` follows. The file's integrity was judged by the startup pass; these reads do
//! not judge it again.
//!
//! The answer is the one a replay of the whole file with a cutoff at `T` gives
//! ([`Replay::until`]): records need not be in time order in the file (a recording drains
//! several CPUs), so each copy knows the latest time before it and the earliest time from it
//! to the end. Records without a time (`process`, `stack`) past the point where the read
//! stops are counted in `records` but not applied: no record at or before `T` refers to them.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::{Model, Served, Tracing};
use crate::analyze::Moment;
use crate::ledger::{Ledger, READ_AHEAD_BATCH, Replay};
use crate::trace::Record;
use crate::trace::read::{Position, ResumeFrom, TraceReader, decompressed};

/// What the copies may take at most, by [`Checkpoint::cost`]'s estimate.
pub const BUDGET_BYTES: u64 = 256 << 20;
/// Copies kept at most, whatever their size.
pub const MAX_CHECKPOINTS: usize = 256;
/// Records between copies at first (doubling as the budget requires).
pub const FIRST_EVERY: u64 = 64 * READ_AHEAD_BATCH as u64;
/// How often copies are kept, and how many at most.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    /// Records between copies at first (a copy is kept at a read-ahead batch's end).
    pub every: u64,
    /// Estimated bytes all copies may take.
    pub budget: u64,
    /// Copies at most.
    pub max: usize,
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            every: FIRST_EVERY,
            budget: BUDGET_BYTES,
            max: MAX_CHECKPOINTS,
        }
    }
}

/// Estimated bytes a copy takes per live allocation: the copied tree of the Ledger's shared
/// allocations, and the allocation itself once the replay changes it after the copy.
const BYTES_PER_LIVE: u64 = 256;
/// Estimated bytes a copy takes per process, besides its allocations.
const BYTES_PER_PROCESS: u64 = 16 << 10;

/// The Ledger and the Model at a position of the trace.
#[derive(Debug)]
struct Checkpoint {
    at: Position,
    ledger: Ledger,
    model: Model,
    /// Records applied before it.
    records: u64,
    /// Records without a time before it.
    untimed_before: u64,
    /// The latest time of a record before it (0: none).
    latest_before: u64,
    /// The earliest time of a record from it to the next copy; once the pass is over, to
    /// the end of the trace (`u64::MAX`: none).
    earliest_from: u64,
    /// Estimated bytes it takes.
    cost: u64,
}

/// Copies of the replay's state through a trace, to answer a moment from the nearest.
#[derive(Debug)]
pub struct Moments {
    path: PathBuf,
    from: ResumeFrom,
    start_ns: u64,
    list: Vec<Checkpoint>,
    keep: Keep,
    /// Records between copies now.
    every: u64,
    since: u64,
    latest: u64,
    untimed: u64,
}

impl Moments {
    /// Starts with the state before the first record: `replay` has read the header only.
    pub fn new<R: io::BufRead>(path: &Path, replay: &Replay<R>, keep: Keep) -> Self {
        let mut m = Moments {
            path: path.to_owned(),
            from: replay.reader().resume_from(),
            start_ns: replay.header().start_monotonic_ns,
            list: Vec::new(),
            keep,
            every: keep.every.max(1),
            since: 0,
            latest: 0,
            untimed: 0,
        };
        m.keep(
            replay.reader().read_position(),
            replay.ledger(),
            &Model::default(),
            0,
        );
        m
    }

    /// Records between copies now.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// Copies kept.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none is kept (never, once made).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Estimated bytes the copies take.
    pub fn cost(&self) -> u64 {
        self.list.iter().map(|c| c.cost).sum()
    }

    /// A record read by the startup pass, applied or not.
    pub fn saw(&mut self, rec: &Record) {
        self.since += 1;
        match rec.ts_ns() {
            Some(ts) => {
                self.latest = self.latest.max(ts);
                if let Some(last) = self.list.last_mut() {
                    last.earliest_from = last.earliest_from.min(ts);
                }
            }
            None => self.untimed += 1,
        }
    }

    /// The startup pass applied everything read to `at`: a copy is kept when enough records
    /// passed since the last.
    pub fn read_to(&mut self, at: Position, ledger: &Ledger, model: &Model, records: u64) {
        if self.since >= self.every {
            self.keep(at, ledger, model, records);
        }
    }

    fn keep(&mut self, at: Position, ledger: &Ledger, model: &Model, records: u64) {
        let live: u64 = model.procs.values().map(|r| r.live).sum();
        let procs = model.procs.len().max(ledger.processes().count()) as u64;
        self.list.push(Checkpoint {
            at,
            ledger: ledger.clone(),
            model: model.clone(),
            records,
            untimed_before: self.untimed,
            latest_before: self.latest,
            earliest_from: u64::MAX,
            cost: live * BYTES_PER_LIVE + procs * BYTES_PER_PROCESS,
        });
        self.since = 0;
        while self.list.len() > 2
            && (self.cost() > self.keep.budget || self.list.len() > self.keep.max)
        {
            self.thin();
        }
    }

    /// Every other copy goes (the first stays), and the interval doubles.
    fn thin(&mut self) {
        let mut out: Vec<Checkpoint> = Vec::with_capacity(self.list.len() / 2 + 1);
        for (i, c) in self.list.drain(..).enumerate() {
            match out.last_mut() {
                Some(prev) if i % 2 == 1 => {
                    prev.earliest_from = prev.earliest_from.min(c.earliest_from)
                }
                _ => out.push(c),
            }
        }
        self.list = out;
        self.every *= 2;
    }

    /// The pass is over: each copy learns the earliest time from it to the end.
    pub fn finish(&mut self) {
        let mut earliest = u64::MAX;
        for c in self.list.iter_mut().rev() {
            earliest = earliest.min(c.earliest_from);
            c.earliest_from = earliest;
        }
    }

    /// The state `secs` after the start of the recording, as a replay of the whole file with
    /// that cutoff gives it.
    pub fn at(&self, secs: f64) -> Result<Served> {
        let cutoff = Moment::AfterStart(secs).ts_ns(self.start_ns);
        // The latest copy with no record after the cutoff before it (the first has none).
        let from = self
            .list
            .partition_point(|c| c.latest_before <= cutoff)
            .saturating_sub(1);
        let Some(start) = self.list.get(from) else {
            anyhow::bail!("no copy of the replay's state was kept");
        };
        // The first copy with no record at or before the cutoff from it to the end.
        let stop = from + 1 + self.list[from + 1..].partition_point(|c| c.earliest_from <= cutoff);
        let stop = self.list.get(stop);
        let input = self
            .open_at(start.at.bytes, stop.map(|c| c.at.bytes))
            .with_context(|| format!("reading {}", self.path.display()))?;
        let reader = TraceReader::resume(input, &self.from, start.at);
        let mut replay = Replay::resume(reader, start.ledger.clone()).until(Some(cutoff));
        let mut served = Served::new(Tracing::Replay);
        served.model = start.model.clone();
        while replay.advance().is_some() {
            served.model.take(replay.changes());
        }
        // A replay of the whole file also applies the untimed records after the stop.
        let untimed_after = stop.map_or(0, |c| self.untimed - c.untimed_before);
        served.records = start.records + replay.applied() + untimed_after;
        served.ledger = replay.finish().0;
        Ok(served)
    }

    /// The trace's (decompressed) bytes from `from` to `to` (the end without one).
    fn open_at(&self, from: u64, to: Option<u64>) -> io::Result<crate::trace::read::Input> {
        let mut file = File::open(&self.path)?;
        let mut magic = [0u8; 2];
        let gzip = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
        file.seek(SeekFrom::Start(0))?;
        let mut input: Box<dyn Read + Send> = if gzip {
            // A gzip stream cannot be entered in the middle: inflated up to the position.
            let mut input = decompressed(file)?;
            io::copy(&mut (&mut input).take(from), &mut io::sink())?;
            input
        } else {
            file.seek(SeekFrom::Start(from))?;
            Box::new(file)
        };
        if let Some(to) = to {
            input = Box::new(input.take(to.saturating_sub(from)));
        }
        Ok(BufReader::with_capacity(1 << 20, input))
    }
}

#[cfg(test)]
#[path = "moments_tests.rs"]
mod tests;
