//! The implementations behind the exported entry points, and the memory model.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::procaddr;

mod ipc;
pub use ipc::*;
mod graph;
mod multicast;
pub use graph::*;
pub use multicast::*;
mod sparse;
pub use sparse::*;

pub type CUresult = c_uint;
type CUdevice = c_int;
type CUdeviceptr = u64;
type Handle = *mut c_void;

pub const SUCCESS: CUresult = 0;
pub const INVALID_VALUE: CUresult = 1;
pub const OUT_OF_MEMORY: CUresult = 2;
pub const NOT_INITIALIZED: CUresult = 3;
pub const NO_DEVICE: CUresult = 100;
pub const INVALID_DEVICE: CUresult = 101;
pub const INVALID_CONTEXT: CUresult = 201;
pub const INVALID_HANDLE: CUresult = 400;
pub const NOT_FOUND: CUresult = 500;
pub const NOT_SUPPORTED: CUresult = 801;
pub const HOST_MEMORY_ALREADY_REGISTERED: CUresult = 712;
pub const HOST_MEMORY_NOT_REGISTERED: CUresult = 713;

/// CUDA 12.5: the first version whose `cuCtxCreate` is `cuCtxCreate_v4`.
const DRIVER_VERSION: c_int = 12050;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Device allocation alignment and VMM granularity.
const GRANULE: u64 = 2 * MIB;
const DEFAULT_CAPACITY: u64 = 8 * GIB;
const DEVICE_BASE: u64 = 0x7f00_0000_0000;
const DEVICE_SPAN: u64 = 1 << 38;
const LEGACY_BASE: u64 = 0x1000_0000;
const LEGACY_END: u64 = 0xffe0_0000;
const VA_BASE: u64 = 0x7c00_0000_0000;
const VA_END: u64 = 0x7e00_0000_0000;
const POOL_SPLIT_ALIGN: u64 = 512;
const PITCH_ALIGN: usize = 512;

const MEM_LOCATION_DEVICE: u32 = 1;
const MEM_LOCATION_HOST: u32 = 2;
const MEM_LOCATION_HOST_NUMA: u32 = 3;
const MEM_LOCATION_HOST_NUMA_CURRENT: u32 = 4;
const MEM_ALLOCATION_TYPE_PINNED: u32 = 1;
const MEM_ALLOCATION_TYPE_MANAGED: u32 = 2;

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemLocation {
    kind: u32,
    id: c_int,
}

/// `CUmemAllocationProp`.
#[repr(C)]
pub struct MemAllocationProp {
    kind: u32,
    requested_handle_types: u32,
    location: MemLocation,
    win32_handle_meta_data: *mut c_void,
    alloc_flags: [u8; 8],
}

/// `CUmemPoolProps` (the leading fields that the model reads).
#[repr(C)]
pub struct MemPoolProps {
    alloc_type: u32,
    handle_types: u32,
    location: MemLocation,
}

/// `CUDA_ARRAY_DESCRIPTOR` (`_v2`).
#[repr(C)]
pub struct ArrayDescriptor {
    width: usize,
    height: usize,
    format: u32,
    num_channels: u32,
}

/// `CUDA_ARRAY_DESCRIPTOR` of the legacy entry point (32-bit sizes).
#[repr(C)]
pub struct ArrayDescriptorV1 {
    width: c_uint,
    height: c_uint,
    format: u32,
    num_channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (`_v2`).
#[repr(C)]
pub struct Array3DDescriptor {
    width: usize,
    height: usize,
    depth: usize,
    format: u32,
    num_channels: u32,
    flags: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` of the legacy entry point (32-bit sizes).
#[repr(C)]
pub struct Array3DDescriptorV1 {
    width: c_uint,
    height: c_uint,
    depth: c_uint,
    format: u32,
    num_channels: u32,
    flags: u32,
}

struct Device {
    capacity: u64,
    used: u64,
    next: u64,
    end: u64,
}

struct DevAlloc {
    size: u64,
    dev: usize,
    ctx: u64,
    pool: Option<u64>,
}

struct Ctx {
    dev: usize,
    primary: bool,
    /// The context whose memory is allocated while this one is current: a green context's
    /// `CUcontext` allocates in its device's primary context (CUDA driver API reference,
    /// `cuCtxFromGreenCtx`).
    owner: Option<u64>,
}

/// A green context (`cuGreenCtxCreate`): it holds a reference to its device's primary
/// context until `cuGreenCtxDestroy`.
struct Green {
    dev: usize,
    /// Its `CUcontext`, which `cuCtxFromGreenCtx` returns.
    ctx: u64,
}

#[derive(Default)]
struct Primary {
    ctx: Option<u64>,
    refs: u32,
}

struct Pool {
    dev: usize,
    held: Vec<(u64, u64)>,
    destroyed: bool,
    is_default: bool,
    /// A pool of host or managed memory (`CU_MEM_LOCATION_TYPE_HOST*`,
    /// `CU_MEM_ALLOCATION_TYPE_MANAGED`): its allocations are host memory, and a freed one
    /// goes back to the host at once.
    host: bool,
    /// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`: reserved bytes kept at a synchronization.
    threshold: u64,
    /// The three reuse policies (`CU_MEMPOOL_ATTR_REUSE_*`, attributes 1..=3), 1 by default.
    reuse: [u64; 3],
    /// `CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH` and `CU_MEMPOOL_ATTR_USED_MEM_HIGH`.
    reserved_high: u64,
    used_high: u64,
    /// `CUmemPoolProps::handleTypes`: the handle types the pool and its pointers may be
    /// exported as (none for a default pool).
    handle_types: u32,
    /// Imported from another process (`cuMemPoolImportFromShareableHandle`): its pointers are
    /// imported with `cuMemPoolImportPointer`; nothing is allocated from it here.
    imported: bool,
    /// The exporter's (pid, pool) of an imported pool.
    origin: (u32, u64),
}

impl Pool {
    fn new(dev: usize, is_default: bool, host: bool) -> Self {
        Pool {
            dev,
            held: Vec::new(),
            destroyed: false,
            is_default,
            host,
            threshold: 0,
            reuse: [1; 3],
            reserved_high: 0,
            used_high: 0,
            handle_types: 0,
            imported: false,
            origin: (0, 0),
        }
    }

    fn held_bytes(&self) -> u64 {
        self.held.iter().map(|(_, s)| s).sum()
    }
}

struct Phys {
    size: u64,
    dev: Option<usize>,
    released: bool,
    maps: u32,
    /// References taken by `cuMemRetainAllocationHandle`, each given back by a
    /// `cuMemRelease`.
    retains: u32,
    /// Imported from another process (`cuMemImportFromShareableHandle`): its memory is the
    /// exporter's, never charged here.
    imported: bool,
    /// `CUmemAllocationProp::requestedHandleTypes`: what `cuMemExportToShareableHandle` may
    /// export it as.
    handle_types: u32,
    /// Bindings to multicast objects (`cuMulticastBindMem`, `cuMulticastBindAddr`): each
    /// keeps the memory until it is unbound or its multicast object goes.
    binds: u32,
}

struct Mapping {
    size: u64,
    handle: u64,
}

struct ArrayRec {
    bytes: u64,
    dev: usize,
    ctx: u64,
    /// Sparse or deferred-mapping (`CUDA_ARRAY3D_SPARSE`, `_DEFERRED_MAPPING`): no memory of
    /// its own; `cuMemMapArrayAsync` maps `cuMemCreate` memory into its tiles.
    sparse: bool,
    /// Its mapped tiles and the handles whose memory they are (see `imp/sparse.rs`).
    tiles: BTreeMap<sparse::Tile, u64>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum HostKind {
    Pinned,
    Managed,
    Registered,
    /// From a host or managed pool (`cuMemAllocFromPoolAsync`), freed by `cuMemFreeAsync`.
    Pooled,
}

struct HostRec {
    size: usize,
    kind: HostKind,
    /// The context current when it was made.
    ctx: u64,
}

impl HostKind {
    /// What `cuCtxDestroy` takes with the context: the driver API reference names
    /// `cuMemAllocHost` and `cuMemAllocManaged` memory, and says that stream-ordered memory
    /// (`cuMemAllocFromPoolAsync`) belongs to no context. It is silent on registered memory,
    /// which goes with its context here as in the tracer's Ledger.
    fn goes_with_context(self) -> bool {
        self != HostKind::Pooled
    }

