//! The scenarios. Each one records its ground truth in the runtime's book;
//! `main` prints it. Every call tolerates failure (with NVIDIA's library and no
//! GPU everything fails), and nothing that failed is used afterwards.

use std::ffi::c_int;

use serde_json::{Map, Value, json};

use crate::book::Label::{Dynamic, KvCache, Weights};
use crate::call;
use crate::rt::{GIB, MIB, Ptsz, Rng, Rt, SyncPoint};

/// What a scenario adds to the report besides the common fields.
pub type Extra = Map<String, Value>;

const FLOAT: u32 = 0x20;
const HALF: u32 = 0x10;
const U8: u32 = 0x01;

/// Loads `n` weight tensors with sizes in `lo..=hi`, each filled from host memory.
fn load_weights(rt: &Rt, rng: &mut Rng, n: usize, lo: u64, hi: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let bytes = rng.size(lo, hi, 256);
        if let Some(p) = rt.alloc(bytes, Weights) {
            rt.fill(rt.cu.htod, p, bytes);
            out.push(p);
        }
    }
    out
}

/// Steady state: on `threads` threads at once, `iters` iterations each of 3 to
/// 6 short-lived activations (1 MiB..=`max`), the first filled asynchronously
/// from host input, all freed at the end of the iteration.
fn steady_state(rt: &Rt, seed: u64, threads: usize, iters: usize, max: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                rt.thread_init();
                let mut rng = Rng::new(seed ^ ((t as u64 + 1) << 32));
                for _ in 0..iters {
                    let n = 3 + rng.next() % 4;
                    let mut live = Vec::new();
                    for k in 0..n {
                        let bytes = rng.size(MIB, max, 4096);
                        if let Some(p) = rt.alloc(bytes, Dynamic) {
                            if k == 0 {
                                rt.fill_async(rt.cu.htod_async, p, bytes.min(MIB));
                            }
                            live.push(p);
                        }
                    }
                    for p in live.into_iter().rev() {
                        rt.free(p);
                    }
                }
            });
        }
    });
    if threads > 1 {
        // Each thread's in-flight call may or may not be counted at any
        // instant, so a tracer's peak may differ by this much.
        rt.widen_peak_tolerance(threads as u64 * max);
    }
}

pub fn llm_server(rt: &Rt, seed: u64, threads: usize) -> Extra {
    let mut rng = Rng::new(seed);
    eprintln!("llm-server: loading weights");
    load_weights(rt, &mut rng, 40, 4 * MIB, 64 * MIB);
    eprintln!("llm-server: allocating the KV cache");
    for _ in 0..3 {
        let bytes = rng.size(128 * MIB, 512 * MIB, 2 * MIB);
        rt.alloc(bytes, KvCache);
    }
    eprintln!("llm-server: serving on {threads} threads");
    steady_state(rt, seed, threads, 100, 32 * MIB);
    Extra::new()
}

pub fn training(rt: &Rt, seed: u64) -> Extra {
    let mut rng = Rng::new(seed);
    load_weights(rt, &mut rng, 24, 2 * MIB, 32 * MIB);
    for _ in 0..2 {
        let width = rng.size(1000, 4000, 4);
        if let Some((p, bytes)) = rt.alloc_pitch(width, 1024, Weights) {
            rt.fill(rt.cu.htod, p, bytes);
        }
    }
    // Long-lived buffers made after loading, never filled from host.
    rt.array2d(2048, 2048, FLOAT, 1, KvCache);
    rt.array3d([256, 256, 64], U8, 4, KvCache);
    for step in 0..20 {
        let n = 4 + rng.next() % 5;
        let mut acts = Vec::new();
        for _ in 0..n {
            let bytes = rng.size(MIB, 64 * MIB, 4096);
            acts.extend(rt.alloc(bytes, Dynamic));
        }
        let width = rng.size(2048, 8192, 4);
        let pitched = rt.alloc_pitch(width, 256, Dynamic);
        // The optimizer state grows by one buffer per step and is kept.
        rt.alloc(rng.size(MIB, 8 * MIB, 4096), KvCache);
        for p in acts {
            rt.free(p);
        }
        if let Some((p, _)) = pitched {
            rt.free(p);
        }
        if step % 5 == 4 {
            rt.synchronize();
        }
    }
    Extra::new()
}

pub fn pools(rt: &Rt, seed: u64) -> anyhow::Result<Extra> {
    let mut rng = Rng::new(seed);
    let pt = Ptsz::load(&rt.d)?;
    let Some(pool0) = rt.default_pool() else {
        eprintln!("pools: no default pool");
        return Ok(Extra::new());
    };
    // Per-thread default stream, default pool: a sliding window of blocks.
    let mut window: Vec<u64> = Vec::new();
    for it in 0..40 {
        let old = std::mem::take(&mut window);
        for _ in 0..1 + rng.next() % 3 {
            let bytes = rng.size(MIB, 16 * MIB, 64 << 10);
            if let Some(p) = rt.alloc_async(pt.alloc_async, pool0, bytes) {
                rt.fill_async(pt.htod_async, p, bytes.min(MIB));
                window.push(p);
            }
        }
        for p in old {
            rt.free_async(pt.free_async, p);
        }
        if it == 20 {
            rt.pool_trim(pool0, 8 * MIB);
        }
    }
    // Another thread on the legacy default stream, same pool.
    std::thread::scope(|s| {
        s.spawn(|| {
            rt.thread_init();
            let mut rng = Rng::new(seed ^ 0xabcd);
            for _ in 0..10 {
                let bytes = rng.size(MIB, 8 * MIB, 64 << 10);
                if let Some(p) = rt.alloc_async(rt.cu.alloc_async, pool0, bytes) {
                    rt.free_async(rt.cu.free_async, p);
                }
            }
        });
    });
    // A pool of its own: allocated, mostly freed, trimmed, destroyed with one
    // block still live, which is then freed straight back to the device.
    if let Some(a) = rt.pool_create() {
        let mut blocks = Vec::new();
        for _ in 0..6 {
            let bytes = rng.size(4 * MIB, 32 * MIB, 64 << 10);
            blocks.extend(rt.alloc_from_pool(pt.alloc_from_pool, a, bytes));
        }
        if let Some(&first) = blocks.first() {
            rt.fill(pt.htod, first, MIB);
        }
        let last = blocks.pop();
        for p in blocks {
            rt.free_async(pt.free_async, p);
        }
        for _ in 0..3 {
            let bytes = rng.size(MIB, 4 * MIB, 64 << 10);
            if let Some(p) = rt.alloc_from_pool(pt.alloc_from_pool, a, bytes) {
                rt.free_async(pt.free_async, p);
            }
        }
        rt.pool_trim(a, 16 * MIB);
        rt.pool_destroy(a);
        if let Some(p) = last {
            rt.free_async(pt.free_async, p);
        }
    }
    // A second pool that still holds freed blocks at exit.
    if let Some(b) = rt.pool_create() {
        let mut blocks = Vec::new();
        for _ in 0..4 {
            let bytes = rng.size(2 * MIB, 24 * MIB, 64 << 10);
            blocks.extend(rt.alloc_from_pool(rt.cu.alloc_from_pool, b, bytes));
        }
        blocks.pop();
        for p in blocks {
            rt.free_async(rt.cu.free_async, p);
        }
    }
    Ok(Extra::new())
}

