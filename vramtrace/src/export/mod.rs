//! `vramtrace export`: a trace converted for the viewers people already use.
//!
//! - `perfetto`: Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing).
//! - `folded` / `flamegraph`: live bytes by stack at one moment, as folded stacks or as an
//!   SVG drawn with inferno.
//! - `memory-viz`: a pickle in the layout of `torch.cuda.memory._snapshot()`, which
//!   pytorch.org/memory_viz opens.
//!
//! Every exporter replays the trace through the one [`Ledger`] ([`Replay`]) and reads its
//! change stream: none keeps accounts of its own or decides again that an allocation ended
//! or that a call ran out of memory.

mod folded;
mod memviz;
mod perfetto;
mod pickle;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::ledger::{Ledger, Replay};
use crate::trace::Record;
use crate::trace::read::{Integrity, ReadError, TraceReader, is_stdin, open_file};

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
    /// Overwrite output files that exist.
    pub force: bool,
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
    #[error("{} exists: pass --force to overwrite it, or choose another -o", .0.display())]
    Exists(PathBuf),
    #[error("memory-viz of several processes writes one file per process: give -o FILE, or --pid")]
    SeveralToStdout,
    #[error("reading the trace from standard input into a temporary file failed")]
    Spool(#[source] std::io::Error),
}

/// Whether `out` names standard output.
fn is_stdout(out: &Path) -> bool {
    out.as_os_str() == "-"
}

/// `out` as the notes name it.
fn shown(out: &Path) -> String {
    if is_stdout(out) {
        "standard output".to_owned()
    } else {
        out.display().to_string()
    }
}

/// Refuses to write over `out` unless told to.
fn check_new(out: &Path, opts: &Options) -> Result<(), ExportError> {
    if !opts.force && !is_stdout(out) && out.exists() {
        return Err(ExportError::Exists(out.to_owned()));
    }
    Ok(())
}

/// `trace` as a file that can be read more than once: itself when it is a regular file;
/// standard input (`-`), a pipe or `<(...)` are copied into a temporary file first (the
/// stack views read the trace twice: once to find the moment, once to stop there).
fn rereadable(trace: &Path) -> Result<(PathBuf, Option<tempfile::TempPath>), ExportError> {
    let regular = !is_stdin(trace) && std::fs::metadata(trace).is_ok_and(|m| m.is_file());
    if regular {
        return Ok((trace.to_owned(), None));
    }
    let (mut input, _) = open_file(trace)?;
    let mut spool = tempfile::NamedTempFile::new().map_err(ExportError::Spool)?;
    std::io::copy(&mut input, &mut spool).map_err(ExportError::Spool)?;
    let path = spool.into_temp_path();
    Ok((path.to_path_buf(), Some(path)))
}

/// Reads `trace` record by record, from its start.
fn records(trace: &Path) -> Result<TraceReader<crate::trace::Input>, ReadError> {
    TraceReader::open(trace)
}

/// What an export wrote, and how far the trace it came from can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// What was written, for the user.
    pub note: String,
    /// The reader's verdict on the trace.
    pub integrity: Integrity,
}

impl Exported {
    /// The warning to give, as `analyze` gives it, unless the trace is complete.
    pub fn warning(&self) -> Option<String> {
        (self.integrity != Integrity::Complete)
            .then(|| format!("vramtrace: warning: {}", self.integrity.describe()))
    }
}

/// Writes `trace` as `format` into `out`; returns what was written and the trace's verdict.
/// A memory-viz export of several processes writes one file per process beside `out`
/// ([`per_process`]).
pub fn export_file(
    trace: &Path,
    format: Format,
    out: &Path,
    opts: &Options,
) -> Result<Exported, ExportError> {
    let (trace, _spool) = rereadable(trace)?;
    let trace = trace.as_path();
    if format == Format::MemoryViz {
        return memviz_files(trace, out, opts);
    }
    check_new(out, opts)?;
    let werr = |source| ExportError::Write {
        path: out.to_owned(),
        source,
    };
    let file: Box<dyn Write> = if is_stdout(out) {
        Box::new(crate::console::stdout())
    } else {
        Box::new(File::create(out).map_err(werr)?)
    };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let note = match format {
        Format::Perfetto => perfetto::write(trace, &mut w, opts).map_err(|e| lift(e, out))?,
        Format::Folded | Format::Flamegraph => {
            let (lines, what, integrity) = folded::at_moment(trace, opts)?;
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
            Exported {
                note: format!("wrote {} stacks, {what}, to {}", lines.len(), shown(out)),
                integrity,
            }
        }
        Format::MemoryViz => unreachable!("written by memviz_files"),
    };
    w.flush().map_err(werr)?;
    Ok(note)
}

/// The memory-viz snapshots: `out` when the trace has one process to show (or none), else
/// `out` with `.PID` before its extension for each process.
fn memviz_files(trace: &Path, out: &Path, opts: &Options) -> Result<Exported, ExportError> {
    let snaps = memviz::snapshots(trace, opts)?;
    let several = snaps.files.len() > 1;
    if several && is_stdout(out) {
        return Err(ExportError::SeveralToStdout);
    }
    let paths: Vec<PathBuf> = snaps
        .files
        .iter()
        .map(|(pid, _)| match pid {
            Some(pid) if several => per_process(out, *pid),
            _ => out.to_owned(),
        })
        .collect();
    // Nothing is written unless every file may be.
    for path in &paths {
        check_new(path, opts)?;
    }
    let mut written = Vec::new();
    for (path, (_, bytes)) in paths.into_iter().zip(&snaps.files) {
        let wrote = if is_stdout(&path) {
            let mut out = crate::console::stdout();
            out.write_all(bytes).and_then(|()| out.flush())
        } else {
            std::fs::write(&path, bytes)
        };
        wrote.map_err(|source| ExportError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    let (events, live) = (snaps.events, snaps.live);
    let what = format!("{events} allocation events, {live} allocations live at the end");
    let note = if several {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        format!(
            "wrote {} PyTorch memory snapshots, one per process ({what}), for \
             pytorch.org/memory_viz: {}; drag one file at a time onto the page",
            written.len(),
            files.join(", ")
        )
    } else {
        format!(
            "wrote a PyTorch memory snapshot ({what}) to {} for pytorch.org/memory_viz: drag \
             the file onto the page",
            shown(out)
        )
    };
    Ok(Exported {
        note,
        integrity: snaps.integrity,
    })
}

/// `out` with `.PID` inserted before its extension: `snap.pickle` -> `snap.1234.pickle`,
/// `snap` -> `snap.1234`.
pub fn per_process(out: &Path, pid: u32) -> PathBuf {
    let name = match (out.file_stem(), out.extension()) {
        (Some(stem), Some(ext)) => {
            format!("{}.{pid}.{}", stem.to_string_lossy(), ext.to_string_lossy())
        }
        _ => format!(
            "{}.{pid}",
            out.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ),
    };
    out.with_file_name(name)
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

/// Replays a whole trace through the Ledger (its header's facts first), calling `each` with
/// the Ledger after every record, the record and its index. Returns the Ledger at the end and
/// the trace's verdict.
fn replay(
    trace: &Path,
    mut each: impl FnMut(&Ledger, &Record, u64),
) -> Result<(Ledger, Integrity), ReadError> {
    let mut replay = Replay::new(records(trace)?);
    while let Some(rec) = replay.advance() {
        each(replay.ledger(), &rec, replay.applied() - 1);
    }
    let (ledger, summary) = replay.finish();
    Ok((ledger, summary.integrity))
}