    /// Whether this library allocated the memory (and frees it), rather than registering
    /// the caller's.
    fn owned(self) -> bool {
        self != HostKind::Registered
    }
}

struct State {
    devices: Vec<Device>,
    legacy_next: u64,
    va_next: u64,
    next_handle: u64,
    allocs: BTreeMap<u64, DevAlloc>,
    contexts: HashMap<u64, Ctx>,
    primary: Vec<Primary>,
    pools: HashMap<u64, Pool>,
    default_pools: Vec<u64>,
    /// Per device, the pool `cuMemAllocAsync` takes from (`cuDeviceSetMemPool`).
    current_pools: Vec<u64>,
    /// The default and current pools of host memory, by (allocation type, host-located),
    /// made when first asked for.
    host_pools: HashMap<(u32, bool), (u64, u64)>,
    phys: HashMap<u64, Phys>,
    reservations: BTreeMap<u64, u64>,
    mappings: BTreeMap<u64, Mapping>,
    arrays: HashMap<u64, ArrayRec>,
    host: BTreeMap<usize, HostRec>,
    /// Live events (`cuEventCreate`).
    events: HashSet<u64>,
    /// Live green contexts, by `CUgreenCtx`.
    green: HashMap<u64, Green>,
    /// Resource descriptors (`cuDevResourceGenerateDesc`): their SM counts.
    resource_descs: HashMap<u64, u32>,
    /// Memory of other processes mapped here (IPC and pool pointer imports), by address.
    imports: BTreeMap<u64, ipc::Import>,
    /// Exports made so far: what makes each handle unique.
    exports: u64,
    /// CUDA graphs, their memory nodes and execs, and each device's graph memory pool.
    graphs: graph::Graphs,
    /// Multicast objects (`cuMulticastCreate`), by handle.
    multicast: HashMap<u64, multicast::Multicast>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

thread_local! {
    static CTX_STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn code(r: Result<(), CUresult>) -> CUresult {
    match r {
        Ok(()) => SUCCESS,
        Err(e) => e,
    }
}

/// Runs `f` on the initialized state, or fails with `CUDA_ERROR_NOT_INITIALIZED`.
fn with<R>(f: impl FnOnce(&mut State) -> Result<R, CUresult>) -> Result<R, CUresult> {
    let mut guard = lock();
    let st = guard.as_mut().ok_or(NOT_INITIALIZED)?;
    f(st)
}

fn nonnull<T>(p: *const T) -> Result<(), CUresult> {
    if p.is_null() {
        Err(INVALID_VALUE)
    } else {
        Ok(())
    }
}

/// Writes `v` through an out-pointer already checked to be non-null.
fn put<T>(p: *mut T, v: T) {
    // SAFETY: callers check `p` for null first; the CUDA API contract makes a
    // non-null out-pointer valid for a write of `T`.
    unsafe { p.write(v) }
}

fn stack_top() -> Option<u64> {
    CTX_STACK.with(|s| s.borrow().last().copied())
}

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    let (digits, mult) = match raw.chars().last()? {
        'k' | 'K' => (&raw[..raw.len() - 1], 1u64 << 10),
        'm' | 'M' => (&raw[..raw.len() - 1], MIB),
        'g' | 'G' => (&raw[..raw.len() - 1], GIB),
        _ => (raw, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

impl State {
    fn new(devices: usize, capacity: u64) -> State {
        let mut st = State {
            devices: (0..devices as u64)
                .map(|d| Device {
                    capacity,
                    used: 0,
                    next: DEVICE_BASE + d * DEVICE_SPAN,
                    end: DEVICE_BASE + (d + 1) * DEVICE_SPAN,
                })
                .collect(),
            legacy_next: LEGACY_BASE,
            va_next: VA_BASE,
            next_handle: 0x5000_0000,
            allocs: BTreeMap::new(),
            contexts: HashMap::new(),
            green: HashMap::new(),
            resource_descs: HashMap::new(),
            primary: (0..devices).map(|_| Primary::default()).collect(),
            pools: HashMap::new(),
            default_pools: Vec::new(),
            current_pools: Vec::new(),
            host_pools: HashMap::new(),
            phys: HashMap::new(),
            reservations: BTreeMap::new(),
            mappings: BTreeMap::new(),
            arrays: HashMap::new(),
            host: BTreeMap::new(),
            events: HashSet::new(),
            imports: BTreeMap::new(),
            exports: 0,
            graphs: graph::Graphs::default(),
            multicast: HashMap::new(),
        };
        for dev in 0..devices {
            let h = st.handle();
            st.pools.insert(h, Pool::new(dev, true, false));
            st.default_pools.push(h);
            st.current_pools.push(h);
        }
        st
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 0x40;
        self.next_handle
    }

    fn device(&self, dev: CUdevice) -> Result<usize, CUresult> {
        usize::try_from(dev)
            .ok()
            .filter(|d| *d < self.devices.len())
            .ok_or(INVALID_DEVICE)
    }

    /// The calling thread's current context and its device.
    fn current(&self) -> Result<(u64, usize), CUresult> {
        let ctx = stack_top().ok_or(INVALID_CONTEXT)?;
        let c = self.contexts.get(&ctx).ok_or(INVALID_CONTEXT)?;
        Ok((c.owner.unwrap_or(ctx), c.dev))
    }

    fn charge(&mut self, dev: usize, size: u64) -> Result<(), CUresult> {
        let d = &mut self.devices[dev];
        if d.used.checked_add(size).is_none_or(|u| u > d.capacity) {
            return Err(OUT_OF_MEMORY);
        }
        d.used += size;
        Ok(())
    }

    fn uncharge(&mut self, dev: usize, size: u64) {
        let d = &mut self.devices[dev];
        d.used = d.used.saturating_sub(size);
    }

    /// Charges `size` bytes on `dev` and returns a fresh device address.
    fn carve(&mut self, dev: usize, size: u64, legacy: bool) -> Result<u64, CUresult> {
        let span = round_up(size.max(1), GRANULE);
        if legacy {
            if self.legacy_next + span > LEGACY_END {
                return Err(OUT_OF_MEMORY);
            }
        } else {
            let d = &self.devices[dev];
            if d.next + span > d.end {
                return Err(OUT_OF_MEMORY);
            }
        }
        self.charge(dev, size)?;
        let addr = if legacy {
            let a = self.legacy_next;
            self.legacy_next += span;
            a
        } else {
            let d = &mut self.devices[dev];
            let a = d.next;
            d.next += span;
            a
        };
        Ok(addr)
    }

    fn alloc(&mut self, size: u64, legacy: bool) -> Result<u64, CUresult> {
        let (ctx, dev) = self.current()?;
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        let addr = self.carve(dev, size, legacy)?;
        self.allocs.insert(
            addr,
            DevAlloc {
                size,
                dev,
                ctx,
                pool: None,
            },
        );
        Ok(addr)
    }

    fn free(&mut self, ptr: u64) -> Result<(), CUresult> {
        self.current()?;
        if self.free_import(ptr)? {
            return Ok(());
        }
        if let Some(a) = self.allocs.remove(&ptr) {
            self.release_alloc(ptr, a);
            return Ok(());
        }
        if let Ok(p) = usize::try_from(ptr)
            && self
                .host
                .get(&p)
                .is_some_and(|h| matches!(h.kind, HostKind::Managed | HostKind::Pooled))
        {
            self.host.remove(&p);
            // SAFETY: `p` came from `posix_memalign` in `host_alloc` and was
            // removed from the table, so it is freed exactly once.
            unsafe { libc::free(p as *mut c_void) };
            return Ok(());
        }
        if self.graph_free(ptr) {
            return Ok(());
        }
        Err(INVALID_VALUE)
    }

    /// Returns a removed allocation's bytes to its pool or its device.
    fn release_alloc(&mut self, addr: u64, a: DevAlloc) {
        match a.pool.and_then(|p| self.pools.get_mut(&p)) {
            Some(pool) if !pool.destroyed => pool.held.push((addr, a.size)),
            _ => self.uncharge(a.dev, a.size),
        }
    }

    fn pool_alloc(&mut self, pool_id: u64, size: u64) -> Result<u64, CUresult> {
        let (ctx, _) = self.current()?;
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        let pool = self.pools.get_mut(&pool_id).ok_or(INVALID_VALUE)?;
        // An imported pool only maps the exporter's pointers.
        if pool.destroyed || pool.imported {
            return Err(INVALID_VALUE);
        }
        if pool.host {
            let p = self.host_alloc(size, HostKind::Pooled)?;
            return Ok(p as u64);
        }
        let dev = pool.dev;
        let best = pool
            .held
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| *s >= size)
            .min_by_key(|(i, (_, s))| (*s, *i))
            .map(|(i, _)| i);
        let addr = if let Some(i) = best {
            let (addr, block) = pool.held.remove(i);
            if block > size {
                pool.held
                    .push((addr + round_up(size, POOL_SPLIT_ALIGN), block - size));
            }
            addr
        } else {
            self.carve(dev, size, false)?
        };
        self.allocs.insert(
            addr,
            DevAlloc {
                size,
                dev,
                ctx,
                pool: Some(pool_id),
            },
        );
        let used = self.pool_used(pool_id);
        if let Some(pool) = self.pools.get_mut(&pool_id) {
            pool.used_high = pool.used_high.max(used);
            pool.reserved_high = pool.reserved_high.max(used + pool.held_bytes());
        }
        Ok(addr)
    }

    /// Bytes of a pool's live allocations.
    fn pool_used(&self, pool_id: u64) -> u64 {
        self.allocs
            .values()
            .filter(|a| a.pool == Some(pool_id))
            .map(|a| a.size)
            .sum()
    }

    /// Releases held blocks, largest first, until the pool reserves (in use plus held) no
    /// more than `keep`, as `cuMemPoolTrimTo` and a synchronization above the release
    /// threshold do.
    fn trim(&mut self, pool_id: u64, keep: u64) -> Result<(), CUresult> {
        let used = self.pool_used(pool_id);
        self.trim_held(pool_id, keep.saturating_sub(used))
    }

    /// At a stream, event or context synchronization every pool of device memory gives back
    /// what it holds above its release threshold.
    fn sync_pools(&mut self) {
        let due: Vec<(u64, u64)> = self
            .pools
            .iter()
            .filter(|(_, p)| !p.destroyed && !p.host && !p.held.is_empty())
            .map(|(id, p)| (*id, p.threshold))
            .collect();
        for (id, threshold) in due {
            let _ = self.trim(id, threshold);
        }
    }

    fn trim_held(&mut self, pool_id: u64, keep: u64) -> Result<(), CUresult> {
        let pool = self.pools.get_mut(&pool_id).ok_or(INVALID_VALUE)?;
        if pool.destroyed {
            return Err(INVALID_VALUE);
        }
        let mut held: u64 = pool.held.iter().map(|(_, s)| s).sum();
        let mut released = 0;
        while held > keep {
            let Some(i) = pool
                .held
                .iter()
                .enumerate()
                .max_by_key(|(i, (_, s))| (*s, std::cmp::Reverse(*i)))
                .map(|(i, _)| i)
            else {
                break;
            };
            let excess = held - keep;
            if pool.held[i].1 <= excess {
                let (_, s) = pool.held.remove(i);
                held -= s;
                released += s;
            } else {
                pool.held[i].1 -= excess;
                held -= excess;
                released += excess;
            }
        }
        let dev = pool.dev;
        self.uncharge(dev, released);
        Ok(())
    }

    fn destroy_ctx_memory(&mut self, ctx: u64) {
        self.free_ctx_memory(ctx);
        self.contexts.remove(&ctx);
    }

    /// Frees what was allocated in `ctx`: device memory, arrays, pinned and managed host
    /// memory, and registrations; not stream-ordered memory, which its pool keeps, nor VMM
    /// memory (the driver API reference of `cuCtxDestroy`).
    fn free_ctx_memory(&mut self, ctx: u64) {
        let dead: Vec<u64> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.ctx == ctx && a.pool.is_none())
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(a) = self.allocs.remove(&k) {
                self.uncharge(a.dev, a.size);
            }
        }
        let dead: Vec<u64> = self
            .arrays
            .iter()
            .filter(|(_, a)| a.ctx == ctx)
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(a) = self.arrays.remove(&k) {
                self.array_gone(a);
            }
        }
        self.host.retain(|&k, h| {
            let gone = h.ctx == ctx && h.kind.goes_with_context();
            if gone && h.kind.owned() {
                // SAFETY: `k` came from `posix_memalign` in `host_alloc` (the kind says this
                // library allocated it) and leaves the table here, so it is freed exactly
                // once.
                unsafe { libc::free(k as *mut c_void) };
            }
            !gone
        });
    }

    fn new_ctx(&mut self, dev: usize, primary: bool) -> u64 {
        let h = self.handle();
        self.contexts.insert(
            h,
            Ctx {
                dev,
                primary,
                owner: None,
            },
        );
        h
    }

    /// Retains `dev`'s primary context, making it on the first retain.
    fn retain_primary(&mut self, d: usize) -> u64 {
        let ctx = match self.primary[d].ctx {
            Some(c) => c,
            None => {
                let c = self.new_ctx(d, true);
                self.primary[d].ctx = Some(c);
                c
            }
        };
        self.primary[d].refs += 1;
        ctx
    }

    /// Drops a reference to `dev`'s primary context; the last one destroys it and its memory.
    fn release_primary(&mut self, d: usize) -> Result<(), CUresult> {
        let p = &mut self.primary[d];
        let ctx = p.ctx.ok_or(INVALID_CONTEXT)?;
        p.refs = p.refs.saturating_sub(1);
        if p.refs == 0 {
            p.ctx = None;
            self.destroy_ctx_memory(ctx);
        }
        Ok(())
    }

