//! The one replay of a trace file through the [`Ledger`]: `analyze`, `export` and
//! `top --replay` all read a trace through it.
//!
//! The reader keeps the header out of the record stream; the replay gives its facts (NVML's
//! GPUs and UUIDs, the driver) to the Ledger once, before the first record, so every
//! consumer's Ledger knows which NVML device a CUDA ordinal is. What the reader found wrong
//! with the file (bad lines, a cut, a digest that does not match) is kept once, in its
//! [`ReadSummary`], for the consumer to report.
//!
//! A replay may stop at a moment ([`Replay::until`]): the state as if the recording had ended
//! there. The records after it are still read, so the verdict covers the whole file.

use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc;

use super::{Change, Ledger};
use crate::trace::Record;
use crate::trace::read::{Input, Integrity, Position, ReadError, ReadSummary, TraceReader};

/// Records per batch that [`Replay::run_read_ahead`] reads ahead. A record is a few hundred
/// bytes, and a reader that keeps ahead of the Ledger holds every batch full: with 1024 the
/// peak RSS of `analyze` on a 10^6-event trace was 2 MiB higher than with 256. A smaller
/// batch also stays in the cache between the thread that fills it and the one that applies
/// it.
pub const READ_AHEAD_BATCH: usize = 256;
/// Batches [`Replay::run_read_ahead`] reads ahead at most.
pub const READ_AHEAD_BATCHES: usize = 4;

/// Where [`Replay::run_read_ahead_around`] is in applying a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The record is not applied yet.
    Before,
    /// The record is applied.
    After,
}

/// What [`Replay::run_read_ahead_seen`] shows its caller, in the order of the file.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    /// A record, with where it is in being applied.
    Record(Step, &'a Record),
    /// The records read so far are all applied: the reader stands at this position, just
    /// after the last of them (a replay may go on from here: [`Replay::resume`]).
    ReadTo(Position),
}

/// A trace being replayed: the reader and the Ledger it feeds.
pub struct Replay<R> {
    reader: TraceReader<R>,
    ledger: Ledger,
    applied: u64,
    /// Records later than this CLOCK_MONOTONIC time are read but not applied.
    cutoff: Option<u64>,
}

/// Whether `rec` is applied under `cutoff`: it is at or before it, or has no time (a
/// `process` or `stack` record, which only later timed records use).
fn in_time(cutoff: Option<u64>, rec: &Record) -> bool {
    match (cutoff, rec.ts_ns()) {
        (Some(c), Some(ts)) => ts <= c,
        _ => true,
    }
}

impl Replay<Input> {
    /// Opens a trace file (gzip-compressed or not), reads its header and gives its facts to a
    /// new Ledger.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        TraceReader::open(path).map(Replay::new)
    }
}

impl<R: BufRead> Replay<R> {
    /// Replays what `reader` reads, with the header's facts applied first.
    pub fn new(reader: TraceReader<R>) -> Self {
        let mut ledger = Ledger::new();
        ledger.apply(&header_record(&reader));
        Replay {
            reader,
            ledger,
            applied: 0,
            cutoff: None,
        }
    }

    /// Goes on from a `ledger` that is the state of this trace's replay at the reader's
    /// position (a replay's copy, kept where [`Seen::ReadTo`] was seen).
    pub fn resume(reader: TraceReader<R>, ledger: Ledger) -> Self {
        Replay {
            reader,
            ledger,
            applied: 0,
            cutoff: None,
        }
    }

    /// Stops applying records at `cutoff` (a CLOCK_MONOTONIC time, the records' `ts_ns`
    /// clock): later records are read, for the reader's verdict on the whole file, but the
    /// Ledger and [`Replay::advance`]'s caller never see them. `None`: apply everything.
    pub fn until(mut self, cutoff: Option<u64>) -> Self {
        self.cutoff = cutoff;
        self
    }

    /// Reads the next record and applies it: the record, with [`Replay::changes`] and
    /// [`Replay::ledger`] as they are after it. `None` at the end of the trace. Records after
    /// the cutoff are read past.
    pub fn advance(&mut self) -> Option<Record> {
        let rec = loop {
            let rec = self.reader.next()?;
            if in_time(self.cutoff, &rec) {
                break rec;
            }
        };
        self.ledger.apply(&rec);
        self.applied += 1;
        Some(rec)
    }

    /// The reader.
    pub fn reader(&self) -> &TraceReader<R> {
        &self.reader
    }

    /// The Ledger, as of the last record applied.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What the last record changed.
    pub fn changes(&self) -> &[Change] {
        self.ledger.changes()
    }

