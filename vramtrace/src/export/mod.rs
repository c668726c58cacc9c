//! `vramtrace export`: a trace converted for the viewers people already use.
//!
//! - `perfetto`: Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing).
//! - `folded` / `flamegraph`: live bytes by stack at one moment, as folded stacks or as an
//!   SVG drawn with inferno.
//! - `memory-viz`: a pickle in the layout of `torch.cuda.memory._snapshot()`, which
//!   pytorch.org/memory_viz opens.
//!
//! Every exporter replays the trace through the one [`Ledger`]; none keeps accounts of its own.

mod folded;
mod memviz;
mod perfetto;
mod pickle;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::ledger::{Ledger, LiveAllocation};
use crate::trace::read::{ReadError, TraceReader};
use crate::trace::{Call, Exit, Record};

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Chrome/Perfetto trace-event JSON: counters, OOM and host-memory instants, lifetimes.
    Perfetto,
    /// An SVG flame graph of live bytes by stack at one moment.
    Flamegraph,
    /// Folded stacks (`a;b;c bytes`) at one moment, for other flame graph tools.
    Folded,
    /// A PyTorch memory snapshot pickle for pytorch.org/memory_viz.
    MemoryViz,
}

/// The moment a stack view shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Moment {
    /// When all processes together held the most device memory.
    Peak,
    /// Just before the first out-of-memory failure.
    Oom,
    /// The end of the trace.
    End,
    /// Seconds after the start of the recording.
    Secs(f64),
}

impl FromStr for Moment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "peak" => Ok(Moment::Peak),
            "oom" => Ok(Moment::Oom),
            "end" => Ok(Moment::End),
            _ => match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(Moment::Secs(v)),
                _ => Err(format!(
                    "--at {s:?}: expected peak, oom, end or a number of seconds"
                )),
            },
        }
    }
}

/// What to export.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    /// The moment for stack views; `None`: the first OOM, else the peak.
    pub at: Option<Moment>,
    /// Only these PIDs (empty: all).
    pub pids: Vec<u32>,
}

impl Options {
    fn wants(&self, pid: u32) -> bool {
        self.pids.is_empty() || self.pids.contains(&pid)
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("writing {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("drawing the flame graph failed: {0}")]
    Flamegraph(String),
    #[error("there is nothing to show at that moment: no live allocation")]
    Empty,
}

/// Reads `trace` record by record, from its start.
fn records(trace: &Path) -> Result<TraceReader<std::io::BufReader<File>>, ReadError> {
    TraceReader::open(trace)
}

/// Writes `trace` as `format` into `out`; returns a note for the user.
pub fn export_file(
    trace: &Path,
    format: Format,
    out: &Path,
    opts: &Options,
) -> Result<String, ExportError> {
    let werr = |source| ExportError::Write {
        path: out.to_owned(),
        source,
    };
    let file = File::create(out).map_err(werr)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let note = match format {
        Format::Perfetto => perfetto::write(trace, &mut w, opts).map_err(|e| lift(e, out))?,
        Format::Folded | Format::Flamegraph => {
            let (lines, what) = folded::at_moment(trace, opts)?;
            if lines.is_empty() {
                return Err(ExportError::Empty);
            }
            if format == Format::Folded {
                for l in &lines {
                    writeln!(w, "{l}").map_err(werr)?;
                }
            } else {
                let mut o = inferno::flamegraph::Options::default();
                o.title = format!("GPU memory by stack, {what}");
                o.count_name = "bytes".into();
                o.name_type = "Stack:".into();
                inferno::flamegraph::from_lines(&mut o, lines.iter().map(String::as_str), &mut w)
                    .map_err(|e| ExportError::Flamegraph(e.to_string()))?;
            }
            format!("wrote {} stacks, {what}, to {}", lines.len(), out.display())
        }
        Format::MemoryViz => memviz::write(trace, &mut w, opts).map_err(|e| lift(e, out))?,
    };
    w.flush().map_err(werr)?;
    Ok(note)
}

/// A read error stays one; an I/O error is the output's.
fn lift(e: ExportError, out: &Path) -> ExportError {
    match e {
        ExportError::Write { source, .. } => ExportError::Write {
            path: out.to_owned(),
            source,
        },
        e => e,
    }
}

fn io(source: std::io::Error) -> ExportError {
    ExportError::Write {
        path: PathBuf::new(),
        source,
    }
}

/// Applies `rec` to `ledger` and returns the allocations at an address (those
/// [`live_at`](crate::ledger::ProcessState::live_at) finds: not arrays or VMM handles) that it
/// ended: the one a free gives back, the one an allocation at a still-live address replaces,
/// and what an exit or a destroyed context lets go of. A viewer needs each to end there.
fn apply_ending(ledger: &mut Ledger, rec: &Record) -> Vec<LiveAllocation> {
    // The same allocation still at its address: same sequence number.
    let at_address = |ledger: &Ledger, proc: u32, a: &LiveAllocation| {
        ledger
            .process(proc)
            .and_then(|p| p.live_at(a.addr?))
            .is_some_and(|b| b.seq == a.seq)
    };
    let (proc, mut ended): (u32, Vec<LiveAllocation>) = match rec {
        Record::Free(c) | Record::Alloc(c) => (
            c.proc,
            c.addr
                .and_then(|x| ledger.process(c.proc)?.live_at(x))
                .cloned()
                .into_iter()
                .collect(),
        ),
        Record::Exit(Exit { proc, .. }) | Record::CtxDestroy(Call { proc, .. }) => (
            *proc,
            ledger
                .live_allocations(*proc)
                .filter(|a| at_address(ledger, *proc, a))
                .cloned()
                .collect(),
        ),
        _ => {
            ledger.apply(rec);
            return Vec::new();
        }
    };
    ledger.apply(rec);
    ended.retain(|a| !at_address(ledger, proc, a));
    ended
}

/// Replays a whole trace through a ledger, calling `each` after every record.
fn replay(trace: &Path, mut each: impl FnMut(&Ledger, &Record, u64)) -> Result<Ledger, ReadError> {
    let mut ledger = Ledger::new();
    for (n, rec) in records(trace)?.enumerate() {
        ledger.apply(&rec);
        each(&ledger, &rec, n as u64);
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::read::tests::{alloc, free};

    fn addrs(ended: &[LiveAllocation]) -> Vec<u64> {
        ended.iter().filter_map(|a| a.addr).collect()
    }

    #[test]
    fn every_way_an_allocation_ends_is_told() {
        let mut ledger = Ledger::new();
        assert!(apply_ending(&mut ledger, &alloc(0)).is_empty());
        assert!(apply_ending(&mut ledger, &alloc(1)).is_empty());
        assert!(apply_ending(&mut ledger, &alloc(2)).is_empty());
        let a = |i: u64| 0x7f00_0000_0000 + i * (1 << 20);
        // A free ends its allocation.
        assert_eq!(addrs(&apply_ending(&mut ledger, &free(1))), [a(1)]);
        // An allocation at an address still live ends the one there.
        assert_eq!(addrs(&apply_ending(&mut ledger, &alloc(0))), [a(0)]);
        // An exit ends what is left.
        let exit = Record::Exit(Exit {
            proc: 1,
            pid: 4242,
            ts_ns: 6_000_000_000,
        });
        let mut left = addrs(&apply_ending(&mut ledger, &exit));
        left.sort_unstable();
        assert_eq!(left, [a(0), a(2)]);
    }
}