    fn array_create(&mut self, bytes: Option<u64>, flags: u32) -> Result<u64, CUresult> {
        let (ctx, dev) = self.current()?;
        let sparse = flags & (sparse::ARRAY3D_SPARSE | sparse::ARRAY3D_DEFERRED_MAPPING) != 0;
        // A sparse or deferred-mapping array has no memory until tiles are mapped into it.
        let bytes = if sparse {
            0
        } else {
            bytes.ok_or(INVALID_VALUE)?
        };
        self.charge(dev, bytes)?;
        let h = self.handle();
        self.arrays.insert(
            h,
            ArrayRec {
                bytes,
                dev,
                ctx,
                sparse,
                tiles: BTreeMap::new(),
            },
        );
        Ok(h)
    }

    /// An array goes: its memory, and what its mapped tiles held.
    fn array_gone(&mut self, a: ArrayRec) {
        self.uncharge(a.dev, a.bytes);
        for h in a.tiles.into_values() {
            self.unbind_memory(h);
        }
    }

    /// Whether `[ptr, ptr + n)` lies inside one allocation or mapping; copies into
    /// managed memory really copy.
    fn copy_target(&mut self, dst: u64, src: *const c_void, n: u64) -> Result<(), CUresult> {
        self.current()?;
        if n == 0 {
            return Ok(());
        }
        nonnull(src)?;
        let end = dst.checked_add(n).ok_or(INVALID_VALUE)?;
        if let Some((a, rec)) = self.allocs.range(..=dst).next_back()
            && end <= a + rec.size
        {
            return Ok(());
        }
        if let Some((m, rec)) = self.mappings.range(..=dst).next_back()
            && end <= m + rec.size
        {
            return Ok(());
        }
        let p = usize::try_from(dst).map_err(|_| INVALID_VALUE)?;
        if let Some((h, rec)) = self.host.range(..=p).next_back()
            && rec.kind == HostKind::Managed
            && end <= (*h + rec.size) as u64
        {
            // SAFETY: the destination lies inside a live managed allocation that
            // this library allocated; the caller vouches for `n` readable bytes
            // at `src`.
            unsafe { std::ptr::copy(src as *const u8, p as *mut u8, n as usize) };
            return Ok(());
        }
        Err(INVALID_VALUE)
    }

    fn host_alloc(&mut self, size: u64, kind: HostKind) -> Result<usize, CUresult> {
        let (ctx, _) = self.current()?;
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        let size = usize::try_from(size).map_err(|_| OUT_OF_MEMORY)?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer and 4096 is a power of two that is
        // a multiple of the pointer size.
        let rc = unsafe { libc::posix_memalign(&mut p, 4096, size) };
        if rc != 0 || p.is_null() {
            return Err(OUT_OF_MEMORY);
        }
        self.host.insert(p as usize, HostRec { size, kind, ctx });
        Ok(p as usize)
    }

    fn free_phys_if_done(&mut self, handle: u64) {
        if let Some(p) = self.phys.get(&handle)
            && p.released
            && p.maps == 0
            && p.binds == 0
        {
            let (size, dev) = (p.size, p.dev.filter(|_| !p.imported));
            self.phys.remove(&handle);
            if let Some(dev) = dev {
                self.uncharge(dev, size);
            }
        }
    }
}

fn format_size(format: u32) -> Option<u64> {
    match format {
        0x01 | 0x08 => Some(1),
        0x02 | 0x09 | 0x10 => Some(2),
        0x03 | 0x0a | 0x20 => Some(4),
        _ => None,
    }
}

/// Bytes of an array: width × max(height, 1) × max(depth, 1) × channels × element size.
fn array_bytes(w: u64, h: u64, d: u64, format: u32, channels: u32) -> Option<u64> {
    if w == 0 || !matches!(channels, 1 | 2 | 4) {
        return None;
    }
    let elem = format_size(format)?;
    w.checked_mul(h.max(1))?
        .checked_mul(d.max(1))?
        .checked_mul(u64::from(channels))?
        .checked_mul(elem)
}

/// Bytes of a mipmapped array: the sum over levels, each halving every nonzero
/// dimension (down to 1).
fn mipmap_bytes(w: u64, h: u64, d: u64, format: u32, channels: u32, levels: u32) -> Option<u64> {
    if levels == 0 {
        return None;
    }
    let mut total: u64 = 0;
    for l in 0..levels.min(32) {
        let shrink = |v: u64| if v == 0 { 0 } else { (v >> l).max(1) };
        total = total.checked_add(array_bytes(
            shrink(w),
            shrink(h),
            shrink(d),
            format,
            channels,
        )?)?;
    }
    Some(total)
}

// ---------------------------------------------------------------------------
// Initialization, devices, procedure addresses
// ---------------------------------------------------------------------------

pub extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if flags != 0 {
        return INVALID_VALUE;
    }
    let mut g = lock();
    if g.is_some() {
        return SUCCESS;
    }
    let devices = env_u64("SIMCUDA_DEVICES").unwrap_or(1).min(64) as usize;
    if devices == 0 {
        return NO_DEVICE;
    }
    let capacity = env_u64("SIMCUDA_CAPACITY").unwrap_or(DEFAULT_CAPACITY);
    *g = Some(State::new(devices, capacity));
    SUCCESS
}

pub extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    code(nonnull(version).map(|()| put(version, DRIVER_VERSION)))
}

pub extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    code(with(|st| {
        nonnull(device)?;
        st.device(ordinal)?;
        put(device, ordinal);
        Ok(())
    }))
}

pub extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    code(with(|st| {
        nonnull(count)?;
        put(count, st.devices.len() as c_int);
        Ok(())
    }))
}

pub extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    code(with(|st| {
        nonnull(bytes)?;
        let d = st.device(dev)?;
        put(bytes, st.devices[d].capacity as usize);
        Ok(())
    }))
}

pub extern "C" fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    code(with(|st| {
        nonnull(bytes)?;
        let d = st.device(dev)?;
        put(
            bytes,
            st.devices[d].capacity.min(u64::from(c_uint::MAX)) as c_uint,
        );
        Ok(())
    }))
}

fn mem_info(st: &State) -> Result<(u64, u64), CUresult> {
    let (_, dev) = st.current()?;
    let d = &st.devices[dev];
    Ok((d.capacity.saturating_sub(d.used), d.capacity))
}

pub extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    code(with(|st| {
        nonnull(free)?;
        nonnull(total)?;
        let (f, t) = mem_info(st)?;
        put(free, f as usize);
        put(total, t as usize);
        Ok(())
    }))
}

pub extern "C" fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) -> CUresult {
    code(with(|st| {
        nonnull(free)?;
        nonnull(total)?;
        let (f, t) = mem_info(st)?;
        let clamp = |v: u64| v.min(u64::from(c_uint::MAX)) as c_uint;
        put(free, clamp(f));
        put(total, clamp(t));
        Ok(())
    }))
}

fn proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> Result<*mut c_void, c_int> {
    // SAFETY: `symbol` was checked non-null by the callers and is a C string
    // per the API contract.
    let name = unsafe { CStr::from_ptr(symbol) };
    let found = name
        .to_str()
        .map_err(|_| procaddr::QUERY_SYMBOL_NOT_FOUND)
        .and_then(|n| procaddr::resolve(n, version, flags))
        .and_then(|s| crate::export_address(s).ok_or(procaddr::QUERY_SYMBOL_NOT_FOUND));
    let addr = found.unwrap_or(std::ptr::null_mut());
    put(pfn, addr);
    found
}

pub extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    if symbol.is_null() || pfn.is_null() {
        return INVALID_VALUE;
    }
    match proc_address(symbol, pfn, version, flags) {
        Ok(_) => SUCCESS,
        Err(_) => NOT_FOUND,
    }
}

pub extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    if symbol.is_null() || pfn.is_null() {
        return INVALID_VALUE;
    }
    let s = match proc_address(symbol, pfn, version, flags) {
        Ok(_) => procaddr::QUERY_SUCCESS,
        Err(e) => e,
    };
    if !status.is_null() {
        put(status, s);
    }
    SUCCESS
}

// ---------------------------------------------------------------------------
// Device memory
// ---------------------------------------------------------------------------

/// What the trap does to the call that springs it.
enum TrapAction {
    /// The calling thread ends inside the call (the raw `exit` system call: no unwinding,
    /// no return), as a thread killed in the driver would.
    ExitThread,
    /// The call creates `DIR/entered`, then waits inside the driver until `DIR/release`
    /// exists, then goes on as usual.
    Block(PathBuf),
}

/// A `cuMemAlloc_v2` of exactly `bytes` springs the trap.
struct Trap {
    bytes: u64,
    action: TrapAction,
}

/// `SIMCUDA_TRAP=exit-thread` or `SIMCUDA_TRAP=block:DIR`, with `SIMCUDA_TRAP_BYTES=N`: read
/// once, at the first `cuMemAlloc_v2`.
fn read_trap() -> Option<Trap> {
    let bytes = env_u64("SIMCUDA_TRAP_BYTES")?;
    let spec = std::env::var("SIMCUDA_TRAP").ok()?;
    let action = match spec.split_once(':') {
        None if spec == "exit-thread" => TrapAction::ExitThread,
        Some(("block", dir)) => TrapAction::Block(PathBuf::from(dir)),
        _ => return None,
    };
    Some(Trap { bytes, action })
}