    /// Records applied so far (the header not counted).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The trace's header.
    pub fn header(&self) -> &crate::trace::Header {
        self.reader.header()
    }

    /// Applies every record left.
    pub fn run(&mut self) {
        while self.advance().is_some() {}
    }

    /// Applies every record left, as [`Replay::run`], calling `each` after each one with the
    /// Ledger as it is after it and the record. A second thread reads ahead (parsing and the
    /// digest) in batches of [`READ_AHEAD_BATCH`] records, at most [`READ_AHEAD_BATCHES`]
    /// ahead, so the read runs beside the Ledger instead of before it and memory stays
    /// bounded. When this process may run on one CPU only, there is no second thread: the
    /// batches are read and applied in turn. The records and their order are those of
    /// [`Replay::advance`].
    pub fn run_read_ahead(&mut self, each: impl FnMut(&Ledger, &Record))
    where
        R: Send,
    {
        let mut each = each;
        self.run_read_ahead_around(|step, ledger, rec| {
            if step == Step::After {
                each(ledger, rec);
            }
        });
    }

    /// [`Replay::run_read_ahead`], calling `each` twice per record: with [`Step::Before`]
    /// and the Ledger as it is before the record is applied (a report over a window takes
    /// its baseline there), then with [`Step::After`].
    pub fn run_read_ahead_around(&mut self, mut each: impl FnMut(Step, &Ledger, &Record))
    where
        R: Send,
    {
        self.run_read_ahead_seen(|seen, ledger| {
            if let Seen::Record(step, rec) = seen {
                each(step, ledger, rec);
            }
        });
    }