/// Release thresholds: a pool keeps its threshold of reserved bytes (in use plus held)
/// through each stream, event or context synchronization and gives back the rest; the
/// default pool, at threshold 0, keeps nothing. Some blocks are live at exit, some held.
pub fn pool_release(rt: &Rt, seed: u64) -> anyhow::Result<Extra> {
    let mut rng = Rng::new(seed);
    let pt = Ptsz::load(&rt.d)?;
    let Some(pool0) = rt.default_pool() else {
        eprintln!("pool-release: no default pool");
        return Ok(Extra::new());
    };
    let Some(b) = rt.pool_create() else {
        eprintln!("pool-release: no pool");
        return Ok(Extra::new());
    };
    rt.pool_set_threshold(b, 40 * MIB);
    let syncs = [
        SyncPoint::Stream,
        SyncPoint::StreamPerThread,
        SyncPoint::Event,
        SyncPoint::Context,
    ];
    let mut live = Vec::new();
    for (round, sync) in syncs.into_iter().enumerate() {
        let mut blocks = Vec::new();
        for _ in 0..3 {
            let bytes = rng.size(2 * MIB, 16 * MIB, 64 << 10);
            blocks.extend(rt.alloc_from_pool(rt.cu.alloc_from_pool, b, bytes));
            blocks.extend(rt.alloc_async(pt.alloc_async, pool0, bytes));
        }
        // One block of the default pool stays live each round.
        live.extend(blocks.pop());
        for p in blocks {
            rt.free_async(pt.free_async, p);
        }
        if round == 2 {
            // From now on the pool keeps less.
            rt.pool_set_threshold(b, 12 * MIB);
        }
        rt.sync(sync);
    }
    // Freed after the last synchronization: held at exit whatever the threshold.
    if let Some(p) = rt.alloc_from_pool(rt.cu.alloc_from_pool, b, 6 * MIB) {
        rt.free_async(rt.cu.free_async, p);
    }
    let _ = live;
    Ok(Extra::new())
}

pub fn vmm(rt: &Rt, seed: u64) -> Extra {
    let mut rng = Rng::new(seed);
    let g = rt.granularity();
    let chunk = 10 * g;
    let mut extra = Extra::new();
    // The long-lived segment: weights, KV cache and one host-located chunk.
    if let Some(a) = rt.reserve(GIB) {
        let mut off = 0;
        let mut kv = Vec::new();
        for i in 0..16 {
            let label = if i < 8 { Weights } else { KvCache };
            let Some(h) = rt.mem_create(chunk, Some(label)) else {
                continue;
            };
            if rt.map(a + off, chunk, h) {
                rt.set_access(a + off, chunk);
                if label == Weights {
                    rt.fill(rt.cu.htod, a + off, chunk);
                    // Released while mapped: the memory stays until unmapped.
                    rt.mem_release(h);
                } else {
                    kv.push((a + off, h));
                }
            }
            off += chunk;
        }
        let host_bytes = rng.size(8, 16, 1) * g;
        if let Some(h) = rt.mem_create(host_bytes, None)
            && rt.map(a + off, host_bytes, h)
        {
            rt.set_access(a + off, host_bytes);
        }
        // Shrink: two KV chunks unmapped and released.
        for (va, h) in kv.into_iter().rev().take(2) {
            rt.unmap(va, chunk);
            rt.mem_release(h);
        }
        extra.insert("segment_va".into(), json!(a));
    }
    // A temporary segment for dynamic memory, torn down completely.
    let size = 512 * MIB;
    if let Some(b) = rt.reserve(size) {
        let mut handles = Vec::new();
        for i in 0..6 {
            let Some(h) = rt.mem_create(chunk, Some(Dynamic)) else {
                continue;
            };
            if rt.map(b + i * chunk, chunk, h) {
                handles.push(h);
            }
        }
        rt.set_access(b, chunk * handles.len() as u64);
        rt.fill_async(rt.cu.htod_async, b, MIB);
        rt.unmap(b, size);
        for h in handles {
            rt.mem_release(h);
        }
        rt.addr_free(b, size);
    }
    extra
}