/// Springs the trap for a `cuMemAlloc_v2` of `bytes`, if one is set for that size. Runs
/// before the state is locked: a thread that ends or waits here holds nothing.
fn spring_trap(bytes: u64) {
    static TRAP: OnceLock<Option<Trap>> = OnceLock::new();
    let Some(trap) = TRAP.get_or_init(read_trap) else {
        return;
    };
    if trap.bytes != bytes {
        return;
    }
    match &trap.action {
        TrapAction::ExitThread => {
            // SAFETY: the exit system call ends only the calling thread and never returns;
            // no lock is held and nothing on this thread's stack is used again.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!("the exit system call returned");
        }
        TrapAction::Block(dir) => {
            // Whoever waits for this file learns that the call is in flight; if it cannot
            // be written, the waiter times out and says so.
            let _ = std::fs::write(dir.join("entered"), b"");
            while !dir.join("release").exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

pub extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    spring_trap(bytes as u64);
    code(with(|st| {
        nonnull(dptr)?;
        let a = st.alloc(bytes as u64, false)?;
        put(dptr, a);
        Ok(())
    }))
}

pub extern "C" fn cuMemAlloc(dptr: *mut c_uint, bytes: c_uint) -> CUresult {
    code(with(|st| {
        nonnull(dptr)?;
        let a = st.alloc(u64::from(bytes), true)?;
        put(dptr, a as c_uint);
        Ok(())
    }))
}

fn pitch_of(width: u64, height: u64, elem: u32) -> Result<(u64, u64), CUresult> {
    if width == 0 || height == 0 || !matches!(elem, 4 | 8 | 16) {
        return Err(INVALID_VALUE);
    }
    let pitch = round_up(width, PITCH_ALIGN as u64);
    Ok((pitch, pitch.checked_mul(height).ok_or(OUT_OF_MEMORY)?))
}

pub extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    ppitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    code(with(|st| {
        nonnull(dptr)?;
        nonnull(ppitch)?;
        let (pitch, bytes) = pitch_of(width as u64, height as u64, elem)?;
        let a = st.alloc(bytes, false)?;
        put(dptr, a);
        put(ppitch, pitch as usize);
        Ok(())
    }))
}

pub extern "C" fn cuMemAllocPitch(
    dptr: *mut c_uint,
    ppitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    elem: c_uint,
) -> CUresult {
    code(with(|st| {
        nonnull(dptr)?;
        nonnull(ppitch)?;
        let (pitch, bytes) = pitch_of(u64::from(width), u64::from(height), elem)?;
        let pitch32 = c_uint::try_from(pitch).map_err(|_| INVALID_VALUE)?;
        let a = st.alloc(bytes, true)?;
        put(dptr, a as c_uint);
        put(ppitch, pitch32);
        Ok(())
    }))
}

pub extern "C" fn cuMemFree_v2(ptr: CUdeviceptr) -> CUresult {
    code(with(|st| st.free(ptr)))
}

pub extern "C" fn cuMemFree(ptr: c_uint) -> CUresult {
    code(with(|st| st.free(u64::from(ptr))))
}

// ---------------------------------------------------------------------------
// Stream-ordered allocation and pools
// ---------------------------------------------------------------------------

fn alloc_async(dptr: *mut CUdeviceptr, bytes: usize, pool: Option<Handle>) -> CUresult {
    code(with(|st| {
        nonnull(dptr)?;
        let pool_id = match pool {
            Some(p) => p as u64,
            None => {
                let (_, dev) = st.current()?;
                st.current_pools[dev]
            }
        };
        let a = st.pool_alloc(pool_id, bytes as u64)?;
        put(dptr, a);
        Ok(())
    }))
}

pub extern "C" fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytes: usize, _s: Handle) -> CUresult {
    alloc_async(dptr, bytes, None)
}

pub extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    _s: Handle,
) -> CUresult {
    alloc_async(dptr, bytes, None)
}

pub extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    pool: Handle,
    _s: Handle,
) -> CUresult {
    alloc_async(dptr, bytes, Some(pool))
}

pub extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    pool: Handle,
    _s: Handle,
) -> CUresult {
    alloc_async(dptr, bytes, Some(pool))
}

pub extern "C" fn cuMemFreeAsync(ptr: CUdeviceptr, _s: Handle) -> CUresult {
    code(with(|st| st.free(ptr)))
}

pub extern "C" fn cuMemFreeAsync_ptsz(ptr: CUdeviceptr, _s: Handle) -> CUresult {
    code(with(|st| st.free(ptr)))
}

pub extern "C" fn cuMemPoolCreate(pool: *mut Handle, props: *const MemPoolProps) -> CUresult {
    code(with(|st| {
        nonnull(pool)?;
        nonnull(props)?;
        // SAFETY: checked non-null; the caller passes a `CUmemPoolProps`.
        let props = unsafe { &*props };
        let host_location = matches!(
            props.location.kind,
            MEM_LOCATION_HOST | MEM_LOCATION_HOST_NUMA | MEM_LOCATION_HOST_NUMA_CURRENT
        );
        let host = match props.alloc_type {
            MEM_ALLOCATION_TYPE_PINNED => host_location,
            MEM_ALLOCATION_TYPE_MANAGED => true,
            _ => return Err(INVALID_VALUE),
        };
        if !host_location && props.location.kind != MEM_LOCATION_DEVICE {
            return Err(INVALID_VALUE);
        }
        let dev = if host_location {
            st.current()?.1
        } else {
            st.device(props.location.id)?
        };
        let h = st.handle();
        let mut created = Pool::new(dev, false, host);
        created.handle_types = props.handle_types;
        st.pools.insert(h, created);
        put(pool, h as Handle);
        Ok(())
    }))
}

pub extern "C" fn cuMemPoolDestroy(pool: Handle) -> CUresult {
    code(with(|st| {
        let p = st.pools.get_mut(&(pool as u64)).ok_or(INVALID_VALUE)?;
        if p.destroyed || p.is_default {
            return Err(INVALID_VALUE);
        }
        p.destroyed = true;
        let held: u64 = p.held.drain(..).map(|(_, s)| s).sum();
        let dev = p.dev;
        st.uncharge(dev, held);
        Ok(())
    }))
}

pub extern "C" fn cuMemPoolTrimTo(pool: Handle, keep: usize) -> CUresult {
    code(with(|st| st.trim(pool as u64, keep as u64)))
}

/// `CUmemPool_attribute` values (CUDA driver API reference).
const ATTR_RELEASE_THRESHOLD: c_int = 4;
const ATTR_RESERVED_MEM_CURRENT: c_int = 5;
const ATTR_RESERVED_MEM_HIGH: c_int = 6;
const ATTR_USED_MEM_CURRENT: c_int = 7;
const ATTR_USED_MEM_HIGH: c_int = 8;

pub extern "C" fn cuMemPoolSetAttribute(pool: Handle, attr: c_int, value: *mut c_void) -> CUresult {
    code(with(|st| {
        nonnull(value)?;
        let id = pool as u64;
        let p = st.pools.get_mut(&id).ok_or(INVALID_VALUE)?;
        if p.destroyed {
            return Err(INVALID_VALUE);
        }
        match attr {
            1..=3 => {
                // SAFETY: checked non-null; the reuse policies are an `int`.
                let v = unsafe { value.cast::<c_int>().read() };
                p.reuse[(attr - 1) as usize] = u64::from(v != 0);
            }
            ATTR_RELEASE_THRESHOLD => {
                // SAFETY: checked non-null; the threshold is a `cuuint64_t`.
                p.threshold = unsafe { value.cast::<u64>().read() };
            }
            // The high watermarks can only be reset, to 0.
            ATTR_RESERVED_MEM_HIGH | ATTR_USED_MEM_HIGH => {
                // SAFETY: checked non-null; the watermarks are a `cuuint64_t`.
                if unsafe { value.cast::<u64>().read() } != 0 {
                    return Err(INVALID_VALUE);
                }
                if attr == ATTR_RESERVED_MEM_HIGH {
                    p.reserved_high = 0;
                } else {
                    p.used_high = 0;
                }
            }
            _ => return Err(INVALID_VALUE),
        }
        Ok(())
    }))
}

pub extern "C" fn cuMemPoolGetAttribute(pool: Handle, attr: c_int, value: *mut c_void) -> CUresult {
    code(with(|st| {
        nonnull(value)?;
        let id = pool as u64;
        let used = st.pool_used(id);
        let p = st.pools.get(&id).ok_or(INVALID_VALUE)?;
        if p.destroyed {
            return Err(INVALID_VALUE);
        }
        let v = match attr {
            1..=3 => {
                put(value.cast::<c_int>(), p.reuse[(attr - 1) as usize] as c_int);
                return Ok(());
            }
            ATTR_RELEASE_THRESHOLD => p.threshold,
            ATTR_RESERVED_MEM_CURRENT => used + p.held_bytes(),
            ATTR_RESERVED_MEM_HIGH => p.reserved_high,
            ATTR_USED_MEM_CURRENT => used,
            ATTR_USED_MEM_HIGH => p.used_high,
            _ => return Err(INVALID_VALUE),
        };
        put(value.cast::<u64>(), v);
        Ok(())
    }))
}

pub extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: CUdevice) -> CUresult {
    code(with(|st| {
        nonnull(pool)?;
        let d = st.device(dev)?;
        put(pool, st.default_pools[d] as Handle);
        Ok(())
    }))
}

// ---------------------------------------------------------------------------
// Virtual memory management
// ---------------------------------------------------------------------------

pub extern "C" fn cuMemCreate(
    handle: *mut u64,
    size: usize,
    prop: *const MemAllocationProp,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        nonnull(handle)?;
        nonnull(prop)?;
        // SAFETY: checked non-null; the caller passes a `CUmemAllocationProp`.
        let prop = unsafe { &*prop };
        let size = size as u64;
        if flags != 0
            || prop.kind != MEM_ALLOCATION_TYPE_PINNED
            || size == 0
            || !size.is_multiple_of(GRANULE)
        {
            return Err(INVALID_VALUE);
        }
        let dev = match prop.location.kind {
            MEM_LOCATION_DEVICE => Some(st.device(prop.location.id)?),
            MEM_LOCATION_HOST | MEM_LOCATION_HOST_NUMA | MEM_LOCATION_HOST_NUMA_CURRENT => None,
            _ => return Err(INVALID_VALUE),
        };
        if let Some(d) = dev {
            st.charge(d, size)?;
        }
        let h = st.handle();
        st.phys.insert(
            h,
            Phys {
                size,
                dev,
                released: false,
                maps: 0,
                retains: 0,
                imported: false,
                handle_types: prop.requested_handle_types,
                binds: 0,
            },
        );
        put(handle, h);
        Ok(())
    }))
}

pub extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    code(with(|st| {
        if st.multicast.contains_key(&handle) {
            return st.release_multicast(handle);
        }
        let p = st.phys.get_mut(&handle).ok_or(INVALID_VALUE)?;
        if p.released {
            return Err(INVALID_VALUE);
        }
        if p.retains > 0 {
            p.retains -= 1;
            return Ok(());
        }
        p.released = true;
        st.free_phys_if_done(handle);
        Ok(())
    }))
}

pub extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    _addr: CUdeviceptr,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        nonnull(ptr)?;
        let size = size as u64;
        let align = alignment as u64;
        if flags != 0
            || size == 0
            || !size.is_multiple_of(GRANULE)
            || (align != 0 && !align.is_power_of_two())
        {
            return Err(INVALID_VALUE);
        }
        let start = round_up(st.va_next, align.max(GRANULE));
        let end = start.checked_add(size).ok_or(OUT_OF_MEMORY)?;
        if end > VA_END {
            return Err(OUT_OF_MEMORY);
        }
        st.va_next = end;
        st.reservations.insert(start, size);
        put(ptr, start);
        Ok(())
    }))
}

pub extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    code(with(|st| {
        if st.reservations.get(&ptr) != Some(&(size as u64)) {
            return Err(INVALID_VALUE);
        }
        if st.mappings.range(ptr..ptr + size as u64).next().is_some() {
            return Err(INVALID_VALUE);
        }
        st.reservations.remove(&ptr);
        Ok(())
    }))
}

