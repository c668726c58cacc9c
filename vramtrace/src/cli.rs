//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::probe::StackMode;
use crate::probe::placement::ProbeAt;
use crate::session::Policy;

/// Traces every GPU memory allocation on this machine from outside the processes that make
/// them: eBPF uprobes on NVIDIA's driver library (libcuda.so.1).
#[derive(Debug, Parser)]
#[command(name = "vramtrace", version, about, long_about = None)]
pub struct Cli {
    /// More detail on stderr (repeat for debug output).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// How diagnostics on stderr are written: `human` lines, or `json`, one object a line
    /// (timestamp, level, message, fields) for a log collector.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Human,
        env = "VRAMTRACE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How diagnostics on stderr are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for a person.
    Human,
    /// One JSON object a line.
    Json,
}

impl Cli {
    /// Parses `args` (the program's name first) like `Cli::try_parse_from`, and refuses
    /// `record --` with nothing after it: clap reads that as no command at all, which would
    /// trace every process instead of the command the user meant to give.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let cli = Self::try_parse_from(&args)?;
        let (verb, command) = match &cli.command {
            Command::Record(r) => ("record", Some(&r.command)),
            Command::Serve(s) => ("serve", Some(&s.command)),
            _ => ("", None),
        };
        if command.is_some_and(Vec::is_empty) && args.last().is_some_and(|a| a == "--") {
            use clap::CommandFactory as _;
            return Err(Self::command().error(
                clap::error::ErrorKind::InvalidValue,
                format!(
                    "`{verb} --` needs the command to trace after `--` \
                     (leave `--` out to trace every process)"
                ),
            ));
        }
        if let Command::Analyze(a) = &cli.command
            && let (Some(from), Some(to)) = (a.from, a.to)
            && from >= to
        {
            use clap::CommandFactory as _;
            return Err(Self::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!("the window --from {from} --to {to} is empty: --from must be before --to"),
            ));
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record allocations into a JSON Lines trace (needs root, or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).
    Record(RecordArgs),
    /// Summarize a trace: per process, allocations, peaks, what was held at exit, failures.
    Analyze(AnalyzeArgs),
    /// Live view per GPU, process and allocation (needs root); `--replay FILE` replays a
    /// trace instead (no root).
    Top(TopArgs),
    /// Convert a trace for other viewers: Perfetto, flame graphs, PyTorch's memory_viz.
    Export(ExportArgs),
    /// Serve the live state over read-only HTTP: health, Prometheus metrics, JSON snapshots
    /// (needs root); `--replay FILE` serves a trace instead (no root).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Another than loopback only when asked: the service has no TLS
    /// of its own (put a proxy in front) and names the processes of this machine.
    #[arg(long, value_name = "ADDR", env = "VRAMTRACE_LISTEN",
          default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::serve::DEFAULT_PORT)))]
    pub listen: std::net::SocketAddr,
    /// A file whose first line is the bearer token every request must carry
    /// (`Authorization: Bearer TOKEN`).
    #[arg(long, value_name = "FILE", env = "VRAMTRACE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Per-process metric series for this many processes, largest first; the rest are
    /// counted in `vramtrace_processes_omitted`.
    #[arg(long, value_name = "N", default_value_t = 20, env = "VRAMTRACE_TOP")]
    pub top: usize,
    /// Serve this trace file instead of tracing live (no root needed).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Also write the trace to this file (an existing one is refused without --force).
    #[arg(short, long, value_name = "FILE", conflicts_with = "replay")]
    pub output: Option<PathBuf>,
    /// Overwrite the -o file if it exists.
    #[arg(long, requires = "output")]
    pub force: bool,
    /// Trace only this process and its descendants (repeatable). Default: every process.
    #[arg(short, long = "pid", value_name = "PID", conflicts_with = "replay")]
    pub pids: Vec<u32>,
    /// The driver library to attach to (repeatable). Default: found as `record` finds it.
    #[arg(long, value_name = "PATH", conflicts_with = "replay")]
    pub libcuda: Vec<PathBuf>,
    /// Stop tracing after this many seconds (the server goes on serving what it saw).
    #[arg(long, value_name = "SECS", conflicts_with = "replay", value_parser = positive_secs)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub stack: StackArgs,
    /// Ring buffer size in bytes (a power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20, conflicts_with = "replay")]
    pub ring_size: u32,
    /// Where the probes go on each function (as for `record`).
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = ProbeAt::Auto)]
    pub probe_at: ProbeAt,
    /// Sample NVML every this many milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        env = "VRAMTRACE_NVML_INTERVAL"
    )]
    pub nvml_interval: u64,
    /// Do not use NVML.
    #[arg(long)]
    pub no_nvml: bool,
    /// Read GPU telemetry (NVML, else nvidia-smi) and the machine's figures every this many
    /// milliseconds (at least 250; under 1000 is warned about).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        env = "VRAMTRACE_POLL_INTERVAL"
    )]
    pub poll_interval: u64,
    /// Command to start and trace, with its descendants; tracing ends when it exits, serving
    /// goes on until SIGINT or SIGTERM.
    #[arg(last = true, value_name = "CMD", conflicts_with = "replay")]
    pub command: Vec<String>,
}

