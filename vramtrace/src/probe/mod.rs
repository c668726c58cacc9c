//! TODO

pub mod libcuda;