pub extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: u64,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        let size = size as u64;
        let end = ptr.checked_add(size).ok_or(INVALID_VALUE)?;
        if flags != 0 || size == 0 || !size.is_multiple_of(GRANULE) || !ptr.is_multiple_of(GRANULE)
        {
            return Err(INVALID_VALUE);
        }
        let (released, whole) = match (st.phys.get(&handle), st.multicast.get(&handle)) {
            (Some(p), _) => (p.released, p.size),
            (None, Some(m)) => {
                // The driver blocks until every device of the team is added; this one refuses.
                if !m.team_complete() {
                    return Err(INVALID_VALUE);
                }
                (m.released, m.size)
            }
            (None, None) => return Err(INVALID_HANDLE),
        };
        if released || (offset as u64).checked_add(size).is_none_or(|e| e > whole) {
            return Err(INVALID_VALUE);
        }
        let inside = st
            .reservations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(r, s)| end <= r + s);
        if !inside {
            return Err(INVALID_VALUE);
        }
        let overlaps_before = st
            .mappings
            .range(..ptr)
            .next_back()
            .is_some_and(|(m, rec)| m + rec.size > ptr);
        if overlaps_before || st.mappings.range(ptr..end).next().is_some() {
            return Err(INVALID_VALUE);
        }
        st.mappings.insert(ptr, Mapping { size, handle });
        if let Some(p) = st.phys.get_mut(&handle) {
            p.maps += 1;
        } else if let Some(m) = st.multicast.get_mut(&handle) {
            m.maps += 1;
        }
        Ok(())
    }))
}

pub extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    code(with(|st| {
        let end = ptr.checked_add(size as u64).ok_or(INVALID_VALUE)?;
        let straddles = st
            .mappings
            .range(..ptr)
            .next_back()
            .is_some_and(|(m, rec)| m + rec.size > ptr);
        let inside: Vec<u64> = st.mappings.range(ptr..end).map(|(m, _)| *m).collect();
        if straddles
            || inside.is_empty()
            || inside
                .iter()
                .any(|m| st.mappings.get(m).is_some_and(|r| m + r.size > end))
        {
            return Err(INVALID_VALUE);
        }
        for m in inside {
            if let Some(rec) = st.mappings.remove(&m) {
                if let Some(p) = st.phys.get_mut(&rec.handle) {
                    p.maps = p.maps.saturating_sub(1);
                } else if let Some(m) = st.multicast.get_mut(&rec.handle) {
                    m.maps = m.maps.saturating_sub(1);
                    st.drop_multicast_if_done(rec.handle);
                }
                st.free_phys_if_done(rec.handle);
            }
        }
        Ok(())
    }))
}

pub extern "C" fn cuMemSetAccess(
    ptr: CUdeviceptr,
    size: usize,
    desc: *const c_void,
    count: usize,
) -> CUresult {
    code(with(|st| {
        nonnull(desc)?;
        let end = ptr.checked_add(size as u64).ok_or(INVALID_VALUE)?;
        let inside = st
            .reservations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(r, s)| end <= r + s);
        if count == 0 || size == 0 || !inside {
            return Err(INVALID_VALUE);
        }
        Ok(())
    }))
}

pub extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const MemAllocationProp,
    _option: c_uint,
) -> CUresult {
    code(with(|_| {
        nonnull(granularity)?;
        nonnull(prop)?;
        put(granularity, GRANULE as usize);
        Ok(())
    }))
}

// ---------------------------------------------------------------------------
// Arrays
// ---------------------------------------------------------------------------

fn array_out(out: *mut Handle, desc_ok: bool, bytes: impl FnOnce() -> Option<u64>) -> CUresult {
    array_out_flags(out, desc_ok, 0, bytes)
}

/// [`array_out`] of a 3D descriptor, with its `Flags`.
fn array_out_flags(
    out: *mut Handle,
    desc_ok: bool,
    flags: u32,
    bytes: impl FnOnce() -> Option<u64>,
) -> CUresult {
    code(with(|st| {
        nonnull(out)?;
        if !desc_ok {
            return Err(INVALID_VALUE);
        }
        let h = st.array_create(bytes(), flags)?;
        put(out, h as Handle);
        Ok(())
    }))
}

pub extern "C" fn cuArrayCreate_v2(out: *mut Handle, desc: *const ArrayDescriptor) -> CUresult {
    array_out(out, !desc.is_null(), || {
        // SAFETY: `desc` is non-null (checked by `array_out` before this runs)
        // and points to a `CUDA_ARRAY_DESCRIPTOR`.
        let d = unsafe { &*desc };
        array_bytes(d.width as u64, d.height as u64, 0, d.format, d.num_channels)
    })
}

pub extern "C" fn cuArrayCreate(out: *mut Handle, desc: *const ArrayDescriptorV1) -> CUresult {
    array_out(out, !desc.is_null(), || {
        // SAFETY: `desc` is non-null (checked by `array_out` before this runs)
        // and points to a legacy `CUDA_ARRAY_DESCRIPTOR`.
        let d = unsafe { &*desc };
        array_bytes(
            u64::from(d.width),
            u64::from(d.height),
            0,
            d.format,
            d.num_channels,
        )
    })
}

pub extern "C" fn cuArray3DCreate_v2(out: *mut Handle, desc: *const Array3DDescriptor) -> CUresult {
    // SAFETY: read only when non-null; the caller passes a `CUDA_ARRAY3D_DESCRIPTOR`.
    let flags = if desc.is_null() {
        0
    } else {
        unsafe { (*desc).flags }
    };
    array_out_flags(out, !desc.is_null(), flags, || {
        // SAFETY: `desc` is non-null (checked by `array_out` before this runs)
        // and points to a `CUDA_ARRAY3D_DESCRIPTOR`.
        let d = unsafe { &*desc };
        array_bytes(
            d.width as u64,
            d.height as u64,
            d.depth as u64,
            d.format,
            d.num_channels,
        )
    })
}

pub extern "C" fn cuArray3DCreate(out: *mut Handle, desc: *const Array3DDescriptorV1) -> CUresult {
    array_out(out, !desc.is_null(), || {
        // SAFETY: `desc` is non-null (checked by `array_out` before this runs)
        // and points to a legacy `CUDA_ARRAY3D_DESCRIPTOR`.
        let d = unsafe { &*desc };
        array_bytes(
            u64::from(d.width),
            u64::from(d.height),
            u64::from(d.depth),
            d.format,
            d.num_channels,
        )
    })
}

pub extern "C" fn cuMipmappedArrayCreate(
    out: *mut Handle,
    desc: *const Array3DDescriptor,
    levels: c_uint,
) -> CUresult {
    // SAFETY: read only when non-null; the caller passes a `CUDA_ARRAY3D_DESCRIPTOR`.
    let flags = if desc.is_null() {
        0
    } else {
        unsafe { (*desc).flags }
    };
    array_out_flags(out, !desc.is_null(), flags, || {
        // SAFETY: `desc` is non-null (checked by `array_out` before this runs)
        // and points to a `CUDA_ARRAY3D_DESCRIPTOR`.
        let d = unsafe { &*desc };
        mipmap_bytes(
            d.width as u64,
            d.height as u64,
            d.depth as u64,
            d.format,
            d.num_channels,
            levels,
        )
    })
}

fn array_destroy(h: Handle) -> CUresult {
    if h.is_null() {
        return INVALID_HANDLE;
    }
    code(with(|st| {
        let a = st.arrays.remove(&(h as u64)).ok_or(INVALID_HANDLE)?;
        st.array_gone(a);
        Ok(())
    }))
}

pub extern "C" fn cuArrayDestroy(h: Handle) -> CUresult {
    array_destroy(h)
}

pub extern "C" fn cuMipmappedArrayDestroy(h: Handle) -> CUresult {
    array_destroy(h)
}

// ---------------------------------------------------------------------------
// Host memory
// ---------------------------------------------------------------------------

pub extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    flags: c_uint,
) -> CUresult {
    code(with(|st| {
        nonnull(dptr)?;
        if flags != 1 && flags != 2 {
            return Err(INVALID_VALUE);
        }
        let p = st.host_alloc(bytes as u64, HostKind::Managed)?;
        put(dptr, p as u64);
        Ok(())
    }))
}

fn alloc_host(pp: *mut *mut c_void, bytes: u64, flags: c_uint) -> CUresult {
    code(with(|st| {
        nonnull(pp)?;
        if flags & !0xf != 0 {
            return Err(INVALID_VALUE);
        }
        let p = st.host_alloc(bytes, HostKind::Pinned)?;
        put(pp, p as *mut c_void);
        Ok(())
    }))
}

pub extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytes: usize) -> CUresult {
    alloc_host(pp, bytes as u64, 0)
}

pub extern "C" fn cuMemAllocHost(pp: *mut *mut c_void, bytes: c_uint) -> CUresult {
    alloc_host(pp, u64::from(bytes), 0)
}

pub extern "C" fn cuMemHostAlloc(pp: *mut *mut c_void, bytes: usize, flags: c_uint) -> CUresult {
    alloc_host(pp, bytes as u64, flags)
}

pub extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    code(with(|st| {
        st.current()?;
        let key = p as usize;
        if !st
            .host
            .get(&key)
            .is_some_and(|h| h.kind == HostKind::Pinned)
        {
            return Err(INVALID_VALUE);
        }
        st.host.remove(&key);
        // SAFETY: `p` came from `posix_memalign` in `host_alloc` and was removed
        // from the table, so it is freed exactly once.
        unsafe { libc::free(p) };
        Ok(())
    }))
}

fn host_register(p: *mut c_void, bytes: usize, flags: c_uint) -> CUresult {
    code(with(|st| {
        let (ctx, _) = st.current()?;
        nonnull(p)?;
        if bytes == 0 || flags & !0xf != 0 {
            return Err(INVALID_VALUE);
        }
        let start = p as usize;
        let end = start.checked_add(bytes).ok_or(INVALID_VALUE)?;
        let before = st
            .host
            .range(..=start)
            .next_back()
            .is_some_and(|(h, r)| h + r.size > start);
        if before || st.host.range(start..end).next().is_some() {
            return Err(HOST_MEMORY_ALREADY_REGISTERED);
        }
        st.host.insert(
            start,
            HostRec {
                size: bytes,
                kind: HostKind::Registered,
                ctx,
            },
        );
        Ok(())
    }))
}

pub extern "C" fn cuMemHostRegister_v2(p: *mut c_void, bytes: usize, flags: c_uint) -> CUresult {
    host_register(p, bytes, flags)
}

pub extern "C" fn cuMemHostRegister(p: *mut c_void, bytes: usize, flags: c_uint) -> CUresult {
    host_register(p, bytes, flags)
}

pub extern "C" fn cuMemHostUnregister(p: *mut c_void) -> CUresult {
    code(with(|st| {
        st.current()?;
        let key = p as usize;
        if !st
            .host
            .get(&key)
            .is_some_and(|h| h.kind == HostKind::Registered)
        {
            return Err(HOST_MEMORY_NOT_REGISTERED);
        }
        st.host.remove(&key);
        Ok(())
    }))
}

// ---------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------

fn ctx_create(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    code(with(|st| {
        nonnull(pctx)?;
        let d = st.device(dev)?;
        let h = st.new_ctx(d, false);
        CTX_STACK.with(|s| s.borrow_mut().push(h));
        put(pctx, h as Handle);
        Ok(())
    }))
}

pub extern "C" fn cuCtxCreate_v2(pctx: *mut Handle, _flags: c_uint, dev: CUdevice) -> CUresult {
    ctx_create(pctx, dev)
}

