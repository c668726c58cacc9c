//! `vramtrace-workload`: simulated GPU workloads with known ground truth.
//!
//! It dlopens the driver library given by `--lib` (the simulated
//! `libsimcuda.so`, or NVIDIA's `libcuda.so.1`), resolves every entry point
//! through `cuGetProcAddress_v2` like a CUDA 12 runtime, runs a scenario, and
//! prints the ground truth as the last line of stdout: one JSON object. All
//! other output goes to stderr.

mod batch;
mod book;
mod driver;
mod graph;
mod ipc;
mod multicast;
mod probe;
mod rt;
mod scenarios;
mod sparse;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use crate::book::Book;
use crate::driver::Driver;
use crate::rt::Rt;
use crate::scenarios::Extra;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// Weights loaded and filled, a KV cache, then concurrent short-lived activations.
    LlmServer,
    /// Weights, pitched allocations and arrays, then steps of activations and optimizer state.
    Training,
    /// Stream-ordered allocation: default pool, created pools, trimming, destroying.
    Pools,
    /// Virtual memory management like PyTorch's expandable segments.
    Vmm,
    /// Managed, pinned and registered host memory.
    Host,
    /// 1 GiB allocations until out of memory, then exit status 1 without freeing.
    Oom,
    /// Created contexts with allocations, destroyed (device, pinned and managed memory go
    /// with them, a stream-ordered allocation outlives them); then the primary context.
    Contexts,
    /// Weights filled only partly from host (12% and 6% of each buffer), a KV cache with a
    /// small header copied from host, then serving.
    PartlyFilled,
    /// Device and host memory allocated, then exit(0) without freeing.
    ExitWithoutFree,
    /// A short run of every family.
    Mixed,
    /// Training-like steps where one call site leaks a buffer every step, beside a
    /// stream-ordered pool and a caching segment that retain memory by design.
    Leak,
    /// Every hooked entry point once, whatever the results.
    ProbeAll,
    /// CUDA graph memory nodes: three graphs allocating and freeing through alloc and free
    /// nodes, launches (one refused), cuMemFreeAsync of graph memory, a trim and the
    /// driver's graph-memory figures read along the way; 6 MiB live and 2 MiB held by the
    /// graph pool at exit.
    Graphs,
    /// Release thresholds: a pool keeps its threshold of reserved bytes through stream,
    /// per-thread stream, event and context synchronizations; the default pool keeps
    /// nothing.
    PoolRelease,
    /// Weights filled only through unified, 2D and 3D copies from host memory; a KV cache
    /// written only by device-to-device copies through the same entry points; then serving.
    Copies,
    /// Pools of managed memory and of host memory beside a device pool: their allocations
    /// are host memory; some freed, some live at exit.
    HostPools,
    /// A worker thread's cuMemAlloc_v2 springs the simulated driver's trap
    /// (SIMCUDA_TRAP=exit-thread or block:DIR, SIMCUDA_TRAP_BYTES=N): it ends the thread
    /// inside the call, or waits inside it until released.
    TrappedCall,
    /// 12 cycles of (cuCtxCreate, 1 MiB allocated in the new context, context destroyed)
    /// beside steady alloc/free churn from another call site; none of the 12 MiB is live at
    /// the end.
    CtxCycles,
    /// 1 GiB held on device 0, then 3 GiB asked of device 1 in a context created there, which
    /// fails; status 1 without freeing. Needs SIMCUDA_DEVICES=2 and SIMCUDA_CAPACITY=2G on
    /// the simulated driver.
    SecondGpuOom,
    /// A context on device 1 made through cuCtxCreate_v4 (resolved at CUDA 12.5) with flags 4
    /// and 24 MiB in it, then 2 MiB on device 0; nothing freed. Needs SIMCUDA_DEVICES=2.
    CtxV4,
    /// Two green contexts on device 1: 16 MiB allocated in the first, which is then
    /// destroyed (the memory stays: it is the primary context's, which the second still
    /// retains), 8 MiB in the second, 2 MiB on device 0. Needs SIMCUDA_DEVICES=2.
    GreenCtx,
    /// Memory shared with a second process that this one spawns (`ipc-importer`): 16 and
    /// 8 MiB shared by IPC handle (the 16 MiB freed while the importer maps it), 4 MiB by
    /// pool pointer, 2 MiB of VMM memory by POSIX descriptor; 12 MiB live at exit. The
    /// importer's ground truth is under `ipc.importer`.
    Ipc,
    /// The importing side of `ipc`, spawned by it.
    IpcImporter,
    /// Batches of copies (CUDA 12.8 and 13.0): 32 MiB of weights filled from host memory by
    /// `cuMemcpyBatchAsync_v2`, `cuMemcpyBatchAsync` and `cuMemcpy3DBatchAsync_v2`, an 8 MiB
    /// KV cache written by a batch of device-to-device copies, and a batch of six copies
    /// (the probe reads four). All live at exit.
    BatchCopies,
    /// Multicast objects: 4 MiB of weights bound by handle, released, then unbound; 4 MiB of
    /// KV cache bound by address, released and unmapped, kept until its object (mapped,
    /// released while mapped) is unmapped; 4 MiB of weights bound to a second object and
    /// released, live at exit (held by the binding alone).
    Multicast,
    /// Sparse arrays: 2 MiB of weights and 2 MiB of KV cache mapped into a sparse array
    /// (`cuMemMapArrayAsync`, `_ptsz`) and released, kept by the mappings until the weights
    /// are unmapped and the array destroyed; 2 MiB of weights mapped into a deferred-mapping
    /// array's mip tail, live at exit.
    SparseArrays,
}

