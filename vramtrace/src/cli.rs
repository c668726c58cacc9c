//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::probe::placement::ProbeAt;

/// Traces every GPU memory allocation on this machine from outside the processes that make
/// them: eBPF uprobes on NVIDIA's driver library (libcuda.so.1).
#[derive(Debug, Parser)]
#[command(name = "vramtrace", version, about, long_about = None)]
pub struct Cli {
    /// More detail on stderr (repeat for debug output).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record allocations into a JSON Lines trace (needs root or CAP_BPF+CAP_PERFMON).
    Record(RecordArgs),
    /// Summarize a trace: per process, allocations, peaks, what was held at exit, failures.
    Analyze(AnalyzeArgs),
    /// Convert a trace for other viewers: Perfetto, flame graphs, PyTorch's memory_viz.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Trace file to write (created mode 0600; given to the sudo user when run under sudo).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Trace only this process and its descendants (repeatable). Default: every process.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// The driver library to attach to (repeatable). Default: found like the dynamic loader
    /// would, plus the libraries mapped by the traced processes (containers included).
    #[arg(long, value_name = "PATH")]
    pub libcuda: Vec<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Do not capture call stacks (cheaper; the immediate caller is still recorded).
    #[arg(long)]
    pub no_stacks: bool,
    /// Ring buffer size in bytes (a power of two); larger survives longer bursts.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub ring_size: u32,
    /// Where the probes go on each function: `auto` skips leading instructions that the
    /// kernel would single-step when that is provably safe (much cheaper per call).
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = ProbeAt::Auto)]
    pub probe_at: ProbeAt,
    /// Command to start and trace, with its descendants; recording ends when it exits and
    /// vramtrace exits with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// The trace file.
    pub trace: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only these processes (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only this GPU (device ordinal).
    #[arg(long, value_name = "N")]
    pub gpu: Option<i32>,
    /// Start of the time window, seconds after the recording started.
    #[arg(long, value_name = "SECS")]
    pub from: Option<f64>,
    /// End of the time window, seconds after the recording started.
    #[arg(long, value_name = "SECS")]
    pub to: Option<f64>,
    /// How many stacks and allocations to list per finding.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, short = 'f', value_enum, value_name = "FORMAT")]
    pub format: crate::export::Format,
    /// File to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// For flamegraph, folded and memory-viz: the moment to show: `peak`, `oom` (the first
    /// out-of-memory failure), `end`, or seconds after the start. Default: the first OOM if
    /// there is one, else the peak.
    #[arg(long, value_name = "WHEN")]
    pub at: Option<String>,
    /// Only these processes (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// The trace file.
    pub trace: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn record_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "vramtrace",
            "record",
            "-o",
            "t.jsonl",
            "-p",
            "1",
            "-p",
            "2",
            "--",
            "python",
            "-c",
            "x",
        ])
        .unwrap();
        let Command::Record(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.pids, [1, 2]);
        assert_eq!(r.command, ["python", "-c", "x"]);
        assert_eq!(r.probe_at, ProbeAt::Auto);
    }

    #[test]
    fn record_takes_probe_at() {
        let cli = Cli::try_parse_from(["vramtrace", "record", "--probe-at", "entry"]).unwrap();
        let Command::Record(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.probe_at, ProbeAt::Entry);
        assert!(Cli::try_parse_from(["vramtrace", "record", "--probe-at", "elsewhere"]).is_err());
    }
}
