//! The `vramtrace` binary: parses the command line and turns errors into advice.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use vramtrace::{
    analyze,
    cli::{AnalyzeArgs, Cli, Command, ExportArgs, LogFormat, OnViolation, RecordArgs},
    console,
    session::{self, Policy, RecordOptions},
};

/// `analyze --strict`'s exit status when the trace is not complete.
const STRICT_NOT_COMPLETE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VRAMTRACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let writer = if matches!(cli.command, Command::Top(_)) {
        // Log lines would tear the live view's screen.
        BoxMakeWriter::new(std::io::sink)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    match cli.log_format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
        LogFormat::Json => {
            // `say!`'s diagnostics become events of their own target, shown at every
            // verbosity as the human lines are.
            let say = format!("{}=info", console::SAY_TARGET)
                .parse()
                .expect("a valid directive");
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_env_filter(filter.add_directive(say))
                .with_writer(writer)
                .init();
            console::set_json(true);
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            vramtrace::say!("vramtrace: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Record(args) => record(args, cli.verbose > 0),
        Command::Analyze(args) => analyze_cmd(args),
        Command::Top(args) => vramtrace::tui::top(args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => export_cmd(args),
        Command::Serve(args) => {
            vramtrace::serve::serve(args, cli.verbose > 0).map(|()| ExitCode::SUCCESS)
        }
    }
}

fn record(args: RecordArgs, verbose: bool) -> Result<ExitCode> {
    let duration = match args.duration {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("--duration must be a positive number of seconds")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    if !args.ring_size.is_power_of_two() || args.ring_size < 4096 {
        bail!("--ring-size must be a power of two of at least 4096 bytes");
    }
    if args.nvml_interval == 0 {
        bail!("--nvml-interval must be at least 1 millisecond");
    }
    let nvml_interval = (!args.no_nvml).then(|| Duration::from_millis(args.nvml_interval));
    let output = args.output.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("vramtrace-{secs}.jsonl").into()
    });
    let host_signal = match args.on_violation {
        Some(OnViolation::Signal(_)) if args.policy != Policy::VramOnly => {
            bail!("--on-violation needs --policy vram-only")
        }
        Some(OnViolation::Signal(sig)) => sig as u32,
        None => 0,
    };
    let has_command = !args.command.is_empty();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(session::record(RecordOptions {
        output: Some(output),
        force: args.force,
        pids: args.pids,
        libcuda: args.libcuda,
        duration,
        command: args.command,
        stacks: args.stack.mode(),
        hold_new: args.stack.hold_new,
        ring_bytes: args.ring_size,
        probe_at: args.probe_at,
        verbose,
        quiet: false,
        nvml_interval,
        policy: args.policy,
        host_signal,
    }))?;
    if has_command {
        // Exit as the traced command did, so vramtrace can stand in for it in scripts.
        use std::os::unix::process::ExitStatusExt as _;
        let code = match outcome.command_status {
            Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            None => 0,
        };
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    Ok(ExitCode::SUCCESS)
}

fn analyze_cmd(args: AnalyzeArgs) -> Result<ExitCode> {
    let at = args.moment();
    let filters = analyze::Filters {
        pids: args.pids,
        gpu: args.gpu,
        from_s: args.from,
        to_s: args.to,
        at,
        top: args.top,
        progress: true,
    };
    let report = analyze::analyze_file_with(&args.trace, &filters)
        .with_context(|| format!("reading {}", args.trace.display()))?;
    if !report.filters.unmatched.is_empty() {
        for m in &report.filters.unmatched {
            vramtrace::say!("vramtrace: {m}");
        }
        return Ok(ExitCode::from(2));
    }
    // A reader that goes away (`| head`) ends the report; `console::print` says so quietly.
    if args.json {
        let mut json = serde_json::to_string_pretty(&report)?;
        json.push('\n');
        console::print(&json)
    } else {
        console::print(&analyze::render_text(&report))
    }
    .context("writing the report")?;
    if args.strict && report.integrity != vramtrace::trace::Integrity::Complete {
        // Apart from 2, an error: the report was made, and the trace is not whole.
        return Ok(ExitCode::from(STRICT_NOT_COMPLETE));
    }
    Ok(ExitCode::SUCCESS)
}

fn export_cmd(args: ExportArgs) -> Result<ExitCode> {
    let at = args.at;
    let exported = vramtrace::export::export_file(
        &args.trace,
        args.format,
        &args.output,
        &vramtrace::export::Options {
            at,
            pids: args.pids,
            force: args.force,
        },
    )
    .with_context(|| format!("exporting {}", args.trace.display()))?;
    vramtrace::say!("{}", exported.note);
    if let Some(warning) = exported.warning() {
        vramtrace::say!("{warning}");
    }
    Ok(ExitCode::SUCCESS)
}