/// Seconds that are a duration: finite and positive.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Trace file to write (created mode 0600; given to the sudo user when run under sudo).
    /// Default: vramtrace-<unix seconds>.jsonl in the current directory. An existing file is
    /// not overwritten without --force.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite the -o file if it exists.
    #[arg(long)]
    pub force: bool,
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
    #[command(flatten)]
    pub stack: StackArgs,
    /// Ring buffer size in bytes (a power of two); larger survives longer bursts.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub ring_size: u32,
    /// Where the probes go on each function: `auto` skips leading instructions that the
    /// kernel would single-step when that is provably safe (much cheaper per call).
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = ProbeAt::Auto)]
    pub probe_at: ProbeAt,
    /// Sample NVML (per GPU and per process used memory) every this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub nvml_interval: u64,
    /// Do not use NVML (no samples; the trace says it was disabled).
    #[arg(long)]
    pub no_nvml: bool,
    /// `report`: host-memory allocations are findings in the trace and its analysis.
    /// `vram-only`: they are violations, printed as they happen and counted in the footer.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = Policy::Report)]
    pub policy: Policy,
    /// What a violation does besides being reported: `signal:SIGNAME` (e.g. `signal:SIGABRT`,
    /// `signal:ABRT`, `signal:6`) sends the signal to the offending thread from inside the
    /// probe, at the call itself, so that a core dump shows where it happened. Needs
    /// `--policy vram-only`.
    #[arg(long, value_name = "ACTION", value_parser = parse_on_violation)]
    pub on_violation: Option<OnViolation>,
    /// Command to start and trace, with its descendants; recording ends when it exits and
    /// vramtrace exits with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What a `vram-only` violation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnViolation {
    /// Send this signal to the offending thread at the call.
    Signal(i32),
}

/// Signal names (without `SIG`) and numbers, as `kill -l` lists them on Linux.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// A signal by name (`SIGABRT`, `ABRT`, any case) or number (1 to 64).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal number {n} is out of range (1 to 64)"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("unknown signal {s:?} (e.g. SIGABRT, ABRT, 6)"))
}