pub fn host(rt: &Rt, seed: u64) -> anyhow::Result<Extra> {
    let mut rng = Rng::new(seed);
    load_weights(rt, &mut rng, 4, 8 * MIB, 16 * MIB);
    if let Some(m) = rt.alloc_managed(64 * MIB) {
        rt.fill(rt.cu.htod, m, MIB);
    }
    let m2 = rt.alloc_managed(rng.size(4 * MIB, 16 * MIB, 4096));
    rt.alloc_host(32 * MIB);
    let h1 = rt.host_alloc(16 * MIB, 0x3);
    rt.host_alloc(rng.size(2 * MIB, 8 * MIB, 4096), 0x1);
    // The legacy 32-bit entry point, as an old binary would resolve it.
    let legacy =
        rt.d.resolve::<crate::driver::FnAllocHost32>("cuMemAllocHost", 2000, 0, "cuMemAllocHost")?;
    let mut hp: crate::driver::P = std::ptr::null_mut();
    let r = call!(rt.d, legacy, &mut hp, MIB as u32);
    rt.d.bytes(legacy.name, MIB, r);
    if r == 0 {
        rt.book().host_add(hp as u64, MIB, Some(rt.current()));
        rt.free_host(hp as u64);
    }
    // A malloc'ed buffer registered for the whole run, and one for a while.
    let kept: &'static mut [u8] = Box::leak(vec![1u8; 8 * MIB as usize].into_boxed_slice());
    rt.register(kept);
    let mut temp = vec![2u8; 4 * MIB as usize];
    if rt.register(&mut temp) {
        rt.unregister(&mut temp);
    }
    if let Some(h) = h1 {
        rt.free_host(h);
    }
    if let Some(m) = m2 {
        rt.free_managed(m);
    }
    Ok(Extra::new())
}

pub fn oom(rt: &Rt, seed: u64) -> Extra {
    let mut rng = Rng::new(seed);
    load_weights(rt, &mut rng, 8, 32 * MIB, 64 * MIB);
    let mut chunks = 0u64;
    let mut failure = json!(null);
    for _ in 0..4096 {
        let mut ptr = 0u64;
        let r = call!(rt.d, rt.cu.mem_alloc, &mut ptr, GIB as usize);
        rt.d.bytes(rt.cu.mem_alloc.name, GIB, r);
        if r != 0 {
            eprintln!(
                "oom: {} failed with {r} after {chunks} chunks",
                rt.cu.mem_alloc.name
            );
            failure = json!({"api": rt.cu.mem_alloc.name, "request_bytes": GIB, "ret": r});
            break;
        }
        rt.book()
            .add(crate::book::Key::Ptr(ptr), GIB, KvCache, rt.current());
        chunks += 1;
    }
    // Reporting the failure takes a moment before the exit, as it does in real programs (a
    // Python traceback, a framework's teardown). The tracer reads a process's mappings when
    // its first call arrives; a process gone within a millisecond of that, on a loaded
    // machine, may take them along, and its stacks stay unresolved.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut extra = Extra::new();
    extra.insert("oom".into(), failure);
    extra.insert("chunks_before_failure".into(), json!(chunks));
    extra
}

pub fn contexts(rt: &Rt, seed: u64) -> Extra {
    let mut rng = Rng::new(seed);
    let primary = rt.primary;
    let mut extra = Extra::new();
    if let Some(c) = rt.ctx_create(rt.device) {
        for i in 0..5 {
            let bytes = rng.size(4 * MIB, 32 * MIB, 4096);
            if let Some(p) = rt.alloc(bytes, Dynamic)
                && i == 0
            {
                rt.fill(rt.cu.htod, p, bytes);
            }
        }
        rt.pop(primary);
        if let Some(p) = rt.alloc(16 * MIB, Weights) {
            rt.fill(rt.cu.htod, p, 16 * MIB);
        }
        rt.alloc(64 * MIB, KvCache);
        rt.push(c);
        rt.alloc(rng.size(4 * MIB, 32 * MIB, 4096), Dynamic);
        rt.synchronize();
        rt.pop(primary);
        let mut cur: crate::driver::P = std::ptr::null_mut();
        call!(rt.d, rt.cu.get_current, &mut cur);
        // Destroying it frees everything allocated in it.
        rt.ctx_destroy(c, primary);
        extra.insert("destroyed_ctx".into(), json!(c));
    }
    let other = if rt.device_count >= 2 { 1 } else { rt.device };
    let mut outliving = None;
    if let Some(c3) = rt.ctx_create_v3(other) {
        rt.alloc(8 * MIB, Dynamic);
        rt.alloc(8 * MIB, Dynamic);
        // Pinned and managed memory go with the context; stream-ordered memory belongs to
        // its pool's device and outlives it (the driver API reference of cuCtxDestroy).
        rt.alloc_host(MIB);
        rt.alloc_managed(MIB);
        outliving = rt
            .default_pool()
            .and_then(|pool| rt.alloc_async(rt.cu.alloc_async, pool, MIB));
        rt.ctx_destroy(c3, primary);
    }
    let (mut free, mut total) = (0usize, 0usize);
    call!(rt.d, rt.cu.mem_info, &mut free, &mut total);
    load_weights(rt, &mut rng, 4, 8 * MIB, 32 * MIB);
    std::thread::scope(|s| {
        s.spawn(|| {
            rt.thread_init();
            rt.alloc(128 * MIB, KvCache);
            // This thread's reference only: the primary context lives on.
            call!(rt.d, rt.cu.primary_release, rt.device);
        });
    });
    // Freed once loaded (a free while loading would end the load phase).
    if let Some(p) = outliving {
        rt.free_async(rt.cu.free_async, p);
        rt.synchronize();
    }
    extra
}

/// Weights filled only partly through host-to-device copies, the rest by paths that are not
/// host copies (read from storage straight into GPU memory, decompressed by a kernel): a
/// server seen filling 12% of each 96 MiB weight buffer through `cuMemcpyHtoD`, another 6%
/// through `cuMemcpyHtoDAsync`, in a few copies spread over each buffer. Beside them small
/// tensors filled whole, a KV cache with a 4 KiB header copied from host and one never
/// filled; then serving.
pub fn partly_filled(rt: &Rt, seed: u64, threads: usize) -> Extra {
    let mut rng = Rng::new(seed);
    let buf = 96 * MIB;
    // Four copies per buffer, each a quarter of its share, at the start of each quarter.
    let spread = |p: u64, pct: u64, fill: &dyn Fn(u64, u64)| {
        let part = buf * pct / 100 / 4 / 4096 * 4096;
        for q in 0..4 {
            fill(p + q * buf / 4, part);
        }
    };
    for i in 0..12 {
        let Some(p) = rt.alloc(buf, Weights) else {
            continue;
        };
        if i < 8 {
            spread(p, 12, &|at, n| rt.fill(rt.cu.htod, at, n));
        } else {
            spread(p, 6, &|at, n| rt.fill_async(rt.cu.htod_async, at, n));
        }
    }
    load_weights(rt, &mut rng, 6, 256 << 10, 2 * MIB);
    if let Some(p) = rt.alloc(384 * MIB, KvCache) {
        rt.fill(rt.cu.htod, p, 4096);
    }
    rt.alloc(256 * MIB, KvCache);
    steady_state(rt, seed, threads, 40, 16 * MIB);
    Extra::new()
}