#[derive(Parser, Debug)]
#[command(
    name = "vramtrace-workload",
    about = "Simulated CUDA workloads with known ground truth"
)]
struct Args {
    /// The driver library to dlopen (libsimcuda.so or libcuda.so.1).
    #[arg(long)]
    lib: String,
    /// The scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Threads for the concurrent phases.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
    /// Seed for the deterministic sizes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After the run, ask the driver (cuMemGetInfo_v2) how many bytes device 0
    /// has in use and compare with the ground truth (device plus pool-held
    /// bytes); adds "check" to the report. Meant for the simulated driver.
    #[arg(long)]
    check: bool,
    /// The CUDA version `probe-all` asks `cuGetProcAddress_v2` for (12000, 12050, 13000, ...):
    /// what a runtime of that version gets.
    #[arg(long, default_value_t = driver::CUDA_VERSION)]
    cuda_version: i32,
    /// Count the signals of this kind (USR1, SIGUSR2, 10, ...) that the process receives
    /// instead of dying of them; adds "signals_received" to the report. For the tracer's
    /// vram-only policy, which signals the thread at each host-memory call.
    #[arg(long, value_name = "SIG", value_parser = parse_signal)]
    handle_signal: Option<i32>,
    /// After the report, wait this many seconds before exiting, holding whatever the
    /// scenario left allocated: for a live observer (`vramtrace serve`, `top`).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    hold: f64,
}

static SIGNALS_RECEIVED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS_RECEIVED.fetch_add(1, Ordering::Relaxed);
}

fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let upper = s.to_ascii_uppercase();
    match upper.strip_prefix("SIG").unwrap_or(&upper) {
        "USR1" => Ok(libc::SIGUSR1),
        "USR2" => Ok(libc::SIGUSR2),
        "HUP" => Ok(libc::SIGHUP),
        "ABRT" => Ok(libc::SIGABRT),
        "TRAP" => Ok(libc::SIGTRAP),
        _ => Err(format!("signal {s:?} is not one this option handles")),
    }
}

