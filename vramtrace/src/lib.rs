//! vramtrace: traces GPU memory allocations from outside the processes that make them.
//!
//! Module map, in the order data flows:
//!
//! - [`api`]: the hooked CUDA driver entry points, their signatures and attach cookies.
//! - [`probe`]: loads the eBPF programs, finds libcuda, attaches, reads the ring buffer and
//!   the loss counters.
//! - [`decode`]: the one converter from raw probe events to trace [`trace::Record`]s.
//! - [`stacks`]: normalizes user stacks at record time (file, build ID, offset) and
//!   symbolizes them on a worker thread, or later.
//! - [`procinfo`]: what `/proc` says about a traced process.
//! - [`nvml`]: the driver's own view of GPU memory: header facts and the sampling poller.
//! - [`ledger`]: live allocations per process and device; the single accounting path for live
//!   tracing and replay.
//! - [`trace`]: the JSON Lines trace file: records, writer, tolerant reader.
//! - [`site`]: the frame of a stack in the user's code, which every report titles and
//!   groups findings by, and how frames are written.
//! - [`analyze`]: the postmortem summary of a trace.
//! - [`export`]: a trace converted for Perfetto, flame graphs and PyTorch's memory_viz.
//! - [`session`]: `vramtrace record`: the [`session::Recorder`] wires the pieces above
//!   together.
//! - [`tui`]: `vramtrace top`: the live terminal view, and replay of a trace.
//! - [`serve`]: `vramtrace serve`: read-only HTTP (health, Prometheus metrics, snapshots,
//!   the embedded web page and its windowed reads) over the same Ledger, live or replaying a
//!   trace.
//! - [`cli`]: the command line.
//! - [`console`]: stdout and stderr for a reader that may go away.

pub mod analyze;
pub mod api;
pub mod cli;
pub mod console;
pub mod decode;
pub mod export;
pub mod ledger;
pub mod nvml;
pub mod probe;
pub mod procinfo;
pub mod serve;
pub mod session;
pub mod site;
pub mod stacks;
#[cfg(test)]
pub(crate) mod testing;
pub mod trace;
pub mod tui;