pub extern "C" fn cuCtxCreate(pctx: *mut Handle, _flags: c_uint, dev: CUdevice) -> CUresult {
    ctx_create(pctx, dev)
}

pub extern "C" fn cuCtxCreate_v3(
    pctx: *mut Handle,
    params: *const c_void,
    num_params: c_int,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    if num_params < 0 || (num_params > 0 && params.is_null()) {
        return INVALID_VALUE;
    }
    ctx_create(pctx, dev)
}

/// `CUctxCreateParams` (`cuda.h`, CUDA 12.5).
#[repr(C)]
pub struct CtxCreateParams {
    exec_affinity_params: *const c_void,
    num_exec_affinity_params: c_int,
    cig_params: *const c_void,
}

/// `cuCtxCreate_v4`, what `cuCtxCreate` means from CUDA 12.5: the parameters may be null;
/// execution affinity and CIG parameters cannot both be given.
pub extern "C" fn cuCtxCreate_v4(
    pctx: *mut Handle,
    params: *const CtxCreateParams,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: a non-null `params` points to a `CUctxCreateParams` per the API contract.
    if let Some(p) = unsafe { params.as_ref() } {
        let affinity = p.num_exec_affinity_params != 0;
        if p.num_exec_affinity_params < 0
            || (affinity && p.exec_affinity_params.is_null())
            || (affinity && !p.cig_params.is_null())
        {
            return INVALID_VALUE;
        }
    }
    ctx_create(pctx, dev)
}

fn ctx_destroy(ctx: Handle) -> CUresult {
    if ctx.is_null() {
        return INVALID_VALUE;
    }
    code(with(|st| {
        let id = ctx as u64;
        match st.contexts.get(&id) {
            // A green context's CUcontext goes with cuGreenCtxDestroy only.
            Some(c) if !c.primary && c.owner.is_none() => {}
            _ => return Err(INVALID_CONTEXT),
        }
        st.destroy_ctx_memory(id);
        CTX_STACK.with(|s| {
            let mut s = s.borrow_mut();
            if s.last() == Some(&id) {
                s.pop();
            }
        });
        Ok(())
    }))
}

pub extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CUresult {
    ctx_destroy(ctx)
}

pub extern "C" fn cuCtxDestroy(ctx: Handle) -> CUresult {
    ctx_destroy(ctx)
}

pub extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    code(with(|st| {
        nonnull(pctx)?;
        let d = st.device(dev)?;
        let ctx = st.retain_primary(d);
        put(pctx, ctx as Handle);
        Ok(())
    }))
}

fn primary_release(dev: CUdevice) -> CUresult {
    code(with(|st| {
        let d = st.device(dev)?;
        st.release_primary(d)
    }))
}

pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    primary_release(dev)
}

pub extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    primary_release(dev)
}

/// Frees everything of the primary context; it stays retained and usable.
fn primary_reset(dev: CUdevice) -> CUresult {
    code(with(|st| {
        let d = st.device(dev)?;
        if let Some(ctx) = st.primary[d].ctx {
            st.free_ctx_memory(ctx);
        }
        Ok(())
    }))
}

pub extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    primary_reset(dev)
}

pub extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    primary_reset(dev)
}

/// `CU_DEV_RESOURCE_TYPE_SM`, the one resource type of `cuDeviceGetDevResource`.
const DEV_RESOURCE_TYPE_SM: c_uint = 1;
/// `CU_GREEN_CTX_DEFAULT_STREAM`, which CUDA 13.0 requires of `cuGreenCtxCreate`.
const GREEN_CTX_DEFAULT_STREAM: c_uint = 1;
/// Where `CUdevResource` keeps its `CUdevSmResource` (after `type` and 92 bytes of padding).
const DEV_RESOURCE_SM_OFFSET: usize = 96;
/// SMs of a simulated device.
const SM_COUNT: u32 = 132;

/// `cuDeviceGetDevResource(CUdevice, CUdevResource *, CUdevResourceType)`: the device's SMs.
pub extern "C" fn cuDeviceGetDevResource(
    dev: CUdevice,
    resource: *mut u8,
    kind: c_uint,
) -> CUresult {
    code(with(|st| {
        nonnull(resource)?;
        st.device(dev)?;
        if kind != DEV_RESOURCE_TYPE_SM {
            return Err(INVALID_VALUE);
        }
        // SAFETY: a non-null `CUdevResource *` is valid for the struct's size, which covers
        // `type` at 0 and `sm.smCount` at `DEV_RESOURCE_SM_OFFSET`.
        unsafe {
            resource.cast::<c_uint>().write_unaligned(kind);
            resource
                .add(DEV_RESOURCE_SM_OFFSET)
                .cast::<u32>()
                .write_unaligned(SM_COUNT);
        }
        Ok(())
    }))
}

/// `cuDevResourceGenerateDesc(CUdevResourceDesc *, CUdevResource *, unsigned nbResources)`:
/// one SM resource makes a descriptor.
pub extern "C" fn cuDevResourceGenerateDesc(
    desc: *mut Handle,
    resources: *const u8,
    count: c_uint,
) -> CUresult {
    code(with(|st| {
        nonnull(desc)?;
        nonnull(resources)?;
        if count != 1 {
            return Err(INVALID_VALUE);
        }
        // SAFETY: a non-null `CUdevResource *` points at `count` (1) whole structs.
        let (kind, sms) = unsafe {
            (
                resources.cast::<c_uint>().read_unaligned(),
                resources
                    .add(DEV_RESOURCE_SM_OFFSET)
                    .cast::<u32>()
                    .read_unaligned(),
            )
        };
        if kind != DEV_RESOURCE_TYPE_SM || sms == 0 || sms > SM_COUNT {
            return Err(INVALID_VALUE);
        }
        let h = st.handle();
        st.resource_descs.insert(h, sms);
        put(desc, h as Handle);
        Ok(())
    }))
}

/// `cuGreenCtxCreate(CUgreenCtx *, CUdevResourceDesc, CUdevice, unsigned flags)`: retains
/// `dev`'s primary context; does not make the green context current.
pub extern "C" fn cuGreenCtxCreate(
    green: *mut Handle,
    desc: Handle,
    dev: CUdevice,
    flags: c_uint,
) -> CUresult {
    code(with(|st| {
        nonnull(green)?;
        let d = st.device(dev)?;
        if !st.resource_descs.contains_key(&(desc as u64)) || flags != GREEN_CTX_DEFAULT_STREAM {
            return Err(INVALID_VALUE);
        }
        let primary = st.retain_primary(d);
        let ctx = st.new_ctx(d, false);
        if let Some(c) = st.contexts.get_mut(&ctx) {
            c.owner = Some(primary);
        }
        let h = st.handle();
        st.green.insert(h, Green { dev: d, ctx });
        put(green, h as Handle);
        Ok(())
    }))
}

/// `cuCtxFromGreenCtx(CUcontext *, CUgreenCtx)`: the context that stands for the green one.
pub extern "C" fn cuCtxFromGreenCtx(pctx: *mut Handle, green: Handle) -> CUresult {
    code(with(|st| {
        nonnull(pctx)?;
        let g = st.green.get(&(green as u64)).ok_or(INVALID_HANDLE)?;
        put(pctx, g.ctx as Handle);
        Ok(())
    }))
}

/// `cuGreenCtxDestroy(CUgreenCtx)`: releases the primary context it retained; what was
/// allocated in it is the primary context's and goes only with that.
pub extern "C" fn cuGreenCtxDestroy(green: Handle) -> CUresult {
    code(with(|st| {
        let g = st.green.remove(&(green as u64)).ok_or(INVALID_HANDLE)?;
        st.contexts.remove(&g.ctx);
        st.release_primary(g.dev)
    }))
}

pub extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    code(with(|st| {
        let id = ctx as u64;
        if id != 0 && !st.contexts.contains_key(&id) {
            return Err(INVALID_CONTEXT);
        }
        CTX_STACK.with(|s| {
            let mut s = s.borrow_mut();
            s.pop();
            if id != 0 {
                s.push(id);
            }
        });
        Ok(())
    }))
}

pub extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    code(with(|_| {
        nonnull(pctx)?;
        put(pctx, stack_top().unwrap_or(0) as Handle);
        Ok(())
    }))
}

fn push_current(ctx: Handle) -> CUresult {
    code(with(|st| {
        let id = ctx as u64;
        if id == 0 {
            return Err(INVALID_VALUE);
        }
        if !st.contexts.contains_key(&id) {
            return Err(INVALID_CONTEXT);
        }
        CTX_STACK.with(|s| s.borrow_mut().push(id));
        Ok(())
    }))
}

pub extern "C" fn cuCtxPushCurrent_v2(ctx: Handle) -> CUresult {
    push_current(ctx)
}

pub extern "C" fn cuCtxPushCurrent(ctx: Handle) -> CUresult {
    push_current(ctx)
}

fn pop_current(pctx: *mut Handle) -> CUresult {
    code(with(|_| {
        let top = CTX_STACK
            .with(|s| s.borrow_mut().pop())
            .ok_or(INVALID_CONTEXT)?;
        if !pctx.is_null() {
            put(pctx, top as Handle);
        }
        Ok(())
    }))
}

pub extern "C" fn cuCtxPopCurrent_v2(pctx: *mut Handle) -> CUresult {
    pop_current(pctx)
}

pub extern "C" fn cuCtxPopCurrent(pctx: *mut Handle) -> CUresult {
    pop_current(pctx)
}

pub extern "C" fn cuCtxSynchronize() -> CUresult {
    code(with(|st| {
        st.current()?;
        st.sync_pools();
        Ok(())
    }))
}

/// `cuCtxSynchronize_v2(CUcontext)` (CUDA 13's `cuCtxSynchronize`): waits for the context
/// named; a null one is the current context.
pub extern "C" fn cuCtxSynchronize_v2(ctx: Handle) -> CUresult {
    code(with(|st| {
        let id = ctx as u64;
        if id == 0 {
            st.current()?;
        } else if !st.contexts.contains_key(&id) {
            return Err(INVALID_CONTEXT);
        }
        st.sync_pools();
        Ok(())
    }))
}

/// Streams are not modelled: any handle names a stream (0 the legacy default stream).
fn stream_sync() -> CUresult {
    code(with(|st| {
        st.current()?;
        st.sync_pools();
        Ok(())
    }))
}

pub extern "C" fn cuStreamSynchronize(_s: Handle) -> CUresult {
    stream_sync()
}

pub extern "C" fn cuStreamSynchronize_ptsz(_s: Handle) -> CUresult {
    stream_sync()
}

pub extern "C" fn cuEventCreate(event: *mut Handle, _flags: c_uint) -> CUresult {
    code(with(|st| {
        nonnull(event)?;
        st.current()?;
        st.next_handle += 1;
        let h = st.next_handle;
        st.events.insert(h);
        put(event, h as Handle);
        Ok(())
    }))
}

fn event_destroy(event: Handle) -> CUresult {
    code(with(|st| {
        if st.events.remove(&(event as u64)) {
            Ok(())
        } else {
            Err(INVALID_HANDLE)
        }
    }))
}