pub fn exit_without_free(rt: &Rt, seed: u64) -> Extra {
    let mut rng = Rng::new(seed);
    load_weights(rt, &mut rng, 6, 8 * MIB, 64 * MIB);
    rt.alloc(256 * MIB, KvCache);
    rt.alloc(256 * MIB, KvCache);
    for _ in 0..3 {
        rt.alloc(rng.size(MIB, 16 * MIB, 4096), Dynamic);
    }
    if let Some(pool) = rt.default_pool() {
        rt.alloc_async(rt.cu.alloc_async, pool, 4 * MIB);
    }
    rt.alloc_host(16 * MIB);
    rt.alloc_managed(32 * MIB);
    Extra::new()
}

pub fn mixed(rt: &Rt, seed: u64, threads: usize) -> anyhow::Result<Extra> {
    let mut rng = Rng::new(seed);
    // An inference server in miniature.
    load_weights(rt, &mut rng, 8, 4 * MIB, 16 * MIB);
    if let Some((p, bytes)) = rt.alloc_pitch(3000, 512, Weights) {
        rt.fill(rt.cu.htod, p, bytes);
    }
    rt.alloc(128 * MIB, KvCache);
    rt.array2d(1024, 1024, FLOAT, 1, KvCache);
    if let Some(m) = rt.mipmap([512, 512, 0], HALF, 4, 4, Dynamic) {
        rt.array_destroy(m, true);
    }
    steady_state(rt, seed, threads, 10, 8 * MIB);
    // Stream-ordered pools.
    let pt = Ptsz::load(&rt.d)?;
    if let Some(pool0) = rt.default_pool() {
        let mut live = Vec::new();
        for _ in 0..6 {
            live.extend(rt.alloc_async(pt.alloc_async, pool0, rng.size(MIB, 8 * MIB, 64 << 10)));
        }
        let keep = live.pop();
        for p in live {
            rt.free_async(pt.free_async, p);
        }
        rt.pool_trim(pool0, 4 * MIB);
        let _ = keep;
    }
    if let Some(pool) = rt.pool_create() {
        if let Some(p) = rt.alloc_from_pool(pt.alloc_from_pool, pool, 8 * MIB) {
            rt.free_async(pt.free_async, p);
        }
        rt.pool_destroy(pool);
    }
    // Virtual memory: two device chunks and one host-located chunk.
    let g = rt.granularity();
    if let Some(va) = rt.reserve(256 * MIB) {
        let mut off = 0;
        for label in [Some(KvCache), Some(Dynamic), None] {
            if let Some(h) = rt.mem_create(4 * g, label) {
                if rt.map(va + off, 4 * g, h) {
                    rt.set_access(va + off, 4 * g);
                }
                if label == Some(Dynamic) {
                    rt.unmap(va + off, 4 * g);
                    rt.mem_release(h);
                }
            }
            off += 4 * g;
        }
    }
    // Host memory the GPU uses.
    rt.alloc_managed(8 * MIB);
    rt.alloc_host(8 * MIB);
    let kept: &'static mut [u8] = Box::leak(vec![3u8; 4 * MIB as usize].into_boxed_slice());
    rt.register(kept);
    // A context of its own, destroyed with its memory.
    if let Some(c) = rt.ctx_create(rt.device) {
        rt.alloc(16 * MIB, Dynamic);
        rt.ctx_destroy(c, rt.primary);
    }
    Ok(Extra::new())
}

/// Bytes the leaking call site keeps per step in the `leak` scenario.
const LEAK_BYTES_PER_STEP: u64 = MIB;
/// Steps of the `leak` scenario.
const LEAK_STEPS: u64 = 30;

/// The leak: a buffer for per-step metrics, allocated every step and never freed.
/// A function of its own so that its stack is told apart from every other call site.
#[inline(never)]
fn leak_metrics_buffer(rt: &Rt) -> Option<u64> {
    rt.alloc(LEAK_BYTES_PER_STEP, Dynamic)
}

/// A caching allocator's segment: reserved once when the working set warms up, then held
/// and reused. Retention by design, not a leak.
#[inline(never)]
fn reserve_cache_segment(rt: &Rt, bytes: u64) -> Option<u64> {
    rt.alloc(bytes, KvCache)
}

/// Activations of one step, freed at its end.
#[inline(never)]
fn step_activations(rt: &Rt, rng: &mut Rng) -> Vec<u64> {
    let n = 3 + rng.next() % 3;
    (0..n)
        .filter_map(|_| rt.alloc(rng.size(MIB, 16 * MIB, 4096), Dynamic))
        .collect()
}

/// Training-like steps where one call site leaks a small buffer every step, while a
/// stream-ordered pool and a caching segment retain memory by design.
pub fn leak(rt: &Rt, seed: u64) -> anyhow::Result<Extra> {
    let mut rng = Rng::new(seed);
    let pt = Ptsz::load(&rt.d)?;
    load_weights(rt, &mut rng, 12, 2 * MIB, 16 * MIB);
    let pool0 = rt.default_pool();
    // The pool keeps all it reserves through synchronizations, as PyTorch's cudaMallocAsync
    // backend has it (release threshold at the maximum).
    if let Some(pool) = pool0 {
        rt.pool_set_threshold(pool, u64::MAX);
    }
    let mut leaked = 0u64;
    for step in 0..LEAK_STEPS {
        let acts = step_activations(rt, &mut rng);
        // Stream-ordered scratch from the default pool, never trimmed: the pool keeps it.
        let scratch = pool0.and_then(|pool| rt.alloc_async(pt.alloc_async, pool, 8 * MIB));
        if step == 0 {
            reserve_cache_segment(rt, 64 * MIB);
        }
        if leak_metrics_buffer(rt).is_some() {
            leaked += 1;
        }
        for p in acts.into_iter().rev() {
            rt.free(p);
        }
        if let Some(p) = scratch {
            rt.free_async(pt.free_async, p);
        }
        if step % 10 == 9 {
            rt.synchronize();
        }
    }
    let mut extra = Extra::new();
    extra.insert(
        "leak".into(),
        json!({
            "function": "leak_metrics_buffer",
            "bytes_per_step": LEAK_BYTES_PER_STEP,
            "steps": leaked,
        }),
    );
    Ok(extra)
}

