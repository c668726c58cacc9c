//! `cargo xtask bench`: what probes on a driver entry point add per call.
//!
//! One caller program (`callloop`) calls `cuMemAlloc_v2` in a tight loop, on 1 and on 4
//! threads, against NVIDIA's libcuda and against the simulated driver, under:
//!
//! - nothing (`bare`);
//! - tracefs uprobe + uretprobe events (`uprobe_events`, no BPF) on the symbol, and on the
//!   instruction that `vramtrace::probe::placement` chooses: the kernel's own floor;
//! - an equivalent bpftrace script (entry stores a timestamp per thread, return counts);
//! - `vramtrace record -p PID`, with `--probe-at entry` and with the default `auto`.
//!
//! Each row: ns per call as the caller measured it, what that adds to `bare`, the events the
//! tracer received against the calls made, and the events it lost.

use std::{
    fs::{self, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use vramtrace::probe::placement::{self, ProbeAt};

const NVIDIA_LIBCUDA: &str = "/usr/lib/x86_64-linux-gnu/libcuda.so.1";
const SYMBOL: &str = "cuMemAlloc_v2";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Driver calls per run, split over the threads.
    #[arg(long, default_value_t = 200_000)]
    calls: u64,
    /// NVIDIA's driver library.
    #[arg(long, default_value = NVIDIA_LIBCUDA)]
    nvidia: PathBuf,
    /// The simulated driver (built by this task unless --no-build).
    #[arg(long, default_value = "target/release/libsimcuda.so")]
    sim: PathBuf,
    /// The vramtrace binary (built by this task unless --no-build).
    #[arg(long, default_value = "target/release/vramtrace")]
    vramtrace: PathBuf,
    /// The caller program (built by this task unless --no-build).
    #[arg(long, default_value = "target/release/callloop")]
    callloop: PathBuf,
    /// Use the binaries as they are.
    #[arg(long)]
    no_build: bool,
    /// A CPython for the rows whose calls come from Python through ctypes (its frames are
    /// recorded in the stacks); default: 3.12 under ~/.pyenv, skipped when absent.
    #[arg(long)]
    python: Option<PathBuf>,
}

/// One measured configuration.
struct Row {
    mode: String,
    lib: String,
    threads: u64,
    calls: u64,
    ns_per_call: Option<f64>,
    events: Option<u64>,
    lost: Option<u64>,
    note: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark attaches uprobes and loads BPF programs: run it as root");
    }
    if !args.no_build {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "simcuda",
                "-p",
                "vramtrace",
                "-p",
                "xtask",
            ])
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release failed");
        }
    }
    let tracefs = tracefs_root()?;
    let bpftrace = which("bpftrace");
    let libs: [(&'static str, &Path); 2] = [("nvidia", &args.nvidia), ("sim", &args.sim)];
    let started = Instant::now();
    let mut rows = Vec::new();
    for (lib_name, lib) in libs {
        if !lib.exists() {
            eprintln!("xtask bench: {} is missing; skipping it", lib.display());
            continue;
        }
        let symbol_offset = symbol_file_offset(lib, SYMBOL)?;
        let site = placement::place(lib, symbol_offset, ProbeAt::Auto);
        eprintln!(
            "xtask bench: {lib_name}: {SYMBOL} at {symbol_offset:#x}, chosen +{}: {}",
            site.offset, site.reason
        );
        for threads in [1, 4] {
            let ctx = Ctx {
                args,
                lib,
                lib_name,
                threads,
                python: None,
            };
            rows.push(ctx.bare());
            rows.push(ctx.tracefs(&tracefs, "tracefs@symbol", symbol_offset));
            rows.push(ctx.tracefs(
                &tracefs,
                &format!("tracefs@+{}", site.offset),
                symbol_offset + site.offset,
            ));
            match &bpftrace {
                Some(b) => rows.push(ctx.bpftrace(b)),
                None => rows.push(Row::failed(
                    "bpftrace",
                    &ctx,
                    "bpftrace not installed".into(),
                )),
            }
            rows.push(ctx.vramtrace(ProbeAt::Entry, "dwarf"));
            for stacks in ["off", "fp", "dwarf"] {
                rows.push(ctx.vramtrace(ProbeAt::Auto, stacks));
            }
        }
    }
    // Calls from Python: the stacks run through the interpreter, whose frames are recorded.
    let python = args.python.clone().or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".pyenv/versions/3.12.1/bin/python3");
        p.exists().then_some(p)
    });
    match &python {
        Some(python) if args.sim.exists() => {
            for threads in [1, 4] {
                let ctx = Ctx {
                    args,
                    lib: &args.sim,
                    lib_name: "sim",
                    threads,
                    python: Some(python),
                };
                rows.push(ctx.bare());
                for stacks in ["off", "fp", "dwarf"] {
                    rows.push(ctx.vramtrace(ProbeAt::Auto, stacks));
                }
            }
        }
        _ => eprintln!("xtask bench: no CPython 3.12 (--python); skipping the Python rows"),
    }
    print_table(&rows);
    println!(
        "lost: for tracefs, events the ftrace ring buffer overwrote (nobody reads it during the \
         run); for bpftrace and vramtrace, events the tracer dropped"
    );
    eprintln!(
        "xtask bench: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Ctx<'a> {
    args: &'a BenchArgs,
    lib: &'a Path,
    lib_name: &'static str,
    threads: u64,
    /// The CPython that runs the Python caller, for the rows whose calls come from Python.
    python: Option<&'a Path>,
}