/// Installs a handler that counts `sig` instead of its default action.
fn handle_signal(sig: i32) -> anyhow::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value; the fields are set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = count_signal as *const () as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t owned by `sa`.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        anyhow::bail!(
            "sigaction({sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn name(s: Scenario) -> String {
    s.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn report(scenario: Scenario, d: &Driver, book: &Book, peak_tolerance: u64, extra: Extra) -> Value {
    let s = book.summary();
    let st = d.stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = json!({
        "scenario": name(scenario),
        "pid": std::process::id(),
        "calls": st.calls,
        "failed": st.failed,
        "alloc_bytes": st.alloc_bytes,
        "failed_bytes": st.failed_bytes,
        "device_bytes_at_exit": s.device_bytes,
        "pool_held_bytes_at_exit": s.pool_held,
        "host_bytes_at_exit": s.host_bytes,
        "peak_device_bytes": s.peak,
        "peak_tolerance_bytes": peak_tolerance,
        "labels": {
            "weights": s.weights,
            "kv_cache": s.kv_cache,
            "dynamic": s.dynamic,
            "pool": s.pool_held,
            "host_fallback": s.host_bytes,
        },
        "resolved_via": st.resolved_via,
    });
    if matches!(scenario, Scenario::ProbeAll)
        && let Some(o) = out.as_object_mut()
    {
        o.insert("rets".into(), json!(st.rets));
    }
    if let Some(o) = out.as_object_mut() {
        o.extend(extra);
    }
    out
}

fn print_last_line(v: &Value) {
    let mut out = std::io::stdout().lock();
    // Nothing useful can be done if stdout is gone; the exit status still tells.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads as usize;
    if let Some(sig) = args.handle_signal {
        handle_signal(sig)?;
    }
    let d = Driver::open(&args.lib)?;

    if let Scenario::ProbeAll = args.scenario {
        let mut book = Book::default();
        let extra = probe::probe_all(&d, &mut book, args.cuda_version)?;
        print_last_line(&report(args.scenario, &d, &book, 0, extra));
        return Ok(());
    }

    let rt = Rt::start(d).context("runtime start-up")?;
    if rt.init_ret != 0 {
        eprintln!(
            "cuInit returned {}; continuing, every call will fail",
            rt.init_ret
        );
    }
    let seed = args.seed;
    let mut extra = match args.scenario {
        Scenario::LlmServer => scenarios::llm_server(&rt, seed, threads),
        Scenario::Training => scenarios::training(&rt, seed),
        Scenario::Pools => scenarios::pools(&rt, seed)?,
        Scenario::PoolRelease => scenarios::pool_release(&rt, seed)?,
        Scenario::Vmm => scenarios::vmm(&rt, seed),
        Scenario::Host => scenarios::host(&rt, seed)?,
        Scenario::Oom => scenarios::oom(&rt, seed),
        Scenario::Contexts => scenarios::contexts(&rt, seed),
        Scenario::PartlyFilled => scenarios::partly_filled(&rt, seed, threads),
        Scenario::ExitWithoutFree => scenarios::exit_without_free(&rt, seed),
        Scenario::Mixed => scenarios::mixed(&rt, seed, threads)?,
        Scenario::Leak => scenarios::leak(&rt, seed)?,
        Scenario::TrappedCall => scenarios::trapped_call(&rt)?,
        Scenario::CtxCycles => scenarios::ctx_cycles(&rt, seed),
        Scenario::SecondGpuOom => scenarios::second_gpu_oom(&rt),
        Scenario::CtxV4 => scenarios::ctx_v4(&rt)?,
        Scenario::GreenCtx => scenarios::green_ctx(&rt)?,
        Scenario::Copies => scenarios::copies(&rt, seed)?,
        Scenario::HostPools => scenarios::host_pools(&rt, seed)?,
        Scenario::Ipc => ipc::exporter(&rt, &args.lib)?,
        Scenario::IpcImporter => ipc::importer(&rt)?,
        Scenario::BatchCopies => batch::batch_copies(&rt)?,
        Scenario::Multicast => multicast::multicast(&rt)?,
        Scenario::SparseArrays => sparse::sparse_arrays(&rt)?,
        Scenario::Graphs => graph::graphs(&rt)?,
        Scenario::ProbeAll => Extra::new(),
    };
    extra.insert(
        "driver".into(),
        json!({"init_ret": rt.init_ret, "version": rt.driver_version, "devices": rt.device_count}),
    );
    let tolerance = *rt.peak_tolerance.lock().unwrap_or_else(|e| e.into_inner());
    if args.handle_signal.is_some() {
        extra.insert(
            "signals_received".into(),
            json!(SIGNALS_RECEIVED.load(Ordering::Relaxed)),
        );
    }
    let mut v = report(args.scenario, &rt.d, &rt.book(), tolerance, extra);
    if args.check {
        let (mut free, mut total) = (0usize, 0usize);
        let r = crate::call!(rt.d, rt.cu.mem_info, &mut free, &mut total);
        let used = total.saturating_sub(free) as u64;
        let s = rt.book().summary();
        let expected = s.device_bytes + s.pool_held;
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "check".into(),
                json!({"ret": r, "driver_used_bytes": used, "expected": expected, "ok": r == 0 && used == expected}),
            );
        }
    }
    print_last_line(&v);
    if args.hold.is_finite() && args.hold > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(args.hold));
    }
    match args.scenario {
        // A crash-like end: nothing freed, no destructors, status 1.
        Scenario::Oom | Scenario::SecondGpuOom => std::process::exit(1),
        // The process ends with everything still allocated.
        Scenario::ExitWithoutFree => std::process::exit(0),
        _ => Ok(()),
    }
}
