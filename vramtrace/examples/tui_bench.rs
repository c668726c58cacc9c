//! What the live view costs: frame time with 100,000 live allocations at 1,000 events/s,
//! and the CPU of a replay at 1,000 events/s. Prints figures; asserts nothing.
//!
//! `cargo run --release --example tui_bench`

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use ratatui::{Terminal, backend::TestBackend, layout::Rect};
use vramtrace::{
    trace::Record,
    tui::{App, Mode, Msg, render, replay::Replayer, synth, update},
};

const LIVE: usize = 100_000;
const FRAMES: usize = 200;
/// Events between two frames: 1,000 events/s at the view's 4 ticks/s.
const EVENTS_PER_FRAME: usize = 250;
const W: u16 = 200;
const H: u16 = 60;

fn stats(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let p99 = ms[(ms.len() * 99 / 100).min(ms.len() - 1)];
    let max = ms[ms.len() - 1];
    println!("{name:<28} mean {mean:7.3} ms   p99 {p99:7.3} ms   max {max:7.3} ms");
}

/// Frees and re-allocates among the 100,000, so the number live stays the same.
fn churn(frame: usize, ts: u64) -> Vec<Record> {
    let mut v = Vec::with_capacity(EVENTS_PER_FRAME);
    for e in 0..EVENTS_PER_FRAME / 2 {
        let i = ((frame * EVENTS_PER_FRAME / 2 + e) % LIVE) as u64;
        let addr = 0x7f00_0000_0000 + i * (1 << 21);
        let t = ts + e as u64 * 2_000;
        v.push(synth::free(1, t, addr));
        v.push(synth::alloc(
            1,
            t + 1_000,
            addr,
            (1 + (i + frame as u64) % 512) << 12,
            Some((i % 64) as u32),
        ));
    }
    v
}

fn frames() {
    let mut app = App::new(Mode::Live {
        scope: "bench".into(),
        output: None,
    });
    app.size = Rect::new(0, 0, W, H);
    update(
        &mut app,
        Msg::Records(vec![Record::Header(Box::new(synth::header()))]),
    );
    let t = Instant::now();
    update(&mut app, Msg::Records(synth::many(LIVE)));
    println!(
        "applying {LIVE} allocations to the Ledger: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut term = Terminal::new(TestBackend::new(W, H)).expect("test terminal");
    let mut now = synth::T0 + 1_000_000_000;
    let (mut upd, mut draw, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for f in 0..FRAMES {
        now += 250_000_000;
        let recs = churn(f, now - 200_000_000);
        let t0 = Instant::now();
        update(&mut app, Msg::Records(recs));
        update(&mut app, Msg::Tick { now_ns: now });
        let t1 = Instant::now();
        term.draw(|fr| render(&app, fr)).expect("draw");
        let t2 = Instant::now();
        upd.push((t1 - t0).as_secs_f64() * 1e3);
        draw.push((t2 - t1).as_secs_f64() * 1e3);
        total.push((t2 - t0).as_secs_f64() * 1e3);
    }
    assert_eq!(app.view.allocs.len(), LIVE);
    println!("{FRAMES} frames at {W}x{H}, {LIVE} live allocations in the selected process:");
    stats("  update (records + refresh)", upd);
    stats("  render", draw);
    stats("  frame (both)", total);
}

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data that getrusage fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF always exists.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A replay at 1,000 events/s through the real producer thread and the real update and
/// render, at the view's tick, for `secs` seconds of wall time.
fn replay_cpu(secs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.jsonl");
    let mut recs = synth::many(LIVE);
    // 1,000 events/s after the 100,000 are made (they take 0.1 s of trace time).
    let start = synth::T0 + 200_000_000;
    for f in 0..(secs as usize + 5) * 4 {
        recs.extend(churn(f, start + f as u64 * 250_000_000));
    }
    synth::write_trace(&path, &recs).expect("writing the trace");
    let (tx, rx) = mpsc::channel();
    let (_ctl_tx, ctl_rx) = mpsc::channel();
    let producer = Replayer::new(path, 1.0, tx.clone(), ctl_rx);
    let mut app = App::new(Mode::Replay {
        file: "bench".into(),
        speed: 1.0,
    });
    app.size = Rect::new(0, 0, W, H);
    let mut term = Terminal::new(TestBackend::new(W, H)).expect("test terminal");
    // Let the 100,000 land first; measure the steady state.
    let handle = thread::spawn(move || producer.run());
    let warmup = Instant::now() + Duration::from_millis(500);
    let tick = Duration::from_millis(250);
    let mut next_tick = Instant::now() + tick;
    let mut measuring: Option<(Instant, f64)> = None;
    loop {
        let now = Instant::now();
        if measuring.is_none() && now >= warmup {
            measuring = Some((now, cpu_seconds()));
        }
        if let Some((t0, c0)) = measuring
            && now.duration_since(t0) >= Duration::from_secs(secs)
        {
            let wall = now.duration_since(t0).as_secs_f64();
            let cpu = cpu_seconds() - c0;
            println!(
                "replay at 1000 events/s, {LIVE} live, {W}x{H} at 4 frames/s: {:.2} % of a core ({cpu:.3} s CPU in {wall:.1} s)",
                cpu / wall * 100.0
            );
            break;
        }
        match rx.recv_timeout(next_tick.saturating_duration_since(now)) {
            Ok(msg) => {
                update(&mut app, msg);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                next_tick += tick;
                update(&mut app, Msg::Tick { now_ns: 0 });
                term.draw(|f| render(&app, f)).expect("draw");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    println!(
        "  replay position {:.1} s, {} live in the view",
        app.replay
            .map(|r| (r.pos_ns - r.start_ns) as f64 / 1e9)
            .unwrap_or(0.0),
        app.view.allocs.len()
    );
    drop(rx);
    drop(tx);
    drop(_ctl_tx);
    let _ = handle.join();
}

fn main() {
    frames();
    let secs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    replay_cpu(secs);
}