pub extern "C" fn cuEventDestroy(event: Handle) -> CUresult {
    event_destroy(event)
}

pub extern "C" fn cuEventDestroy_v2(event: Handle) -> CUresult {
    event_destroy(event)
}

pub extern "C" fn cuEventSynchronize(event: Handle) -> CUresult {
    code(with(|st| {
        if !st.events.contains(&(event as u64)) {
            return Err(INVALID_HANDLE);
        }
        st.sync_pools();
        Ok(())
    }))
}

// ---------------------------------------------------------------------------
// Host-to-device copies
// ---------------------------------------------------------------------------

fn htod(dst: u64, src: *const c_void, n: u64) -> CUresult {
    code(with(|st| st.copy_target(dst, src, n)))
}

pub extern "C" fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) -> CUresult {
    htod(dst, src, n as u64)
}

pub extern "C" fn cuMemcpyHtoD_v2_ptds(dst: CUdeviceptr, src: *const c_void, n: usize) -> CUresult {
    htod(dst, src, n as u64)
}

pub extern "C" fn cuMemcpyHtoD(dst: c_uint, src: *const c_void, n: c_uint) -> CUresult {
    htod(u64::from(dst), src, u64::from(n))
}

pub extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    _s: Handle,
) -> CUresult {
    htod(dst, src, n as u64)
}

pub extern "C" fn cuMemcpyHtoDAsync_v2_ptsz(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    _s: Handle,
) -> CUresult {
    htod(dst, src, n as u64)
}

pub extern "C" fn cuMemcpyHtoDAsync(
    dst: c_uint,
    src: *const c_void,
    n: c_uint,
    _s: Handle,
) -> CUresult {
    htod(u64::from(dst), src, u64::from(n))
}

// ---------------------------------------------------------------------------
// Unified, 2D and 3D copies
// ---------------------------------------------------------------------------

/// `CUmemorytype`.
const MEMORYTYPE_HOST: c_uint = 1;
const MEMORYTYPE_DEVICE: c_uint = 2;
const MEMORYTYPE_ARRAY: c_uint = 3;
const MEMORYTYPE_UNIFIED: c_uint = 4;

/// `CUDA_MEMCPY2D` (`_v2`).
#[repr(C)]
pub struct Memcpy2D {
    src_x_in_bytes: usize,
    src_y: usize,
    src_memory_type: c_uint,
    src_host: *const c_void,
    src_device: CUdeviceptr,
    src_array: Handle,
    src_pitch: usize,
    dst_x_in_bytes: usize,
    dst_y: usize,
    dst_memory_type: c_uint,
    dst_host: *mut c_void,
    dst_device: CUdeviceptr,
    dst_array: Handle,
    dst_pitch: usize,
    width_in_bytes: usize,
    height: usize,
}

/// `CUDA_MEMCPY3D` (`_v2`).
#[repr(C)]
pub struct Memcpy3D {
    src_x_in_bytes: usize,
    src_y: usize,
    src_z: usize,
    src_lod: usize,
    src_memory_type: c_uint,
    src_host: *const c_void,
    src_device: CUdeviceptr,
    src_array: Handle,
    reserved0: *mut c_void,
    src_pitch: usize,
    src_height: usize,
    dst_x_in_bytes: usize,
    dst_y: usize,
    dst_z: usize,
    dst_lod: usize,
    dst_memory_type: c_uint,
    dst_host: *mut c_void,
    dst_device: CUdeviceptr,
    dst_array: Handle,
    reserved1: *mut c_void,
    dst_pitch: usize,
    dst_height: usize,
    width_in_bytes: usize,
    height: usize,
    depth: usize,
}

/// One side of a copy, as its memory type says.
enum Side {
    Host(u64),
    Device(u64),
    Array(u64),
    Unified(u64),
}

impl State {
    /// Whether `[p, p + n)` lies inside one device allocation or mapping: `None` when `p`
    /// is in no device memory at all.
    fn device_range(&self, p: u64, n: u64) -> Option<bool> {
        let end = p.checked_add(n)?;
        if let Some((a, rec)) = self.allocs.range(..=p).next_back()
            && p < a + rec.size
        {
            return Some(end <= a + rec.size);
        }
        if let Some((m, rec)) = self.mappings.range(..=p).next_back()
            && p < m + rec.size
        {
            return Some(end <= m + rec.size);
        }
        self.imported_range(p, end)
    }

    /// Checks one side of a copy of `n` bytes, as the driver would: device memory must hold
    /// the whole range, an array must exist, host memory must not be null. A unified
    /// address is device memory when it lies in one, host memory otherwise.
    fn copy_side(&self, side: &Side, n: u64) -> Result<(), CUresult> {
        match *side {
            Side::Host(p) => nonnull(p as *const u8),
            Side::Device(p) => match self.device_range(p, n) {
                Some(true) => Ok(()),
                _ => Err(INVALID_VALUE),
            },
            Side::Array(h) => {
                if self.arrays.contains_key(&h) {
                    Ok(())
                } else {
                    Err(INVALID_HANDLE)
                }
            }
            Side::Unified(p) => match self.device_range(p, n) {
                Some(true) => Ok(()),
                Some(false) => Err(INVALID_VALUE),
                None => nonnull(p as *const u8),
            },
        }
    }

    fn copy(&mut self, dst: Side, src: Side, n: u64) -> Result<(), CUresult> {
        self.current()?;
        if n == 0 {
            return Ok(());
        }
        self.copy_side(&dst, n)?;
        self.copy_side(&src, n)
    }
}

fn side(kind: c_uint, host: u64, device: u64, array: Handle) -> Result<Side, CUresult> {
    match kind {
        MEMORYTYPE_HOST => Ok(Side::Host(host)),
        MEMORYTYPE_DEVICE => Ok(Side::Device(device)),
        MEMORYTYPE_ARRAY => Ok(Side::Array(array as u64)),
        MEMORYTYPE_UNIFIED => Ok(Side::Unified(device)),
        _ => Err(INVALID_VALUE),
    }
}

fn unified(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    code(with(|st| {
        st.copy(Side::Unified(dst), Side::Unified(src), n as u64)
    }))
}

pub extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    unified(dst, src, n)
}

pub extern "C" fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    unified(dst, src, n)
}

pub extern "C" fn cuMemcpyAsync(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    _s: Handle,
) -> CUresult {
    unified(dst, src, n)
}

pub extern "C" fn cuMemcpyAsync_ptsz(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    _s: Handle,
) -> CUresult {
    unified(dst, src, n)
}

/// `CUmemcpyAttributes` (CUDA 12.8): `srcAccessOrder`, `srcLocHint`, `dstLocHint`, `flags`.
#[repr(C)]
pub struct MemcpyAttributes {
    src_access_order: u32,
    src_loc_hint: MemLocation,
    dst_loc_hint: MemLocation,
    flags: c_uint,
}

/// `CU_MEMCPY_SRC_ACCESS_ORDER_STREAM` .. `CU_MEMCPY_SRC_ACCESS_ORDER_ANY`.
const SRC_ACCESS_ORDERS: std::ops::RangeInclusive<u32> = 1..=3;

/// `cuMemcpyBatchAsync*`: every copy pointer to pointer (unified addressing), checked one
/// after another; the first that fails is written to `fail_idx` (`SIZE_MAX` when the failure
/// is the batch's as a whole), as the CUDA 12.8 signature asks. The stream must not be the
/// legacy NULL stream (0), and every copy needs its attributes.
#[expect(
    clippy::too_many_arguments,
    reason = "the nine arguments of the CUDA 12.8 signature"
)]
fn copy_batch(
    dsts: *const CUdeviceptr,
    srcs: *const CUdeviceptr,
    sizes: *const usize,
    count: usize,
    attrs: *const MemcpyAttributes,
    attrs_idxs: *const usize,
    num_attrs: usize,
    fail_idx: *mut usize,
    stream: Handle,
) -> CUresult {
    let mut failed = usize::MAX;
    let ret = code(with(|st| {
        nonnull(dsts)?;
        nonnull(srcs)?;
        nonnull(sizes)?;
        nonnull(attrs)?;
        nonnull(attrs_idxs)?;
        if count == 0 || num_attrs == 0 || num_attrs > count || stream.is_null() {
            return Err(INVALID_VALUE);
        }
        for k in 0..num_attrs {
            // SAFETY: `attrs` and `attrs_idxs` hold `num_attrs` elements, as the caller says.
            let (a, first) = unsafe { (&*attrs.add(k), *attrs_idxs.add(k)) };
            if !SRC_ACCESS_ORDERS.contains(&a.src_access_order) || (k == 0 && first != 0) {
                return Err(INVALID_VALUE);
            }
        }
        for i in 0..count {
            // SAFETY: the three arrays hold `count` elements, as the caller says.
            let (d, s, n) = unsafe { (*dsts.add(i), *srcs.add(i), *sizes.add(i)) };
            if let Err(e) = st.copy(Side::Unified(d), Side::Unified(s), n as u64) {
                failed = i;
                return Err(e);
            }
        }
        Ok(())
    }));
    if !fail_idx.is_null() {
        put(fail_idx, failed);
    }
    ret
}

pub extern "C" fn cuMemcpyBatchAsync(
    dsts: *const CUdeviceptr,
    srcs: *const CUdeviceptr,
    sizes: *const usize,
    count: usize,
    attrs: *const MemcpyAttributes,
    attrs_idxs: *const usize,
    num_attrs: usize,
    fail_idx: *mut usize,
    stream: Handle,
) -> CUresult {
    copy_batch(
        dsts, srcs, sizes, count, attrs, attrs_idxs, num_attrs, fail_idx, stream,
    )
}

pub extern "C" fn cuMemcpyBatchAsync_ptsz(
    dsts: *const CUdeviceptr,
    srcs: *const CUdeviceptr,
    sizes: *const usize,
    count: usize,
    attrs: *const MemcpyAttributes,
    attrs_idxs: *const usize,
    num_attrs: usize,
    fail_idx: *mut usize,
    stream: Handle,
) -> CUresult {
    copy_batch(
        dsts, srcs, sizes, count, attrs, attrs_idxs, num_attrs, fail_idx, stream,
    )
}

pub extern "C" fn cuMemcpyBatchAsync_v2(
    dsts: *const CUdeviceptr,
    srcs: *const CUdeviceptr,
    sizes: *const usize,
    count: usize,
    attrs: *const MemcpyAttributes,
    attrs_idxs: *const usize,
    num_attrs: usize,
    stream: Handle,
) -> CUresult {
    copy_batch(
        dsts,
        srcs,
        sizes,
        count,
        attrs,
        attrs_idxs,
        num_attrs,
        std::ptr::null_mut(),
        stream,
    )
}

pub extern "C" fn cuMemcpyBatchAsync_v2_ptsz(
    dsts: *const CUdeviceptr,
    srcs: *const CUdeviceptr,
    sizes: *const usize,
    count: usize,
    attrs: *const MemcpyAttributes,
    attrs_idxs: *const usize,
    num_attrs: usize,
    stream: Handle,
) -> CUresult {
    copy_batch(
        dsts,
        srcs,
        sizes,
        count,
        attrs,
        attrs_idxs,
        num_attrs,
        std::ptr::null_mut(),
        stream,
    )
}

