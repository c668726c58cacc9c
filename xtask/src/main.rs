//! Developer and CI tasks that are not a cargo build: `cargo xtask bench`.

mod bench;
mod bench_analyze;
mod bench_web;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "vramtrace's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Measures what probes add per driver call: bare, tracefs uprobes at the symbol and at
    /// the chosen instruction, bpftrace, and `vramtrace record` (needs root).
    Bench(bench::BenchArgs),
    /// Measures `vramtrace analyze` on generated traces of 10^5 to 10^7 events against
    /// `jq empty` on the same files (build vramtrace with --release first).
    BenchAnalyze(bench_analyze::BenchAnalyzeArgs),
    /// Measures the web page in Chromium: first render on a 10^7-event trace under
    /// `serve --replay`, CPU of the live page at 5 changes/s with 100,000 live allocations.
    BenchWeb(bench_web::BenchWebArgs),
    /// Internal: runs a command and prints its wall time and peak RSS.
    #[command(name = "__measure", hide = true)]
    Measure {
        /// Pins the command, all its threads, to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Bench(args) => bench::run(&args),
        Task::BenchAnalyze(args) => bench_analyze::run(&args),
        Task::BenchWeb(args) => bench_web::run(&args),
        Task::Measure { cpu, cmd } => bench_analyze::measure_child(cpu, &cmd),
    }
}