/// The id of the calling thread.
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// Waits until `path` exists, for at most 60 s.
fn wait_for(path: &std::path::Path) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !path.exists() {
        anyhow::ensure!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{} did not appear within 60 s",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// A worker thread's `cuMemAlloc_v2` springs the simulated driver's trap (`SIMCUDA_TRAP`,
/// `SIMCUDA_TRAP_BYTES`), with 2 MiB allocated on the main thread before it.
///
/// - `exit-thread`: the worker ends inside the call. The main thread waits until it is gone,
///   then allocates and frees 4 MiB; the report names the worker (`trapped_tid`) and the
///   call that never returned (`unreturned`).
/// - `block:DIR`: the worker waits inside the call. The main thread allocates 3 MiB while
///   it does, creates `DIR/during-done`, and waits for the worker, whose call returns once
///   someone creates `DIR/release`.
pub fn trapped_call(rt: &Rt) -> anyhow::Result<Extra> {
    use anyhow::Context as _;
    let bytes: u64 = std::env::var("SIMCUDA_TRAP_BYTES")
        .context("SIMCUDA_TRAP_BYTES is not set")?
        .parse()
        .context("SIMCUDA_TRAP_BYTES is not a number of bytes")?;
    let spec = std::env::var("SIMCUDA_TRAP").context("SIMCUDA_TRAP is not set")?;
    let mut extra = Extra::new();
    let before = rt.alloc(2 * MIB, Dynamic);
    if spec == "exit-thread" {
        let alloc = rt.cu.mem_alloc;
        let (tx, rx) = std::sync::mpsc::channel();
        // Never joined: the thread ends inside the driver, without finishing.
        std::thread::spawn(move || {
            let _ = tx.send(gettid());
            let mut ptr = 0u64;
            // SAFETY: `alloc` is cuMemAlloc_v2 as resolved, called with a live out-pointer.
            unsafe { (alloc.f)(&mut ptr, bytes as usize) };
        });
        let tid = rx.recv().context("the trapped thread did not start")?;
        let task = std::path::PathBuf::from(format!("/proc/self/task/{tid}"));
        let start = std::time::Instant::now();
        while task.exists() {
            anyhow::ensure!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "thread {tid} did not end in the trapped call"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if let Some(p) = rt.alloc(4 * MIB, Dynamic) {
            rt.free(p);
        }
        extra.insert("trapped_tid".into(), json!(tid));
        let mut unreturned = Extra::new();
        unreturned.insert(rt.cu.mem_alloc.name.into(), json!(1));
        extra.insert("unreturned".into(), Value::Object(unreturned));
    } else if let Some(dir) = spec.strip_prefix("block:") {
        let dir = std::path::Path::new(dir);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let worker = s.spawn(|| {
                rt.thread_init();
                let tid = gettid();
                (tid, rt.alloc(bytes, Dynamic))
            });
            wait_for(&dir.join("entered"))?;
            let during = rt.alloc(3 * MIB, Dynamic);
            std::fs::write(dir.join("during-done"), b"")?;
            let (tid, trapped) = worker
                .join()
                .map_err(|_| anyhow::anyhow!("the trapped thread panicked"))?;
            for p in [during, trapped].into_iter().flatten() {
                rt.free(p);
            }
            extra.insert("trapped_tid".into(), json!(tid));
            Ok(())
        })?;
    } else {
        anyhow::bail!("SIMCUDA_TRAP={spec:?}: expected exit-thread or block:DIR");
    }
    if let Some(p) = before {
        rt.free(p);
    }
    Ok(extra)
}

/// Cycles of the `ctx-cycles` scenario.
const CTX_CYCLES: u64 = 12;
/// Bytes each cycle allocates in the context it creates.
const CTX_CYCLE_BYTES: u64 = MIB;

/// The allocation made in each short-lived context of `ctx-cycles`; destroying the context
/// frees it. A function of its own so that its stack is told apart from the churn's.
#[inline(never)]
fn per_context_buffer(rt: &Rt) -> Option<u64> {
    rt.alloc(CTX_CYCLE_BYTES, Dynamic)
}

/// Steady churn in the primary context: a buffer allocated and freed at once, never of the
/// per-context buffer's size.
#[inline(never)]
fn churn_buffer(rt: &Rt, rng: &mut Rng) {
    if let Some(p) = rt.alloc(rng.size(2 * MIB, 6 * MIB, 4096), Dynamic) {
        rt.free(p);
    }
}

/// Cycles of (create a context with `cuCtxCreate`, allocate 1 MiB in it, destroy it) beside
/// steady churn in the primary context, after two weight buffers that stay to the end. What
/// the contexts held went with them: none of it is live at the end, and the call site that
/// made it grew by nothing.
pub fn ctx_cycles(rt: &Rt, seed: u64) -> Extra {
    let mut rng = Rng::new(seed);
    let kept = load_weights(rt, &mut rng, 2, 8 * MIB, 16 * MIB).len();
    let mut cycles = 0u64;
    for _ in 0..CTX_CYCLES {
        for _ in 0..3 {
            churn_buffer(rt, &mut rng);
        }
        if let Some(c) = rt.ctx_create(rt.device) {
            if per_context_buffer(rt).is_some() {
                cycles += 1;
            }
            // Destroying it frees the buffer: never freed by cuMemFree.
            rt.ctx_destroy(c, rt.primary);
        }
        churn_buffer(rt, &mut rng);
    }
    let mut extra = Extra::new();
    extra.insert(
        "ctx_cycles".into(),
        json!({
            "function": "per_context_buffer",
            "bytes_per_cycle": CTX_CYCLE_BYTES,
            "cycles": cycles,
        }),
    );
    extra.insert("kept_allocations".into(), json!(kept));
    extra
}