/// `CUmemcpy3DOperand`: `type`, then (a pointer operand) `ptr`, `rowLength`, `layerHeight`,
/// `locHint`, or (an array operand) `array` and its `CUoffset3D`.
#[repr(C)]
pub struct Memcpy3DOperand {
    kind: u32,
    words: [u64; 4],
}

/// `CUDA_MEMCPY3D_BATCH_OP`: `src`, `dst`, `extent` (`width`, `height`, `depth`),
/// `srcAccessOrder`, `flags`.
#[repr(C)]
pub struct Memcpy3DBatchOp {
    src: Memcpy3DOperand,
    dst: Memcpy3DOperand,
    extent: [usize; 3],
    src_access_order: u32,
    flags: c_uint,
}

/// `CU_MEMCPY_OPERAND_TYPE_POINTER`.
const OPERAND_POINTER: u32 = 1;

/// `cuMemcpy3DBatchAsync*`: pointer-to-pointer operations only (array operands give
/// `CUDA_ERROR_NOT_SUPPORTED`), each `width × height × depth` bytes of unified addresses.
fn copy_3d_batch(
    num_ops: usize,
    ops: *const Memcpy3DBatchOp,
    fail_idx: *mut usize,
    flags: u64,
    stream: Handle,
) -> CUresult {
    let mut failed = usize::MAX;
    let ret = code(with(|st| {
        nonnull(ops)?;
        if num_ops == 0 || flags != 0 || stream.is_null() {
            return Err(INVALID_VALUE);
        }
        for i in 0..num_ops {
            // SAFETY: `ops` holds `num_ops` operations, as the caller says.
            let op = unsafe { &*ops.add(i) };
            let r = if op.src.kind != OPERAND_POINTER || op.dst.kind != OPERAND_POINTER {
                Err(NOT_SUPPORTED)
            } else if !SRC_ACCESS_ORDERS.contains(&op.src_access_order) {
                Err(INVALID_VALUE)
            } else {
                let [w, h, d] = op.extent;
                let n = (w as u64) * (h.max(1) as u64) * (d.max(1) as u64);
                st.copy(
                    Side::Unified(op.dst.words[0]),
                    Side::Unified(op.src.words[0]),
                    n,
                )
            };
            if let Err(e) = r {
                failed = i;
                return Err(e);
            }
        }
        Ok(())
    }));
    if !fail_idx.is_null() {
        put(fail_idx, failed);
    }
    ret
}

pub extern "C" fn cuMemcpy3DBatchAsync(
    num_ops: usize,
    ops: *const Memcpy3DBatchOp,
    fail_idx: *mut usize,
    flags: u64,
    stream: Handle,
) -> CUresult {
    copy_3d_batch(num_ops, ops, fail_idx, flags, stream)
}

pub extern "C" fn cuMemcpy3DBatchAsync_ptsz(
    num_ops: usize,
    ops: *const Memcpy3DBatchOp,
    fail_idx: *mut usize,
    flags: u64,
    stream: Handle,
) -> CUresult {
    copy_3d_batch(num_ops, ops, fail_idx, flags, stream)
}

pub extern "C" fn cuMemcpy3DBatchAsync_v2(
    num_ops: usize,
    ops: *const Memcpy3DBatchOp,
    flags: u64,
    stream: Handle,
) -> CUresult {
    copy_3d_batch(num_ops, ops, std::ptr::null_mut(), flags, stream)
}

pub extern "C" fn cuMemcpy3DBatchAsync_v2_ptsz(
    num_ops: usize,
    ops: *const Memcpy3DBatchOp,
    flags: u64,
    stream: Handle,
) -> CUresult {
    copy_3d_batch(num_ops, ops, std::ptr::null_mut(), flags, stream)
}

fn copy_2d(p: *const Memcpy2D) -> CUresult {
    code(with(|st| {
        nonnull(p)?;
        // SAFETY: non-null, and the caller passes a CUDA_MEMCPY2D as cuda.h declares.
        let c = unsafe { &*p };
        let src = side(
            c.src_memory_type,
            c.src_host as u64,
            c.src_device,
            c.src_array,
        )?;
        let dst = side(
            c.dst_memory_type,
            c.dst_host as u64,
            c.dst_device,
            c.dst_array,
        )?;
        if c.width_in_bytes > c.src_pitch.max(c.width_in_bytes)
            || c.width_in_bytes > c.dst_pitch.max(c.width_in_bytes)
        {
            return Err(INVALID_VALUE);
        }
        st.copy(dst, src, (c.width_in_bytes as u64) * (c.height as u64))
    }))
}

pub extern "C" fn cuMemcpy2D_v2(p: *const Memcpy2D) -> CUresult {
    copy_2d(p)
}

pub extern "C" fn cuMemcpy2D_v2_ptds(p: *const Memcpy2D) -> CUresult {
    copy_2d(p)
}

pub extern "C" fn cuMemcpy2DUnaligned_v2(p: *const Memcpy2D) -> CUresult {
    copy_2d(p)
}

pub extern "C" fn cuMemcpy2DUnaligned_v2_ptds(p: *const Memcpy2D) -> CUresult {
    copy_2d(p)
}

pub extern "C" fn cuMemcpy2DAsync_v2(p: *const Memcpy2D, _s: Handle) -> CUresult {
    copy_2d(p)
}

pub extern "C" fn cuMemcpy2DAsync_v2_ptsz(p: *const Memcpy2D, _s: Handle) -> CUresult {
    copy_2d(p)
}

fn copy_3d(p: *const Memcpy3D) -> CUresult {
    code(with(|st| {
        nonnull(p)?;
        // SAFETY: non-null, and the caller passes a CUDA_MEMCPY3D as cuda.h declares.
        let c = unsafe { &*p };
        let src = side(
            c.src_memory_type,
            c.src_host as u64,
            c.src_device,
            c.src_array,
        )?;
        let dst = side(
            c.dst_memory_type,
            c.dst_host as u64,
            c.dst_device,
            c.dst_array,
        )?;
        let n = (c.width_in_bytes as u64) * (c.height.max(1) as u64) * (c.depth.max(1) as u64);
        st.copy(dst, src, n)
    }))
}

pub extern "C" fn cuMemcpy3D_v2(p: *const Memcpy3D) -> CUresult {
    copy_3d(p)
}

pub extern "C" fn cuMemcpy3D_v2_ptds(p: *const Memcpy3D) -> CUresult {
    copy_3d(p)
}

pub extern "C" fn cuMemcpy3DAsync_v2(p: *const Memcpy3D, _s: Handle) -> CUresult {
    copy_3d(p)
}

pub extern "C" fn cuMemcpy3DAsync_v2_ptsz(p: *const Memcpy3D, _s: Handle) -> CUresult {
    copy_3d(p)
}

// ---------------------------------------------------------------------------
// Pool selection: the current pool of a device, and CUDA 13.0's pools by location
// ---------------------------------------------------------------------------

pub extern "C" fn cuDeviceGetMemPool(pool: *mut Handle, dev: CUdevice) -> CUresult {
    code(with(|st| {
        nonnull(pool)?;
        let d = st.device(dev)?;
        put(pool, st.current_pools[d] as Handle);
        Ok(())
    }))
}

pub extern "C" fn cuDeviceSetMemPool(dev: CUdevice, pool: Handle) -> CUresult {
    code(with(|st| {
        let d = st.device(dev)?;
        let p = st.pools.get(&(pool as u64)).ok_or(INVALID_HANDLE)?;
        // The driver takes only a pool of device memory located on that device.
        if p.destroyed || p.host || p.dev != d {
            return Err(INVALID_VALUE);
        }
        st.current_pools[d] = pool as u64;
        Ok(())
    }))
}

impl State {
    /// Which pools a location and allocation type name: a device's (`Ok(Some(dev))`) or a
    /// host memory kind's (`Ok(None)`, keyed as `host_pools` is).
    fn pool_slot(
        &mut self,
        location: *const MemLocation,
        alloc_type: c_uint,
    ) -> Result<Result<usize, (u32, bool)>, CUresult> {
        nonnull(location)?;
        // SAFETY: non-null, and the caller passes a CUmemLocation as cuda.h declares.
        let loc = unsafe { *location };
        let host_located = matches!(
            loc.kind,
            MEM_LOCATION_HOST | MEM_LOCATION_HOST_NUMA | MEM_LOCATION_HOST_NUMA_CURRENT
        );
        match (alloc_type, host_located) {
            (MEM_ALLOCATION_TYPE_PINNED, false) if loc.kind == MEM_LOCATION_DEVICE => {
                Ok(Ok(self.device(loc.id)?))
            }
            (MEM_ALLOCATION_TYPE_PINNED, true) | (MEM_ALLOCATION_TYPE_MANAGED, _) => {
                let key = (alloc_type, host_located);
                if !self.host_pools.contains_key(&key) {
                    let (_, dev) = self.current()?;
                    let h = self.handle();
                    self.pools.insert(h, Pool::new(dev, true, true));
                    self.host_pools.insert(key, (h, h));
                }
                Ok(Err(key))
            }
            _ => Err(INVALID_VALUE),
        }
    }
}

fn get_pool(
    pool: *mut Handle,
    location: *const MemLocation,
    alloc_type: c_uint,
    current: bool,
) -> CUresult {
    code(with(|st| {
        nonnull(pool)?;
        let h = match st.pool_slot(location, alloc_type)? {
            Ok(d) if current => st.current_pools[d],
            Ok(d) => st.default_pools[d],
            Err(key) => {
                let (default, cur) = st.host_pools[&key];
                if current { cur } else { default }
            }
        };
        put(pool, h as Handle);
        Ok(())
    }))
}

pub extern "C" fn cuMemGetDefaultMemPool(
    pool: *mut Handle,
    location: *const MemLocation,
    alloc_type: c_uint,
) -> CUresult {
    get_pool(pool, location, alloc_type, false)
}

pub extern "C" fn cuMemGetMemPool(
    pool: *mut Handle,
    location: *const MemLocation,
    alloc_type: c_uint,
) -> CUresult {
    get_pool(pool, location, alloc_type, true)
}

pub extern "C" fn cuMemSetMemPool(
    location: *const MemLocation,
    alloc_type: c_uint,
    pool: Handle,
) -> CUresult {
    code(with(|st| {
        let slot = st.pool_slot(location, alloc_type)?;
        let p = st.pools.get(&(pool as u64)).ok_or(INVALID_HANDLE)?;
        if p.destroyed {
            return Err(INVALID_VALUE);
        }
        match slot {
            Ok(d) if !p.host && p.dev == d => st.current_pools[d] = pool as u64,
            Err(key) if p.host => {
                if let Some(e) = st.host_pools.get_mut(&key) {
                    e.1 = pool as u64;
                }
            }
            _ => return Err(INVALID_VALUE),
        }
        Ok(())
    }))
}
