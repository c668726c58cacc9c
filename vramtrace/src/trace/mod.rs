//! The JSON Lines trace file: the records, the writer and the tolerant reader.

pub mod read;
pub mod record;
pub mod write;

pub use read::{
    Integrity, Problem, ProblemKind, RECORD_TYPES, ReadError, ReadSummary, TraceReader,
};
pub use record::*;
pub use write::{TraceWriter, WriteError};