/// What `second-gpu-oom` holds on device 0 before it fails on device 1.
const FIRST_GPU_BYTES: u64 = GIB;
/// What it asks of device 1: more than a simulated device of `SIMCUDA_CAPACITY=2G` has.
const SECOND_GPU_REQUEST: u64 = 3 * GIB;

/// The memory `second-gpu-oom` holds on device 0, in the primary context: weights, filled
/// from host.
#[inline(never)]
fn hold_on_first_gpu(rt: &Rt) -> Option<u64> {
    let p = rt.alloc(FIRST_GPU_BYTES, Weights)?;
    rt.fill(rt.cu.htod, p, FIRST_GPU_BYTES);
    Some(p)
}

/// 1 GiB held on device 0 in the primary context; then a context created on device 1
/// (`cuCtxCreate` makes it current) and 3 GiB asked of it, which fails with
/// `CUDA_ERROR_OUT_OF_MEMORY` on a simulated driver with `SIMCUDA_DEVICES=2` (or more) and
/// `SIMCUDA_CAPACITY=2G`: the failure is on device 1, where the process holds nothing.
/// Ends like `oom`: the failure reported for a moment, then exit status 1 without freeing.
pub fn second_gpu_oom(rt: &Rt) -> Extra {
    let mut extra = Extra::new();
    let held = hold_on_first_gpu(rt).map_or(0, |_| FIRST_GPU_BYTES);
    let mut failure = json!(null);
    let mut second: c_int = -1;
    if rt.device_count < 2 {
        eprintln!(
            "second-gpu-oom: the driver has {} device(s), this needs 2 \
             (SIMCUDA_DEVICES=2 on the simulated driver)",
            rt.device_count
        );
    } else if call!(rt.d, rt.cu.device_get, &mut second, 1) != 0 {
        eprintln!("second-gpu-oom: cuDeviceGet(1) failed");
    } else if let Some(c) = rt.ctx_create(second) {
        let mut total = 0usize;
        call!(rt.d, rt.cu.total_mem, &mut total, second);
        let mut ptr = 0u64;
        let r = call!(rt.d, rt.cu.mem_alloc, &mut ptr, SECOND_GPU_REQUEST as usize);
        rt.d.bytes(rt.cu.mem_alloc.name, SECOND_GPU_REQUEST, r);
        if r == 0 {
            // Device 1 had the room (SIMCUDA_CAPACITY above 3 GiB): the truth says so.
            eprintln!("second-gpu-oom: {SECOND_GPU_REQUEST} bytes fit on device 1");
            rt.book()
                .add(crate::book::Key::Ptr(ptr), SECOND_GPU_REQUEST, KvCache, c);
        } else {
            eprintln!(
                "second-gpu-oom: {} of {SECOND_GPU_REQUEST} bytes on device 1 failed with {r}",
                rt.cu.mem_alloc.name
            );
        }
        failure = json!({
            "api": rt.cu.mem_alloc.name,
            "request_bytes": SECOND_GPU_REQUEST,
            "ret": r,
            "device": 1,
            "device_total_bytes": total,
        });
        // Back to the primary context of device 0, which `--check` asks about.
        rt.pop(rt.primary);
    }
    // As in `oom`: a moment to report the failure, so that the tracer reads the mappings.
    std::thread::sleep(std::time::Duration::from_millis(100));
    extra.insert("oom".into(), failure);
    extra.insert("held_on_device0".into(), json!(held));
    // The simulated driver ignores CUDA_VISIBLE_DEVICES (its ordinals are its devices); the
    // tracer maps ordinals to NVML devices through it all the same.
    extra.insert(
        "cuda_visible_devices".into(),
        json!(std::env::var("CUDA_VISIBLE_DEVICES").ok()),
    );
    extra
}

/// Device 1, for a scenario (`name`) that needs 2 devices.
fn second_device(rt: &Rt, name: &str) -> anyhow::Result<c_int> {
    if rt.device_count < 2 {
        anyhow::bail!(
            "{name}: the driver has {} device(s), this needs 2 (SIMCUDA_DEVICES=2 on the \
             simulated driver)",
            rt.device_count
        );
    }
    let mut second: c_int = -1;
    let r = call!(rt.d, rt.cu.device_get, &mut second, 1);
    if r != 0 {
        anyhow::bail!("{name}: cuDeviceGet(1) failed with {r}");
    }
    Ok(second)
}

/// What `ctx-v4` allocates in the context it makes on device 1.
const CTX_V4_BYTES: [u64; 3] = [4 * MIB, 8 * MIB, 12 * MIB];
/// What it allocates on device 0, in the primary context.
const CTX_V4_DEVICE0_BYTES: u64 = 2 * MIB;

/// A context made on device 1 through `cuCtxCreate_v4` (what `cuGetProcAddress_v2` returns
/// for `cuCtxCreate` at CUDA 12.5 and later) with flags `CU_CTX_SCHED_BLOCKING_SYNC` (4),
/// 24 MiB allocated in it; then 2 MiB in device 0's primary context. Nothing is freed, so
/// each device's bytes at exit are known. Needs 2 devices (SIMCUDA_DEVICES=2).
pub fn ctx_v4(rt: &Rt) -> anyhow::Result<Extra> {
    use crate::driver::{CTX_SCHED_BLOCKING_SYNC, FnCtxCreate4};
    let second = second_device(rt, "ctx-v4")?;
    let create =
        rt.d.resolve::<FnCtxCreate4>("cuCtxCreate", 12050, 0, "cuCtxCreate_v4")?;
    let Some(ctx) = rt.ctx_create_v4(create, second, CTX_SCHED_BLOCKING_SYNC) else {
        anyhow::bail!("ctx-v4: cuCtxCreate_v4 on device {second} failed");
    };
    let on_second: u64 = CTX_V4_BYTES
        .iter()
        .filter(|&&b| rt.alloc(b, KvCache).is_some())
        .sum();
    rt.pop(rt.primary);
    let on_first = rt
        .alloc(CTX_V4_DEVICE0_BYTES, KvCache)
        .map_or(0, |_| CTX_V4_DEVICE0_BYTES);
    let mut extra = Extra::new();
    extra.insert(
        "ctx_v4".into(),
        json!({
            "api": create.name,
            "ctx": ctx,
            "device": second,
            "flags": CTX_SCHED_BLOCKING_SYNC,
            "device_bytes": {"0": on_first, "1": on_second},
        }),
    );
    Ok(extra)
}

