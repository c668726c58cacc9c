//! `cargo xtask bench-web`: the web page in Debian's Chromium (`web/e2e/bench.mjs`): its first
//! meaningful render on a generated 10^7-event trace under `serve --replay`, and Chromium's
//! CPU on the live page with 100,000 live allocations and 5 changes a second. Prints tables;
//! asserts nothing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchWebArgs {
    /// Events in the generated trace.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Where the generated trace goes (kept for the next run).
    #[arg(long, default_value = "target/bench-web")]
    pub dir: PathBuf,
    /// Seconds the live page's CPU is measured over.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
}

pub fn run(args: &BenchWebArgs) -> Result<()> {
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "vramtrace",
            "--bin",
            "vramtrace",
        ])
        .args(["--example", "web_bench_server"])
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    std::fs::create_dir_all(&args.dir)?;
    let trace = args.dir.join(format!("{}.jsonl", args.events));
    if !trace.exists() {
        println!("generating {} ({} events)", trace.display(), args.events);
        let part = trace.with_extension("partial");
        crate::bench_analyze::generate(&part, args.events)?;
        std::fs::rename(&part, &trace)?;
    }
    let status = Command::new("node")
        .arg("web/e2e/bench.mjs")
        .arg("--trace")
        .arg(&trace)
        .args(["--vramtrace", "target/release/vramtrace"])
        .args(["--live-server", "target/release/examples/web_bench_server"])
        .args(["--seconds", &args.seconds.to_string()])
        .status()
        .context("node web/e2e/bench.mjs (run scripts/setup.sh first)")?;
    if !status.success() {
        bail!("the web benchmark failed");
    }
    Ok(())
}