    /// [`Replay::run_read_ahead_around`], also telling after each batch read ahead where
    /// the reader stood after it ([`Seen::ReadTo`]), once that batch is applied.
    pub fn run_read_ahead_seen(&mut self, each: impl FnMut(Seen<'_>, &Ledger))
    where
        R: Send,
    {
        let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
        self.run_batches(!one_cpu, each);
    }

    /// [`Replay::run_read_ahead_seen`], reading ahead on a second thread or, without
    /// `read_ahead`, reading and applying each batch in turn on this one.
    fn run_batches(&mut self, read_ahead: bool, mut each: impl FnMut(Seen<'_>, &Ledger))
    where
        R: Send,
    {
        let Replay {
            reader,
            ledger,
            applied,
            cutoff,
        } = self;
        let cutoff = *cutoff;
        let mut apply = |batch: &[Record], at: Position| {
            for rec in batch.iter().filter(|r| in_time(cutoff, r)) {
                each(Seen::Record(Step::Before, rec), ledger);
                ledger.apply(rec);
                *applied += 1;
                each(Seen::Record(Step::After, rec), ledger);
            }
            each(Seen::ReadTo(at), ledger);
        };
        if !read_ahead {
            // One CPU: a second thread would only take turns with this one, and each turn
            // is a switch between them, with the batch gone from the cache in between.
            let mut batch = Vec::with_capacity(READ_AHEAD_BATCH);
            loop {
                batch.clear();
                reader.read_into(&mut batch, READ_AHEAD_BATCH);
                // The reader is fused: an empty batch is the end of the trace.
                if batch.is_empty() {
                    return;
                }
                apply(&batch, reader.read_position());
            }
        }
        std::thread::scope(|s| {
            let (full_tx, full_rx) =
                mpsc::sync_channel::<(Vec<Record>, Position)>(READ_AHEAD_BATCHES);
            let (empty_tx, empty_rx) = mpsc::channel::<Vec<Record>>();
            s.spawn(move || {
                loop {
                    // The records are dropped here, on the thread that made them: an
                    // entry-point name past the first thousand is shared by reference count,
                    // and a count moved on both threads would bounce between the cores.
                    let mut batch = match empty_rx.try_recv() {
                        Ok(mut used) => {
                            used.clear();
                            used
                        }
                        Err(_) => Vec::with_capacity(READ_AHEAD_BATCH),
                    };
                    reader.read_into(&mut batch, READ_AHEAD_BATCH);
                    if batch.is_empty() || full_tx.send((batch, reader.read_position())).is_err() {
                        break;
                    }
                }
            });
            for (batch, at) in full_rx {
                apply(&batch, at);
                // The reader may have finished and gone: then the batch is not needed.
                let _ = empty_tx.send(batch);
            }
        });
    }

    /// The reader's verdict on the trace, once the records are read.
    pub fn integrity(&self) -> Integrity {
        self.reader.summary().integrity
    }

    /// The Ledger and what the reader found, once the records are read.
    pub fn finish(self) -> (Ledger, ReadSummary) {
        let summary = self.reader.summary();
        (self.ledger, summary)
    }
}

/// The header as a record, for a Ledger that is fed records one by one elsewhere (the live
/// view's replay thread): the same facts [`Replay::new`] applies.
pub fn header_record<R: BufRead>(reader: &TraceReader<R>) -> Record {
    Record::Header(Box::new(reader.header().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::read::tests::{alloc, body, free, write_trace};

    /// Every record, with what it changed, as one replay saw it.
    type Applied = Vec<(Record, Vec<Change>)>;

    fn one_by_one(bytes: &[u8]) -> (Applied, Replay<&[u8]>) {
        let mut replay = Replay::new(TraceReader::new(bytes).expect("header"));
        let mut seen = Vec::new();
        while let Some(rec) = replay.advance() {
            seen.push((rec, replay.changes().to_vec()));
        }
        (seen, replay)
    }

    #[test]
    fn a_cutoff_shows_the_state_at_that_moment_and_still_reads_the_whole_file() {
        use crate::trace::{Exit, Process};
        let records = [
            Record::Process(Process {
                id: 1,
                pid: 4242,
                ..Default::default()
            }),
            alloc(0),
            free(0),
            alloc(1),
            // Freed, and the process gone, after the cutoff.
            free(1),
            Record::Exit(Exit {
                proc: 1,
                pid: 4242,
                ts_ns: 5_000_003_000,
            }),
        ];
        let cutoff = alloc(1).ts_ns().expect("timed") + 200;
        let (bytes, _) = write_trace(&records, true);
        let state = |ledger: &Ledger| {
            let p = ledger.processes().next().expect("the process");
            let live: Vec<_> = p.live_allocations().map(|a| a.addr).collect();
            (live, p.usage.device_bytes, p.exit.is_some())
        };
        let one = {
            let mut r = Replay::new(TraceReader::new(bytes.as_slice()).expect("header"))
                .until(Some(cutoff));
            let seen: Vec<Record> = std::iter::from_fn(|| r.advance()).collect();
            assert_eq!(seen, records[..4], "the records up to the cutoff");
            r
        };
        let mut two =
            Replay::new(TraceReader::new(bytes.as_slice()).expect("header")).until(Some(cutoff));
        two.run_read_ahead(|_, rec| assert!(rec.ts_ns().is_none_or(|t| t <= cutoff)));
        for r in [one, two] {
            assert_eq!(r.applied(), 4);
            let (ledger, summary) = r.finish();
            let alloc1 = alloc(1).call().and_then(|c| c.addr);
            assert_eq!(state(&ledger), (vec![alloc1], 1 << 20, false));
            assert_eq!(
                summary.integrity,
                Integrity::Complete,
                "the whole file was read"
            );
        }
        let mut all = Replay::new(TraceReader::new(bytes.as_slice()).expect("header"));
        all.run();
        assert_eq!(state(all.ledger()), (vec![], 0, true));
    }

    #[test]
    fn reading_ahead_applies_the_same_records_with_the_same_changes() {
        // More than a few batches, and a last one that is not full.
        let mut records = body();
        records.extend(
            (0..3 * READ_AHEAD_BATCH as u64).map(
                |i| {
                    if i % 3 == 2 { free(i - 1) } else { alloc(i) }
                },
            ),
        );
        // On a second thread, and in turn on one (as on one CPU).
        for (finish, read_ahead) in [(true, true), (false, true), (true, false), (false, false)] {
            let (bytes, _) = write_trace(&records, finish);
            let (want, one) = one_by_one(&bytes);
            let mut two = Replay::new(TraceReader::new(bytes.as_slice()).expect("header"));
            let mut got = Vec::new();
            let mut read_to = Vec::new();
            two.run_batches(read_ahead, |seen, ledger| match seen {
                Seen::Record(Step::After, rec) => {
                    got.push((rec.clone(), ledger.changes().to_vec()));
                }
                Seen::Record(Step::Before, _) => {}
                Seen::ReadTo(at) => read_to.push((got.len(), at)),
            });
            assert_eq!(got.len(), want.len());
            assert!(got == want, "the changes differ");
            assert_eq!(two.applied(), one.applied());
            // After each batch, where the reader stood: after as many lines as were applied
            // (the header's and the `process` record's among them), the last at the end.
            assert_eq!(read_to.len(), got.len().div_ceil(READ_AHEAD_BATCH));
            assert!(
                read_to
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1.bytes < w[1].1.bytes)
            );
            assert_eq!(read_to.last().map(|r| r.0), Some(got.len()));
            assert_eq!(
                read_to.last().map(|r| r.1),
                Some(two.reader().read_position())
            );
            assert_eq!(two.finish().1, one.finish().1);
        }
    }
}