fn parse_on_violation(s: &str) -> Result<OnViolation, String> {
    match s.split_once(':') {
        Some(("signal", sig)) => parse_signal(sig).map(OnViolation::Signal),
        _ => Err(format!(
            "{s:?}: expected signal:SIGNAME, e.g. signal:SIGABRT"
        )),
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Trace only this process and its descendants (repeatable). Default: every process.
    #[arg(short, long = "pid", value_name = "PID", conflicts_with = "replay")]
    pub pids: Vec<u32>,
    /// The driver library to attach to (repeatable). Default: found as `record` finds it.
    #[arg(long, value_name = "PATH", conflicts_with = "replay")]
    pub libcuda: Vec<PathBuf>,
    /// Also write the trace to this file (an existing one is refused without --force).
    #[arg(short, long, value_name = "FILE", conflicts_with = "replay")]
    pub output: Option<PathBuf>,
    /// Overwrite the -o file if it exists.
    #[arg(long, requires = "output")]
    pub force: bool,
    #[command(flatten)]
    pub stack: StackArgs,
    /// Replay this trace instead of tracing live (no root needed).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Replay speed: 2 plays twice as fast as recorded (default 1).
    #[arg(long, value_name = "X", requires = "replay")]
    pub speed: Option<f64>,
    /// Open the replay paused at this moment: `peak`, `oom` (the first out-of-memory
    /// failure; the peak when there is none), `end`, or seconds after the recording started.
    #[arg(long, value_name = "WHEN", requires = "replay")]
    pub at: Option<crate::export::Moment>,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// The trace file (`-`: standard input).
    pub trace: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 3 after the report unless the trace is complete (not cut short,
    /// altered or appended to).
    #[arg(long)]
    pub strict: bool,
    /// Only these processes (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only this GPU (device ordinal).
    #[arg(long, value_name = "N")]
    pub gpu: Option<i32>,
    /// Start of the time window, seconds after the recording started: calls, peaks, OOMs
    /// and findings are those inside the window.
    #[arg(long, value_name = "SECS", value_parser = non_negative_secs, allow_negative_numbers = true)]
    pub from: Option<f64>,
    /// End of the time window, seconds after the recording started: what is held "at exit"
    /// is held then, as with --at.
    #[arg(long, value_name = "SECS", value_parser = non_negative_secs, allow_negative_numbers = true)]
    pub to: Option<f64>,
    /// The state at this moment, seconds after the recording started, as if the recording
    /// had ended there: the figures "at exit" are those at that moment, and a process that
    /// exited later has not exited. The whole file is still read and verified.
    #[arg(
        long,
        value_name = "SECS",
        value_parser = non_negative_secs,
        allow_negative_numbers = true,
        conflicts_with_all = ["from", "to", "at_ns"]
    )]
    pub at: Option<f64>,
    /// As --at, at this CLOCK_MONOTONIC time in nanoseconds: the clock of the trace's
    /// `ts_ns` (Python's time.monotonic_ns() in the traced program).
    #[arg(long, value_name = "NS", conflicts_with_all = ["from", "to"])]
    pub at_ns: Option<u64>,
    /// How many stacks and allocations to list per finding (per process, the largest live
    /// allocations: a large N lists them all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

impl AnalyzeArgs {
    /// The moment `--at` or `--at-ns` names, if one does.
    pub fn moment(&self) -> Option<crate::analyze::Moment> {
        use crate::analyze::Moment;
        self.at
            .map(Moment::AfterStart)
            .or(self.at_ns.map(Moment::Monotonic))
    }
}

/// Seconds that are a moment in a recording: finite and not negative.
fn non_negative_secs(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_finite() && secs >= 0.0 {
        Ok(secs)
    } else {
        Err(format!(
            "{s:?} is not a moment in the recording: give seconds after its start, \
             finite and not negative"
        ))
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, short = 'f', value_enum, value_name = "FORMAT")]
    pub format: crate::export::Format,
    /// File to write (`-`: standard output). memory-viz of several processes: one file per
    /// process, with `.PID` before the extension. An existing file is not overwritten
    /// without --force.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Overwrite output files that exist.
    #[arg(long)]
    pub force: bool,
    /// For flamegraph, folded and memory-viz: the moment to show: `peak`, `oom` (the first
    /// out-of-memory failure), `end`, or seconds after the start. Default: the first OOM if
    /// there is one, else the peak.
    #[arg(long, value_name = "WHEN")]
    pub at: Option<crate::export::Moment>,
    /// Only these processes (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// The trace file (`-`: standard input; a pipe or `<(...)` works too).
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
        assert_eq!((r.nvml_interval, r.no_nvml), (500, false));
    }

    #[test]
    fn record_refuses_a_double_dash_with_nothing_after_it() {
        let err = Cli::try_parse_args(["vramtrace", "record", "-o", "t.jsonl", "--"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("needs the command"), "{err}");
        // Without `--`, every process; with a command, that command.
        for (args, command) in [
            (&["vramtrace", "record", "-o", "t.jsonl"][..], &[][..]),
            (&["vramtrace", "record", "--", "true"], &["true"]),
            (&["vramtrace", "record", "--", "--"], &["--"]),
        ] {
            let Command::Record(r) = Cli::try_parse_args(args).unwrap().command else {
                panic!()
            };
            assert_eq!(r.command, command, "{args:?}");
        }
    }

    #[test]
    fn serve_listens_on_loopback_by_default_and_refuses_an_empty_double_dash() {
        let Command::Serve(s) = Cli::try_parse_args(["vramtrace", "serve"]).unwrap().command else {
            panic!()
        };
        assert_eq!(s.listen.to_string(), "127.0.0.1:9477");
        assert_eq!(s.top, 20);
        let err = Cli::try_parse_args(["vramtrace", "serve", "--"]).unwrap_err();
        assert!(
            err.to_string().contains("`serve --` needs the command"),
            "{err}"
        );
        // A replay takes no tracing options.
        assert!(Cli::try_parse_args(["vramtrace", "serve", "--replay", "t", "-p", "1"]).is_err());
    }

    #[test]
    fn record_takes_nvml_options() {
        let cli =
            Cli::try_parse_from(["vramtrace", "record", "--nvml-interval", "250", "--no-nvml"])
                .unwrap();
        let Command::Record(r) = cli.command else {
            panic!()
        };
        assert_eq!((r.nvml_interval, r.no_nvml), (250, true));
    }

    #[test]
    fn record_takes_a_policy_and_a_signal() {
        let cli = Cli::try_parse_from([
            "vramtrace",
            "record",
            "--policy",
            "vram-only",
            "--on-violation",
            "signal:SIGUSR1",
        ])
        .unwrap();
        let Command::Record(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.policy, Policy::VramOnly);
        assert_eq!(r.on_violation, Some(OnViolation::Signal(libc::SIGUSR1)));
        let r = Cli::try_parse_from(["vramtrace", "record"]).unwrap();
        let Command::Record(r) = r.command else {
            panic!()
        };
        assert_eq!((r.policy, r.on_violation), (Policy::Report, None));
        for bad in ["signal:SIGNOPE", "signal:0", "signal:99", "kill", "abort:6"] {
            assert!(
                Cli::try_parse_from(["vramtrace", "record", "--on-violation", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn signal_names_and_numbers() {
        for (s, n) in [
            ("SIGABRT", 6),
            ("ABRT", 6),
            ("abrt", 6),
            ("SIGSTOP", 19),
            ("6", 6),
            ("SIGUSR1", 10),
        ] {
            assert_eq!(parse_signal(s), Ok(n), "{s}");
        }
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("-1").is_err());
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

/// How call stacks are captured, for every command that traces.
#[derive(Args, Debug, Clone)]
pub struct StackArgs {
    /// How call stacks are captured: `dwarf` copies the stack of each allocating call and
    /// unwinds it from the libraries' CFI (no frame pointers needed); `fp` follows frame
    /// pointers in the kernel (cheaper, complete only through code built with them); `off`
    /// records the immediate caller only.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = StackMode::Dwarf)]
    pub stacks: StackMode,
    /// Same as `--stacks off`.
    #[arg(long, conflicts_with = "stacks")]
    pub no_stacks: bool,
    /// Stop each new process at its first driver call (SIGSTOP) until its command line and
    /// mappings are read, then let it go on (SIGCONT): stacks and names even for processes
    /// that end milliseconds later. An interactive shell that runs such a process in the
    /// foreground sees it stop; meant for machine-wide recording of short-lived jobs.
    #[arg(long)]
    pub hold_new: bool,
}

impl StackArgs {
    /// The mode chosen.
    pub fn mode(&self) -> StackMode {
        if self.no_stacks {
            StackMode::Off
        } else {
            self.stacks
        }
    }
}
