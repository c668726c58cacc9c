//! The JSON Lines trace file: the records, the writer and the tolerant reader.

pub mod digest;
pub mod name;
pub mod read;
pub mod record;
pub mod write;

pub use name::ApiName;
pub use read::{
    Input, Integrity, Problem, ProblemKind, RECORD_TYPES, ReadError, ReadSummary, TraceReader,
    open_input,
};
pub use record::*;
pub use write::{TraceWriter, WriteError};
