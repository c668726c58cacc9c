//! The JSON Lines trace file: the records, the writer and the tolerant reader.

pub mod read;
pub mod record;
pub mod write;

pub use record::*;