/// What `green-ctx` allocates in its first green context on device 1, which it then
/// destroys, and in its second, which lives to the end.
const GREEN_CTX_BYTES: [u64; 2] = [16 * MIB, 8 * MIB];
/// What it allocates on device 0, in the primary context.
const GREEN_CTX_DEVICE0_BYTES: u64 = 2 * MIB;

/// Two green contexts on device 1 (`cuDeviceGetDevResource`, `cuDevResourceGenerateDesc`,
/// `cuGreenCtxCreate`, `cuCtxFromGreenCtx`, pushed current). What the first allocates stays
/// after `cuGreenCtxDestroy`: it is device 1's primary context's memory, and the second green
/// context still retains that. Then 2 MiB on device 0. Needs 2 devices (SIMCUDA_DEVICES=2).
pub fn green_ctx(rt: &Rt) -> anyhow::Result<Extra> {
    use crate::driver::Green;
    let second = second_device(rt, "green-ctx")?;
    let Some(green) = Green::resolve(&rt.d, 13000) else {
        anyhow::bail!("green-ctx: the driver has no green contexts (CUDA 12.4 and later)");
    };
    // Both are made first: each retains device 1's primary context.
    let mut made = Vec::new();
    for i in 0..GREEN_CTX_BYTES.len() {
        let (g, ctx) = green.create(&rt.d, second);
        if g.is_null() || ctx.is_null() {
            anyhow::bail!("green-ctx: green context {i} on device {second} failed");
        }
        made.push((g, ctx));
    }
    let mut on_second = 0;
    for (i, (&(g, ctx), bytes)) in made.iter().zip(GREEN_CTX_BYTES).enumerate() {
        rt.push(ctx as u64);
        on_second += rt.alloc(bytes, KvCache).map_or(0, |_| bytes);
        rt.pop(rt.primary);
        if i == 0 {
            call!(rt.d, green.destroy, g);
        }
    }
    let made: Vec<Value> = made
        .iter()
        .map(|&(g, ctx)| json!({"green": g as u64, "ctx": ctx as u64}))
        .collect();
    let on_first = rt
        .alloc(GREEN_CTX_DEVICE0_BYTES, KvCache)
        .map_or(0, |_| GREEN_CTX_DEVICE0_BYTES);
    let mut extra = Extra::new();
    extra.insert(
        "green_ctx".into(),
        json!({
            "device": second,
            "contexts": made,
            "device_bytes": {"0": on_first, "1": on_second},
        }),
    );
    Ok(extra)
}

/// Weights filled only through unified, 2D and 3D copies from host memory (`cuMemcpy`,
/// `cuMemcpyAsync_ptsz`, `cuMemcpy2D_v2` from `CU_MEMORYTYPE_HOST`, `cuMemcpy3DAsync_v2`
/// from a `CU_MEMORYTYPE_UNIFIED` host address); a KV cache written only by device-to-device
/// copies through the same entry points (a unified `cuMemcpy` from a weight buffer,
/// `cuMemcpy2DAsync_v2` from `CU_MEMORYTYPE_DEVICE`, `cuMemcpy3D_v2` from a unified device
/// address) and by a copy to host; then serving.
pub fn copies(rt: &Rt, seed: u64) -> anyhow::Result<Extra> {
    use crate::driver::*;
    let d = &rt.d;
    let v = CUDA_VERSION;
    let memcpy: Sym<FnMemcpy> = d.resolve("cuMemcpy", v, 0, "cuMemcpy")?;
    let memcpy_async: Sym<FnMemcpyAsync> =
        d.resolve("cuMemcpyAsync", v, PER_THREAD, "cuMemcpyAsync_ptsz")?;
    let copy_2d: Sym<FnMemcpy2D> = d.resolve("cuMemcpy2D", v, 0, "cuMemcpy2D_v2")?;
    let copy_2d_async: Sym<FnMemcpy2DAsync> =
        d.resolve("cuMemcpy2DAsync", v, 0, "cuMemcpy2DAsync_v2")?;
    let copy_3d: Sym<FnMemcpy3D> = d.resolve("cuMemcpy3D", v, 0, "cuMemcpy3D_v2")?;
    let copy_3d_async: Sym<FnMemcpy3DAsync> =
        d.resolve("cuMemcpy3DAsync", v, 0, "cuMemcpy3DAsync_v2")?;
    let host = rt.host_src();
    let chunk = rt.host_len();
    let mut filled = Vec::new();
    eprintln!("copies: loading weights through unified, 2D and 3D copies");
    // cuMemcpy and cuMemcpyAsync_ptsz: the whole buffer, in chunks of the host buffer.
    for (i, bytes) in [48 * MIB, 32 * MIB, 24 * MIB, 16 * MIB]
        .into_iter()
        .enumerate()
    {
        let Some(p) = rt.alloc(bytes, Weights) else {
            continue;
        };
        let mut off = 0;
        while off < bytes {
            let n = (bytes - off).min(chunk) as usize;
            if i % 2 == 0 {
                call!(d, memcpy, p + off, host, n);
            } else {
                call!(d, memcpy_async, p + off, host, n, std::ptr::null_mut());
            }
            off += n as u64;
        }
        filled.push(p);
    }
    // cuMemcpy2D_v2 from host memory: 8 MiB as 8192 rows of 1 KiB into a 1 KiB pitch.
    if let Some(p) = rt.alloc(8 * MIB, Weights) {
        let rows = 4096; // each copy: 4 MiB, the host buffer holds 64
        for half in 0..2u64 {
            let c =
                Memcpy2D::to_device(MEMORYTYPE_HOST, host, p + half * 4 * MIB, 1024, 1024, rows);
            call!(d, copy_2d, &c);
        }
    }
    // cuMemcpy3DAsync_v2 from a unified host address: 16 MiB as 64 × 256 × 1 KiB, twice.
    if let Some(p) = rt.alloc(32 * MIB, Weights) {
        for half in 0..2u64 {
            let c =
                Memcpy3D::to_device(MEMORYTYPE_UNIFIED, host, p + half * 16 * MIB, 1024, 256, 64);
            call!(d, copy_3d_async, &c, std::ptr::null_mut());
        }
    }
    eprintln!("copies: a KV cache written by device-to-device copies");
    let mut rng = Rng::new(seed);
    let source = filled.first().copied();
    for k in 0..3 {
        let bytes = rng.size(128 * MIB, 256 * MIB, 2 * MIB);
        let Some(p) = rt.alloc(bytes, KvCache) else {
            continue;
        };
        let Some(w) = source else {
            continue;
        };
        match k {
            // Unified, from a weight buffer: device to device.
            0 => {
                call!(d, memcpy, p, w, (32 * MIB) as usize);
            }
            // 2D from CU_MEMORYTYPE_DEVICE.
            1 => {
                let c = Memcpy2D::to_device(MEMORYTYPE_DEVICE, w, p, 4096, 4096, 8192);
                call!(d, copy_2d_async, &c, std::ptr::null_mut());
            }
            // 3D from a unified device address; then a unified copy back to host.
            _ => {
                let c = Memcpy3D::to_device(MEMORYTYPE_UNIFIED, w, p, 4096, 64, 128);
                call!(d, copy_3d, &c);
                let mut back = vec![0u8; MIB as usize];
                call!(d, memcpy, back.as_mut_ptr() as u64, p, back.len());
            }
        }
    }
    steady_state(rt, seed, 1, 40, 16 * MIB);
    Ok(Extra::new())
}

