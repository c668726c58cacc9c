//! The benchmark's caller: loads a driver library, says `ready`, waits for a line on stdin (so
//! that tracers attach first), then calls `cuMemAlloc_v2(&p, 1 MiB)` in a tight loop on
//! THREADS threads, CALLS in all, without `cuInit`: NVIDIA's driver and the simulated one both
//! return at once with an error (3, not initialized), so what is measured is the call and
//! whatever probes sit on it. Prints one JSON line.
//!
//! Usage: callloop LIB CALLS THREADS

use std::{
    io::{BufRead as _, Write as _},
    sync::{Arc, Barrier},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

type CuMemAlloc = unsafe extern "C" fn(*mut u64, usize) -> i32;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [lib, calls, threads] = args.as_slice() else {
        bail!("usage: callloop LIB CALLS THREADS");
    };
    let calls: u64 = calls.parse().context("CALLS")?;
    let threads: u64 = threads.parse().context("THREADS")?;
    if threads == 0 {
        bail!("THREADS must be at least 1");
    }
    // SAFETY: loading a CUDA driver library runs its initializers, which is what every CUDA
    // program does.
    let library =
        unsafe { libloading::Library::new(lib) }.with_context(|| format!("loading {lib}"))?;
    // SAFETY: cuMemAlloc_v2 has this C signature in cuda.h.
    let alloc: CuMemAlloc = *unsafe { library.get::<CuMemAlloc>(b"cuMemAlloc_v2\0") }
        .with_context(|| format!("{lib} has no cuMemAlloc_v2"))?;

    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;

    let per_thread = calls / threads;
    let barrier = Arc::new(Barrier::new(threads as usize));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let mut ret = 0;
                for _ in 0..per_thread {
                    let mut p = 0u64;
                    // SAFETY: `p` is a valid out-pointer for the device address.
                    ret = unsafe { alloc(std::hint::black_box(&mut p), 1 << 20) };
                }
                (start.elapsed(), ret)
            })
        })
        .collect();
    let mut total_ns = 0.0;
    let mut ret = 0;
    for w in workers {
        let (elapsed, r) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a calling thread panicked"))?;
        total_ns += elapsed.as_nanos() as f64;
        ret = r;
    }
    // Per call as each thread saw it, averaged over threads.
    let ns_per_call = if per_thread == 0 {
        0.0
    } else {
        total_ns / (threads * per_thread) as f64
    };
    println!(
        "{}",
        serde_json::json!({
            "pid": std::process::id(),
            "threads": threads,
            "calls": threads * per_thread,
            "ns_per_call": ns_per_call,
            "ret": ret,
        })
    );
    drop(library);
    Ok(())
}
