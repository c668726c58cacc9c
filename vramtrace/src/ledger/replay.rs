//! The one replay of a trace file through the [`Ledger`]: `analyze`, `export` and
//! `top --replay` all read a trace through it.
//!
//! The reader keeps the header out of the record stream; the replay gives its facts (NVML's
//! GPUs and UUIDs, the driver) to the Ledger once, before the first record, so every
//! consumer's Ledger knows which NVML device a CUDA ordinal is. What the reader found wrong
//! with the file (bad lines, a cut, a digest that does not match) is kept once, in its
//! [`ReadSummary`], for the consumer to report.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;

use super::{Change, Ledger};
use crate::trace::Record;
use crate::trace::read::{Integrity, ReadError, ReadSummary, TraceReader};

/// Records per batch that [`Replay::run_read_ahead`] reads ahead.
pub const READ_AHEAD_BATCH: usize = 1024;
/// Batches [`Replay::run_read_ahead`] reads ahead at most.
pub const READ_AHEAD_BATCHES: usize = 4;

/// A trace being replayed: the reader and the Ledger it feeds.
pub struct Replay<R> {
    reader: TraceReader<R>,
    ledger: Ledger,
    applied: u64,
}

impl Replay<BufReader<File>> {
    /// Opens a trace file, reads its header and gives its facts to a new Ledger.
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
        }
    }

    /// Reads the next record and applies it: the record, with [`Replay::changes`] and
    /// [`Replay::ledger`] as they are after it. `None` at the end of the trace.
    pub fn advance(&mut self) -> Option<Record> {
        let rec = self.reader.next()?;
        self.ledger.apply(&rec);
        self.applied += 1;
        Some(rec)
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
    /// bounded. The records and their order are those of [`Replay::advance`].
    pub fn run_read_ahead(&mut self, mut each: impl FnMut(&Ledger, &Record))
    where
        R: Send,
    {
        let Replay {
            reader,
            ledger,
            applied,
        } = self;
        std::thread::scope(|s| {
            let (full_tx, full_rx) = mpsc::sync_channel::<Vec<Record>>(READ_AHEAD_BATCHES);
            let (empty_tx, empty_rx) = mpsc::channel::<Vec<Record>>();
            s.spawn(move || {
                loop {
                    // The records are dropped here, on the thread that made them: their
                    // entry-point names are shared, and a count moved on both threads would
                    // bounce between the cores on every record.
                    let mut batch = match empty_rx.try_recv() {
                        Ok(mut used) => {
                            used.clear();
                            used
                        }
                        Err(_) => Vec::with_capacity(READ_AHEAD_BATCH),
                    };
                    batch.extend(reader.by_ref().take(READ_AHEAD_BATCH));
                    // The reader is fused: an empty batch is the end of the trace.
                    if batch.is_empty() || full_tx.send(batch).is_err() {
                        break;
                    }
                }
            });
            for batch in full_rx {
                for rec in &batch {
                    ledger.apply(rec);
                    *applied += 1;
                    each(ledger, rec);
                }
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
    type Seen = Vec<(Record, Vec<Change>)>;

    fn one_by_one(bytes: &[u8]) -> (Seen, Replay<&[u8]>) {
        let mut replay = Replay::new(TraceReader::new(bytes).expect("header"));
        let mut seen = Vec::new();
        while let Some(rec) = replay.advance() {
            seen.push((rec, replay.changes().to_vec()));
        }
        (seen, replay)
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
        for finish in [true, false] {
            let (bytes, _) = write_trace(&records, finish);
            let (want, one) = one_by_one(&bytes);
            let mut two = Replay::new(TraceReader::new(bytes.as_slice()).expect("header"));
            let mut got = Vec::new();
            two.run_read_ahead(|ledger, rec| got.push((rec.clone(), ledger.changes().to_vec())));
            assert_eq!(got.len(), want.len());
            assert!(got == want, "the changes differ");
            assert_eq!(two.applied(), one.applied());
            assert_eq!(two.finish().1, one.finish().1);
        }
    }
}
