//! Developer and CI tasks that are not a cargo build: `cargo xtask bench`.

mod bench;

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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Bench(args) => bench::run(&args),
    }
}
