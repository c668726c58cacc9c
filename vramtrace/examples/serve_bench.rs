//! What `vramtrace serve` costs with 1,000 traced processes holding 100,000 live
//! allocations: a `/metrics` scrape and a `/ws` full-state message (built in process and over
//! HTTP on loopback), a change message, and the server's memory. Prints figures; asserts
//! nothing.
//!
//! `cargo run --release -p vramtrace --example serve_bench`

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Instant,
};

use vramtrace::{
    serve::{self, Config, Served, Shared, Tracing, metrics, snapshot_json, ws},
    trace::Record,
    tui::synth,
};

const PROCS: u32 = 1_000;
const ALLOCS: u64 = 100_000;
const RUNS: usize = 50;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn stats(name: &str, mut ms: Vec<f64>, bytes: usize) {
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let p99 = ms[(ms.len() * 99 / 100).min(ms.len() - 1)];
    println!(
        "| {name:<36} | {mean:8.2} | {p99:8.2} | {:>9.1} |",
        bytes as f64 / 1024.0
    );
}

fn get(addr: SocketAddr, path: &str) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    buf.len()
}

fn main() {
    let rss0 = rss_kib();
    let mut served = Served::new(Tracing::Live);
    served.apply(&[Record::Header(Box::new(synth::header()))]);
    let t = Instant::now();
    let mut recs = Vec::with_capacity(ALLOCS as usize + PROCS as usize);
    for p in 1..=PROCS {
        recs.push(synth::process(p, 10_000 + p, &format!("worker-{p}")));
    }
    for i in 0..ALLOCS {
        let proc = 1 + (i % u64::from(PROCS)) as u32;
        let addr = 0x7f00_0000_0000 + i * (1 << 21);
        let bytes = (1 + i % 512) << 12;
        recs.push(synth::alloc(proc, synth::T0 + i * 1_000, addr, bytes, None));
    }
    served.apply(&recs);
    drop(recs);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss1 = rss_kib();
    println!(
        "{PROCS} processes, {ALLOCS} live allocations applied through the Ledger in {build_ms:.0} ms"
    );

    let mut m = Vec::new();
    let mut m_bytes = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let text = metrics::render(
            &served.model,
            &served.ledger,
            &[],
            20,
            metrics::Format::Prometheus,
        );
        m.push(t.elapsed().as_secs_f64() * 1e3);
        m_bytes = text.len();
    }
    let mut full = Vec::new();
    let mut full_bytes = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let text = serve::json_text(&snapshot_json(&served));
        full.push(t.elapsed().as_secs_f64() * 1e3);
        full_bytes = text.len();
    }
    // One process allocates once more: the change message a client gets.
    let before = snapshot_json(&served);
    served.apply(&[synth::alloc(
        7,
        synth::T0 + ALLOCS * 1_000 + 1,
        0x1000,
        1 << 20,
        None,
    )]);
    let after = snapshot_json(&served);
    let mut change = Vec::new();
    let mut change_bytes = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let d = ws::diff(&before, &after).expect("a change");
        let text = serve::json_text(&d);
        change.push(t.elapsed().as_secs_f64() * 1e3);
        change_bytes = text.len();
    }

    let config = Config {
        version: env!("CARGO_PKG_VERSION"),
        listen: ([127, 0, 0, 1], 0).into(),
        top: 20,
        replay: None,
        output: None,
        pids: Vec::new(),
        command: Vec::new(),
        stacks: vramtrace::probe::StackMode::default(),
        nvml_interval_ms: None,
        poll_interval_ms: 1000,
        token_required: false,
    };
    let shared = Arc::new(Shared::new(served, config, None));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = serve::router(shared.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });
    let (mut hm, mut hs) = (Vec::new(), Vec::new());
    let (mut hm_bytes, mut hs_bytes) = (0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        hm_bytes = get(addr, "/metrics");
        hm.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        hs_bytes = get(addr, "/api/snapshot");
        hs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rss2 = rss_kib();

    println!();
    println!("| what ({RUNS} runs)                      |  mean ms |   p99 ms |       KiB |");
    println!("|--------------------------------------|---------:|---------:|----------:|");
    stats("/metrics rendered (top 20)", m, m_bytes);
    stats("/metrics over HTTP on loopback", hm, hm_bytes);
    stats("/ws full state (= /api/snapshot)", full, full_bytes);
    stats("/api/snapshot over HTTP on loopback", hs, hs_bytes);
    stats("/ws change message (one process)", change, change_bytes);
    println!();
    println!(
        "memory (RSS): {:.1} MiB at start, {:.1} MiB with the state, {:.1} MiB after {} requests",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        rss2 as f64 / 1024.0,
        RUNS * 2
    );
}
