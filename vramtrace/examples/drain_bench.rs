//! What the path that drains the ring buffer costs per event, with stacks symbolized on it
//! (as recording once did) and with stacks only normalized there and symbolized on the
//! worker thread (as recording does now). Every event carries a stack never seen before
//! (the worst case: a process that has just started, or a large library reached for the
//! first time), its frames spread over this program's code and libc's. Prints figures;
//! asserts nothing.
//!
//! `cargo run --release -p vramtrace --example drain_bench`

use std::{fs, time::Instant};

use vramtrace::{
    api::{APIS, Hooked, is_variant},
    decode::{Converter, Environment, RawEvent},
    stacks::{Job, StackNormalizer, StackResolver, SymbolWorker},
    trace::{Frame, Process, Record},
};
use vramtrace_common::{CallEvent, EVENT_CALL};

const EVENTS: usize = 2_000;
const FRAMES: usize = 12;

/// The executable mappings of this process: (start, end) of this program's and libc's.
fn code_ranges() -> Vec<(u64, u64)> {
    let exe = fs::read_link("/proc/self/exe").expect("own exe");
    let maps = fs::read_to_string("/proc/self/maps").expect("own maps");
    maps.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let path = *f.get(5)?;
            let ours = path == exe.to_string_lossy() || path.contains("/libc.so");
            if f[1] != "r-xp" || !ours {
                return None;
            }
            let (s, e) = f[0].split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .collect()
}

/// The walks the "kernel" recorded: stack id `i` is `FRAMES` addresses spread over the code.
fn walks(ranges: &[(u64, u64)]) -> Vec<Vec<u64>> {
    let span: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    let at = |k: u64| {
        let mut k = k % span;
        for (s, e) in ranges {
            if k < e - s {
                return s + k;
            }
            k -= e - s;
        }
        ranges[0].0
    };
    (0..EVENTS as u64)
        .map(|i| {
            // The probed instruction first; then frames a prime stride apart.
            std::iter::once(0)
                .chain((0..FRAMES as u64).map(|j| at((i * FRAMES as u64 + j) * 7_919 + 16)))
                .collect()
        })
        .collect()
}

/// Recording's environment with its stack step swapped: normalize, and maybe symbolize.
struct Env<'a> {
    walks: &'a [Vec<u64>],
    inline: Option<StackResolver>,
    normalizer: StackNormalizer,
    last: Option<vramtrace::stacks::Normalized>,
}

impl Environment for Env<'_> {
    fn process(&mut self, pid: u32) -> Option<Process> {
        self.normalizer.remember(pid);
        Some(Process {
            pid,
            comm: "bench".into(),
            ..Process::default()
        })
    }
    fn stack(&mut self, stack_id: u32) -> Option<Vec<u64>> {
        self.walks.get(stack_id as usize).cloned()
    }
    fn frames(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        match &mut self.inline {
            Some(resolver) => resolver.resolve(pid, addrs),
            None => {
                let n = self.normalizer.normalize(pid, addrs);
                let frames = n.frames.clone();
                self.last = Some(n);
                frames
            }
        }
    }
}

fn events(api: u32) -> Vec<RawEvent> {
    let pid = std::process::id();
    (0..EVENTS)
        .map(|i| {
            RawEvent::Call(CallEvent {
                kind: EVENT_CALL,
                api,
                pid,
                tid: pid,
                args: [0, 1 << 20, 0, 0, 0, 0],
                out: [0x7f00_0000_0000 + (i as u64) * (1 << 20), 0],
                stack_id: i as i64,
                ..CallEvent::default()
            })
        })
        .collect()
}

struct Figures {
    mean_us: f64,
    max_us: f64,
    total_ms: f64,
}

fn run(walks: &[Vec<u64>], inline: bool, worker: Option<&mut SymbolWorker>) -> Figures {
    let def = APIS
        .iter()
        .find(|d| is_variant("cuMemAlloc_v2", d.base))
        .expect("cuMemAlloc is hooked");
    let mut converter = Converter::new(vec![Hooked::new(def, "cuMemAlloc_v2")]);
    let mut env = Env {
        walks,
        inline: inline.then(StackResolver::new),
        normalizer: StackNormalizer::new(),
        last: None,
    };
    let mut worker = worker;
    let mut out = Vec::new();
    let mut per_event = Vec::with_capacity(EVENTS);
    let started = Instant::now();
    for ev in events(0) {
        let t = Instant::now();
        converter.convert(&ev, &mut env, &mut out);
        for rec in out.drain(..) {
            if let (Record::Stack(s), Some(w), Some(stack)) =
                (&rec, worker.as_deref_mut(), env.last.take())
                && stack.needs_symbols()
            {
                w.submit(Job { id: s.id, stack });
            }
        }
        per_event.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    Figures {
        mean_us: per_event.iter().sum::<f64>() / per_event.len() as f64,
        max_us: per_event.iter().copied().fold(0.0, f64::max),
        total_ms,
    }
}

fn main() {
    let ranges = code_ranges();
    let walks = walks(&ranges);
    println!("{EVENTS} events, each with a new stack of {FRAMES} frames in this program and libc");
    println!("{:<44} {:>12} {:>12}", "drain path", "µs/event", "max µs");

    let before = run(&walks, true, None);
    println!(
        "{:<44} {:>12.1} {:>12.0}",
        "normalize + symbolize (before)", before.mean_us, before.max_us
    );

    let mut worker = SymbolWorker::spawn().expect("symbolizer thread");
    let after = run(&walks, false, Some(&mut worker));
    println!(
        "{:<44} {:>12.1} {:>12.0}",
        "normalize only, symbols on the worker (now)", after.mean_us, after.max_us
    );
    let t = Instant::now();
    let mut symbolized = 0;
    while let Some(job) = worker.wait_done() {
        symbolized += job.stack.frames.iter().filter(|f| f.sym.is_some()).count();
    }
    println!(
        "worker: {symbolized} frames named, done {:.0} ms after the drain ({:.0} ms drain)",
        t.elapsed().as_secs_f64() * 1e3,
        after.total_ms
    );
    println!(
        "drain path {:.1}x faster per event; its longest stall {:.0} ms -> {:.1} ms",
        before.mean_us / after.mean_us,
        before.max_us / 1e3,
        after.max_us / 1e3
    );
}