impl Ctx<'_> {
    /// The library column: the driver, and `+py` when the calls come from Python.
    fn lib_label(&self) -> String {
        match self.python {
            Some(_) => format!("{}+py", self.lib_name),
            None => self.lib_name.to_string(),
        }
    }
}

impl Row {
    fn failed(mode: &str, ctx: &Ctx<'_>, note: String) -> Row {
        Row {
            mode: mode.into(),
            lib: ctx.lib_label(),
            threads: ctx.threads,
            calls: 0,
            ns_per_call: None,
            events: None,
            lost: None,
            note,
        }
    }
}

/// The caller, loaded and waiting for the go.
struct Caller {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Caller {
    fn start(ctx: &Ctx<'_>) -> Result<Caller> {
        let mut command = match ctx.python {
            Some(python) => {
                let mut c = Command::new(python);
                c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/callloop.py"));
                c
            }
            None => Command::new(&ctx.args.callloop),
        };
        let mut child = command
            .arg(ctx.lib)
            .arg(ctx.args.calls.to_string())
            .arg(ctx.threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the caller")?;
        let mut stdout = BufReader::new(child.stdout.take().context("caller stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("the caller did not get ready: {line:?}");
        }
        Ok(Caller { child, stdout })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it run; returns (ns per call, calls made).
    fn go(&mut self) -> Result<(f64, u64)> {
        writeln!(self.child.stdin.take().context("caller stdin")?, "go")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the caller failed: {status}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("caller said {line:?}"))?;
        Ok((
            v["ns_per_call"].as_f64().context("ns_per_call")?,
            v["calls"].as_u64().context("calls")?,
        ))
    }
}

impl Drop for Caller {
    /// A caller never told to go (its tracer failed) must not run on unobserved.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Ctx<'_> {
    fn row(&self, mode: &str, result: Result<(f64, u64, Option<u64>, Option<u64>)>) -> Row {
        match result {
            Ok((ns, calls, events, lost)) => Row {
                mode: mode.into(),
                lib: self.lib_label(),
                threads: self.threads,
                calls,
                ns_per_call: Some(ns),
                events,
                lost,
                note: String::new(),
            },
            Err(e) => Row::failed(mode, self, format!("{e:#}")),
        }
    }

    fn bare(&self) -> Row {
        let result = Caller::start(self)
            .and_then(|mut c| c.go())
            .map(|(ns, calls)| (ns, calls, None, None));
        self.row("bare", result)
    }

    /// uprobe + uretprobe trace events at `file_offset`, written to the ftrace ring buffer.
    fn tracefs(&self, root: &Path, mode: &str, file_offset: u64) -> Row {
        let result = (|| {
            let group = format!("vtbench{}", std::process::id());
            let probes = TracefsProbes::add(root, &group, self.lib, file_offset)?;
            fs::write(root.join("trace"), "").context("clearing the trace buffer")?;
            let mut caller = Caller::start(self)?;
            let (ns, calls) = caller.go()?;
            let (entries, returns) = probes.hits()?;
            let lost = overrun(root)?;
            drop(probes);
            if entries != returns {
                eprintln!("xtask bench: {mode}: {entries} entry hits, {returns} return hits");
            }
            Ok((ns, calls, Some(returns), Some(lost)))
        })();
        self.row(mode, result)
    }

    fn bpftrace(&self, bpftrace: &Path) -> Row {
        let result = (|| {
            let lib = self.lib.display();
            let script = format!(
                "uprobe:{lib}:{SYMBOL} {{ @s[tid] = nsecs; }} uretprobe:{lib}:{SYMBOL} {{ @c = count(); }}"
            );
            let mut caller = Caller::start(self)?;
            let mut tracer = Command::new(bpftrace)
                .args(["-p", &caller.pid().to_string(), "-e", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting bpftrace")?;
            let mut out = BufReader::new(tracer.stdout.take().context("bpftrace stdout")?);
            let mut line = String::new();
            out.read_line(&mut line)?;
            if !line.starts_with("Attaching") {
                let _ = tracer.kill();
                bail!("bpftrace said {line:?}");
            }
            // bpftrace says "Attaching" before it attaches.
            std::thread::sleep(Duration::from_secs(2));
            let (ns, calls) = caller.go()?;
            interrupt(&tracer);
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut out, &mut rest)?;
            tracer.wait()?;
            let events = rest
                .lines()
                .find_map(|l| l.strip_prefix("@c: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            let lost = rest
                .lines()
                .filter_map(|l| l.strip_prefix("Lost "))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            Ok((ns, calls, Some(events), Some(lost)))
        })();
        self.row("bpftrace", result)
    }

    fn vramtrace(&self, probe_at: ProbeAt, stacks: &str) -> Row {
        let mode = match probe_at {
            ProbeAt::Entry => format!("vramtrace entry {stacks}"),
            ProbeAt::Auto => format!("vramtrace auto {stacks}"),
        };
        let result = (|| {
            let dir = std::env::temp_dir().join(format!("vtbench-{}", std::process::id()));
            fs::create_dir_all(&dir)?;
            let trace = dir.join("trace.jsonl");
            let _ = fs::remove_file(&trace);
            let mut caller = Caller::start(self)?;
            let probe_at = match probe_at {
                ProbeAt::Entry => "entry",
                ProbeAt::Auto => "auto",
            };
            let mut recorder = Command::new(&self.args.vramtrace)
                .arg("record")
                .arg("--libcuda")
                .arg(self.lib)
                .args([
                    "-p",
                    &caller.pid().to_string(),
                    "--probe-at",
                    probe_at,
                    "--stacks",
                    stacks,
                    "-o",
                ])
                .arg(&trace)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", self.args.vramtrace.display()))?;
            // The header is written once the probes are attached.
            let deadline = Instant::now() + Duration::from_secs(30);
            while fs::read_to_string(&trace)
                .map(|t| !t.contains('\n'))
                .unwrap_or(true)
            {
                if let Some(status) = recorder.try_wait()? {
                    let mut err = String::new();
                    if let Some(mut e) = recorder.stderr.take() {
                        std::io::Read::read_to_string(&mut e, &mut err)?;
                    }
                    bail!("vramtrace record exited ({status}): {}", err.trim());
                }
                if Instant::now() > deadline {
                    let _ = recorder.kill();
                    bail!("vramtrace record wrote no header in 30 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let (ns, calls) = caller.go()?;
            // Let the reader drain before stopping.
            std::thread::sleep(Duration::from_millis(500));
            interrupt(&recorder);
            recorder.wait()?;
            let text = fs::read_to_string(&trace)?;
            let footer: serde_json::Value = text
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["type"] == "footer")
                .context("the trace has no footer")?;
            let events = footer["counts"]
                .as_object()
                .map(|counts| {
                    counts
                        .iter()
                        .filter(|(kind, _)| {
                            !matches!(kind.as_str(), "process" | "stack" | "lost" | "exit")
                        })
                        .filter_map(|(_, n)| n.as_u64())
                        .sum()
                })
                .unwrap_or(0);
            let lost = footer["lost_events"].as_u64().unwrap_or(0);
            let stacks_failed = footer["stack_failed"].as_u64().unwrap_or(0);
            let _ = fs::remove_dir_all(&dir);
            Ok((ns, calls, Some(events), Some(lost), stacks_failed))
        })();
        let failed = result.as_ref().map_or(0, |r| r.4);
        let mut row = self.row(&mode, result.map(|(ns, c, e, l, _)| (ns, c, e, l)));
        if failed > 0 {
            row.note = format!("{failed} stacks not captured");
        }
        row
    }
}

fn interrupt(child: &Child) {
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

/// An entry and a return probe in `uprobe_events`, removed on drop.
struct TracefsProbes {
    root: PathBuf,
    group: String,
}

impl TracefsProbes {
    fn add(root: &Path, group: &str, lib: &Path, file_offset: u64) -> Result<TracefsProbes> {
        let probes = TracefsProbes {
            root: root.to_path_buf(),
            group: group.to_string(),
        };
        let lib = lib.display();
        append(
            &root.join("uprobe_events"),
            &format!(
                "p:{group}/entry {lib}:{file_offset:#x}\nr:{group}/ret {lib}:{file_offset:#x}\n"
            ),
        )?;
        fs::write(root.join(format!("events/{group}/enable")), "1")
            .context("enabling the uprobe events")?;
        Ok(probes)
    }

    /// Hits of the entry and the return probe, from `uprobe_profile`.
    fn hits(&self) -> Result<(u64, u64)> {
        let profile = fs::read_to_string(self.root.join("uprobe_profile"))?;
        let hits = |event: &str| {
            profile
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() == 3 && f[1] == event)
                .and_then(|f| f[2].parse().ok())
                .unwrap_or(0)
        };
        Ok((hits("entry"), hits("ret")))
    }
}

impl Drop for TracefsProbes {
    fn drop(&mut self) {
        let _ = fs::write(self.root.join(format!("events/{}/enable", self.group)), "0");
        let g = &self.group;
        let _ = append(
            &self.root.join("uprobe_events"),
            &format!("-:{g}/entry\n-:{g}/ret\n"),
        );
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {text:?} to {}", path.display()))
}

/// Events the ftrace ring buffer overwrote (nobody reads it during the run), over all CPUs.
fn overrun(root: &Path) -> Result<u64> {
    let mut total = 0;
    for cpu in fs::read_dir(root.join("per_cpu"))? {
        let stats = fs::read_to_string(cpu?.path().join("stats"))?;
        total += stats
            .lines()
            .filter_map(|l| l.strip_prefix("overrun: "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

fn tracefs_root() -> Result<PathBuf> {
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(root).join("uprobe_events").exists() {
            return Ok(root.into());
        }
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()?;
    if !status.success() {
        bail!("tracefs is not mounted and mounting it failed");
    }
    Ok("/sys/kernel/tracing".into())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// The file offset of an exported function, as uprobes want it.
fn symbol_file_offset(lib: &Path, name: &str) -> Result<u64> {
    use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
    let data = fs::read(lib).with_context(|| format!("reading {}", lib.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("parsing {}", lib.display()))?;
    let sym = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(name) && !s.is_undefined())
        .with_context(|| format!("{} does not export {name}", lib.display()))?;
    let addr = sym.address();
    file.segments()
        .find(|s| addr >= s.address() && addr < s.address() + s.size())
        .map(|s| addr - s.address() + s.file_range().0)
        .with_context(|| format!("{name} lies in no segment of {}", lib.display()))
}

fn print_table(rows: &[Row]) {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "{:<22} {:<7} {:>7} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "mode", "lib", "threads", "calls", "ns/call", "added", "events", "lost"
    );
    for row in rows {
        let bare = rows
            .iter()
            .find(|b| b.mode == "bare" && b.lib == row.lib && b.threads == row.threads)
            .and_then(|b| b.ns_per_call);
        let ns = row
            .ns_per_call
            .map_or("-".to_string(), |ns| format!("{ns:.0}"));
        let added = match (row.ns_per_call, bare) {
            (Some(ns), Some(bare)) if row.mode != "bare" => format!("{:.0}", ns - bare),
            _ => "-".to_string(),
        };
        println!(
            "{:<22} {:<7} {:>7} {:>9} {:>10} {:>10} {:>9} {:>9}{}",
            row.mode,
            row.lib,
            row.threads,
            row.calls,
            ns,
            added,
            opt(row.events),
            opt(row.lost),
            if row.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", row.note)
            }
        );
    }
}