/// Pools of managed memory and of host memory (`cuMemPoolCreate` with
/// `CU_MEM_ALLOCATION_TYPE_MANAGED`, and with `CU_MEM_LOCATION_TYPE_HOST` /
/// `CU_MEM_LOCATION_TYPE_HOST_NUMA`) beside a device pool: their allocations are host memory.
/// Some of each freed, some left live at exit.
pub fn host_pools(rt: &Rt, seed: u64) -> anyhow::Result<Extra> {
    use crate::driver::*;
    let mut rng = Rng::new(seed);
    load_weights(rt, &mut rng, 4, 8 * MIB, 32 * MIB);
    let device_pool = rt.pool_create();
    let managed = rt.pool_create_of(2, 1, rt.device);
    let pinned_host = rt.pool_create_of(1, 2, 0);
    let numa_host = rt.pool_create_of(1, 3, 0);
    // The device's current pool set to the created one: cuMemAllocAsync takes from it, and
    // a trim of it gives back what its frees left held. Then the default pool again, through
    // CUDA 13.0's entry point by location.
    let f_set: Sym<FnDevSetPool> =
        rt.d.resolve("cuDeviceSetMemPool", 12040, 0, "cuDeviceSetMemPool")?;
    let f_get: Sym<FnOutHandleDev> =
        rt.d.resolve("cuDeviceGetMemPool", 12040, 0, "cuDeviceGetMemPool")?;
    let get_default: Sym<FnGetPoolAt> =
        rt.d.resolve("cuMemGetDefaultMemPool", 13000, 0, "cuMemGetDefaultMemPool")?;
    let get_at: Sym<FnGetPoolAt> =
        rt.d.resolve("cuMemGetMemPool", 13000, 0, "cuMemGetMemPool")?;
    let set_at: Sym<FnSetPoolAt> =
        rt.d.resolve("cuMemSetMemPool", 13000, 0, "cuMemSetMemPool")?;
    let here = MemLocation {
        kind: 1,
        id: rt.device,
    };
    if let Some(p) = device_pool
        && call!(rt.d, f_set, rt.device, p as P) == 0
    {
        let mut cur: P = std::ptr::null_mut();
        call!(rt.d, f_get, &mut cur, rt.device);
        let live: Vec<u64> = (0..4)
            .filter_map(|_| rt.alloc_async(rt.cu.alloc_async, p, 4 * MIB))
            .collect();
        for a in live {
            rt.free_async(rt.cu.free_async, a);
        }
        rt.pool_trim(p, 0);
        let mut default: P = std::ptr::null_mut();
        if call!(rt.d, get_default, &mut default, &here, 1) == 0 {
            call!(rt.d, set_at, &here, 1, default);
        }
    }
    // The default pool of pinned host memory, and the current pool of managed memory, by
    // location: both hand out host memory.
    let host = MemLocation { kind: 2, id: 0 };
    let mut by_location = Vec::new();
    let mut hp: P = std::ptr::null_mut();
    if call!(rt.d, get_default, &mut hp, &host, 1) == 0 {
        by_location.push(hp as u64);
    }
    let mut mp: P = std::ptr::null_mut();
    if call!(rt.d, get_at, &mut mp, &here, 2) == 0 {
        by_location.push(mp as u64);
    }
    for pool in by_location {
        rt.alloc_from_host_pool(pool, 3 * MIB);
    }
    for round in 0..6u64 {
        let mut live = Vec::new();
        if let Some(p) = device_pool
            && let Some(a) = rt.alloc_from_pool(rt.cu.alloc_from_pool, p, 8 * MIB)
        {
            rt.free_async(rt.cu.free_async, a);
        }
        for pool in [managed, pinned_host, numa_host].into_iter().flatten() {
            let bytes = rng.size(MIB, 16 * MIB, 4096);
            if let Some(a) = rt.alloc_from_host_pool(pool, bytes) {
                live.push(a);
            }
        }
        // Every other round's allocations stay live to the end.
        if round % 2 == 0 {
            for a in live {
                rt.free_host_pooled(a);
            }
        }
    }
    Ok(Extra::new())
}
