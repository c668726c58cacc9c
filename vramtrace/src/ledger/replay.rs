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

use super::{Change, Ledger};
use crate::trace::Record;
use crate::trace::read::{ReadError, ReadSummary, TraceReader};

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
