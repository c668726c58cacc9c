//! A `vramtrace serve` for the web page's CPU benchmark (`web/e2e/bench.mjs`): 100,000 live
//! allocations in 16 processes, through the Ledger, and one allocation made and one freed
//! every 200 ms, so that the WebSocket carries a change 5 times a second. Serves the real
//! router (the embedded page included) until killed.
//!
//! `cargo run --release -p vramtrace --example web_bench_server -- 127.0.0.1:0`

use std::{sync::Arc, time::Duration};

use vramtrace::{
    serve::{self, Config, Served, Shared, Tracing, ws},
    trace::Record,
    tui::synth,
};

const PROCS: u32 = 16;
const ALLOCS: u64 = 100_000;

fn main() -> anyhow::Result<()> {
    let listen: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let mut served = Served::new(Tracing::Live);
    served.apply(&[Record::Header(Box::new(synth::header()))]);
    let mut recs = Vec::new();
    for p in 1..=PROCS {
        recs.push(synth::process(p, 10_000 + p, &format!("worker-{p}")));
    }
    recs.push(synth::stack(
        1,
        &["train_step", "forward", "c10::cuda::alloc"],
    ));
    for i in 0..ALLOCS {
        let proc = 1 + (i % u64::from(PROCS)) as u32;
        let addr = 0x7f00_0000_0000 + i * (1 << 21);
        let bytes = (1 + i % 512) << 12;
        recs.push(synth::alloc(
            proc,
            synth::T0 + i * 1_000,
            addr,
            bytes,
            Some(1),
        ));
    }
    served.apply(&recs);
    let config = Config {
        version: env!("CARGO_PKG_VERSION"),
        listen,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("serving on http://{}/", listener.local_addr()?);
        tokio::spawn(ws::produce(shared.clone()));
        let churn = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut i = ALLOCS;
            loop {
                tick.tick().await;
                let proc = 1 + (i % u64::from(PROCS)) as u32;
                let ts = synth::T0 + i * 1_000;
                let old = 0x7f00_0000_0000 + (i - ALLOCS) * (1 << 21);
                let new = 0x7f00_0000_0000 + i * (1 << 21);
                churn.lock().apply(&[
                    synth::alloc(proc, ts, new, (1 + i % 512) << 12, Some(1)),
                    synth::free(1 + ((i - ALLOCS) % u64::from(PROCS)) as u32, ts + 1, old),
                ]);
                i += 1;
            }
        });
        axum::serve(listener, serve::router(shared)).await?;
        anyhow::Ok(())
    })
}
