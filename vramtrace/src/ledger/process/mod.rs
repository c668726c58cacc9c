//! One traced process: its live allocations, pools, VMM handles, contexts and counters.
//!
//! Every change of live bytes goes through [`ProcessState::book_add`] and
//! [`ProcessState::book_sub`], which move the process, its device and the machine totals
//! together, so the three can never disagree.

mod ctx;
mod freed;
mod graph;
mod import;
mod multicast;
mod pool;
mod sparse;
mod types;
mod vmm;

use std::collections::{BTreeMap, btree_map};
use std::sync::Arc;

use foldhash::HashMap;

use super::change::{Change, EndCause, PoolId};
use super::classify::{self, AllocRef, ClassBytes, Classifier, Phase};
use super::usage::{Held, Totals, Usage};
use crate::trace::{Call, CopySrc, Exit, Mem, Process};

/// How many examples of each anomaly are kept.
const EXAMPLES: usize = 3;
/// How many of the largest allocations still live at exit the snapshot keeps.
const HELD_AT_EXIT: usize = 16;
/// How many host-memory findings a process keeps; the rest are counted.
const HOST_FINDINGS: usize = 4096;
/// How many out-of-memory failures a process keeps; the rest are counted as failures.
const OOMS: usize = 64;

use ctx::{GreenCtx, PrimaryCtx};
pub use graph::{GraphMemReport, GraphPool};
pub(crate) use import::HandleOwner;
use import::ImportedHandle;
pub use import::{ImportedMapping, Owner};
use pool::Pool;
pub use types::{
    Anomaly, ApiCount, ApiCounts, ExitSnapshot, FailedCount, HostFinding, LiveAllocation,
    NvmlAtOom, Oom, OomNeighbour,
};
use vmm::{Mapping, VmmHandle};

/// Everything the ledger knows about one traced process (one `process` record id).
#[derive(Clone, Debug, Default)]
pub struct ProcessState {
    /// The `process` record id.
    pub proc: u32,
    /// Process id.
    pub pid: u32,
    /// The `process` record, when one was seen.
    pub info: Option<Process>,
    /// First and last event times.
    pub first_ts_ns: Option<u64>,
    /// Last event time.
    pub last_ts_ns: Option<u64>,
    /// Live bytes and peaks.
    pub usage: Usage,
    /// Per device ordinal (`None`: unknown device). Host bytes are not booked per device.
    pub devices: BTreeMap<Option<i32>, Usage>,
    /// Successful allocations per entry point (`cuMemCreate` included).
    pub allocs: ApiCounts,
    /// Frees per entry point (`cuMemRelease`, and context destruction for what it freed).
    pub frees: ApiCounts,
    /// Every allocation that became live (each `Change::Started`): the figure that ends
    /// and live bytes add up to.
    pub started: ApiCount,
    /// The allocations that ended (each `Change::Ended`), by [`EndCause::index`].
    pub ended: [ApiCount; EndCause::ALL.len()],
    /// Failed calls per entry point.
    pub failed: BTreeMap<String, FailedCount>,
    /// Calls that never returned (the thread died in the driver, or a signal sent at the
    /// call ended it), per entry point: what they asked for was never made.
    pub unreturned: BTreeMap<String, u64>,
    /// Inconsistent input, per kind.
    pub anomalies: BTreeMap<&'static str, Anomaly>,
    /// Set when the process exited.
    pub exit: Option<ExitSnapshot>,
    /// Phases and live bytes per class (`docs/classification.md`).
    pub classifier: Classifier,
    /// Bytes by class when device plus pool-held bytes were at their peak.
    pub classes_at_peak: ClassBytes,
    /// When that peak was reached.
    pub classes_at_peak_ts_ns: Option<u64>,
    /// Host-memory allocations (the first [`HOST_FINDINGS`]).
    pub host_fallback: Vec<HostFinding>,
    /// All host-memory allocations, kept or not.
    pub host_fallback_total: u64,
    /// Out-of-memory failures (the first [`OOMS`]).
    pub ooms: Vec<Oom>,
    /// The one device the process can see (one GPU on the machine, or one entry in its
    /// `CUDA_VISIBLE_DEVICES`): the device of calls whose context is not known (created
    /// before tracing began). Set by the Ledger.
    pub(crate) sole_device: Option<i32>,
    /// It was already running when the recording started (attached with `-p`, or found by
    /// a machine-wide recording): what it allocated before is not in these figures. Set by
    /// the Ledger.
    pub running_before: bool,
    /// Imported mappings that ended (the first few hundred), for the report.
    pub(crate) imports_ended: Vec<ImportedMapping>,
    /// Imported mappings that ended, kept or not.
    pub imports_total: u64,

    /// Shared with the changes that report them (`Arc::make_mut` copies one only while a
    /// consumer still holds it); boxed, too, so the tree moves pointers as it rebalances.
    by_addr: BTreeMap<u64, Arc<LiveAllocation>>,
    arrays: HashMap<u64, Arc<LiveAllocation>>,
    vmm: HashMap<u64, VmmHandle>,
    mappings: BTreeMap<u64, Mapping>,
    /// Multicast objects, by handle.
    multicast: HashMap<u64, multicast::Multicast>,
    /// Regions of sparse arrays mapped to VMM memory.
    array_maps: sparse::ArrayMaps,
    reserved: BTreeMap<u64, u64>,
    pools: HashMap<PoolId, Pool>,
    /// Other processes' memory mapped here, by address: mapped, not owned.
    imports: BTreeMap<u64, ImportedMapping>,
    /// Shareable handles imported and not released.
    imported_handles: HashMap<u64, ImportedHandle>,
    /// The owners (process, VMM handle) of imported handles released since the Ledger last
    /// looked: it gives their references back.
    pub(crate) imports_released: Vec<(u32, u64)>,
    default_pools: HashMap<Option<i32>, u64>,
    /// The pool `cuMemAllocAsync` takes from on a device, once `cuDeviceSetMemPool` (or
    /// `cuMemSetMemPool` at a device location) set one; the default pool otherwise.
    current_pools: HashMap<Option<i32>, u64>,
    ctx_device: HashMap<u64, Option<i32>>,
    primary: HashMap<Option<i32>, PrimaryCtx>,
    /// Live green contexts, by `CUgreenCtx` handle.
    green: HashMap<u64, GreenCtx>,
    /// CUDA graphs' memory nodes, their execs and each device's graph memory pool.
    graphs: graph::Graphs,
    threads: HashMap<u32, Vec<u64>>,
    freed: freed::RecentlyFreed,
    /// Device plus pool-held bytes when `classes_at_peak` was taken.
    classes_peak_bytes: u64,
    /// What the record being applied changed so far; the Ledger takes them after each record.
    pub(crate) changes: Vec<Change>,
}

/// Moves the changes a process made into `into` (the Ledger's, for the record being
/// applied), in order after those already there. Nearly always `into` is empty: then the two
/// vectors trade places instead of the changes being copied one by one.
#[inline(always)]
pub(crate) fn take_changes(into: &mut Vec<Change>, from: &mut Vec<Change>) {
    if into.is_empty() {
        std::mem::swap(into, from);
    } else {
        into.append(from);
    }
}

/// Appends the change `make` builds where it will be kept. `Vec::push` may grow the vector
/// (a call) after the change is built, so the change is built on the stack first, field by
/// field, and then copied in wide loads that must wait for those narrower stores to land;
/// for the changes of every allocation and free, that wait is worth avoiding.
#[inline(always)]
fn push_in_place(changes: &mut Vec<Change>, make: impl FnOnce() -> Change) {
    changes.reserve(1);
    let len = changes.len();
    if let Some(slot) = changes.spare_capacity_mut().first_mut() {
        slot.write(make());
        // SAFETY: the slot at `len`, within the capacity reserved above, was just
        // initialized by `write`.
        unsafe { changes.set_len(len + 1) };
    }
}

fn class_of(mem: Mem) -> Held {
    if mem.is_host() {
        Held::Host
    } else {
        Held::Device
    }
}

fn describe(c: &Call) -> String {
    let mut s = format!("{} tid {} at {} ns", c.api, c.tid, c.ts_ns);
    if let Some(a) = c.addr {
        s.push_str(&format!(" addr {a:#x}"));
    }
    if let Some(h) = c.handle {
        s.push_str(&format!(" handle {h:#x}"));
    }
    if let Some(p) = c.pool {
        s.push_str(&format!(" pool {p:#x}"));
    }
    if let Some(b) = c.bytes {
        s.push_str(&format!(" bytes {b}"));
    }
    s
}

impl ProcessState {
    pub(crate) fn new(proc: u32, pid: u32) -> Self {
        ProcessState {
            proc,
            pid,
            ..Default::default()
        }
    }

    /// Short name from the `process` record, or `"?"`.
    pub fn comm(&self) -> &str {
        self.info.as_ref().map_or("?", |p| p.comm.as_str())
    }

    /// Whether an `exit` record was seen.
    pub fn exited(&self) -> bool {
        self.exit.is_some()
    }

    /// Allocations live now: device and host memory, arrays, VMM handles' physical memory.
    pub fn live_allocations(&self) -> impl Iterator<Item = &LiveAllocation> + '_ {
        self.by_addr
            .values()
            .map(|a| &**a)
            .chain(self.arrays.values().map(|a| &**a))
            .chain(self.vmm.values().map(|v| &*v.alloc))
    }

    /// The live allocation at `addr` (device, stream-ordered or host memory; not arrays or
    /// VMM handles), if there is one.
    pub fn live_at(&self, addr: u64) -> Option<&LiveAllocation> {
        self.by_addr.get(&addr).map(|a| &**a)
    }

    /// Pool-held bytes per pool handle (`None`: a device's default pool whose handle is not
    /// known), with the pool's device.
    pub fn pool_held(&self) -> impl Iterator<Item = (Option<u64>, Option<i32>, u64)> + '_ {
        self.pools.iter().map(|(k, p)| {
            let handle = match k {
                PoolId::Handle(h) => Some(*h),
                PoolId::Default(_) | PoolId::Graph(_) => None,
            };
            (handle, p.device, p.held)
        })
    }

    /// Live bytes by class now: every live allocation by its class, plus the pool-held bytes.
    /// Sums to device plus pool-held plus host bytes.
    pub fn classes(&self) -> ClassBytes {
        let mut c = self.classifier.live;
        c.set(classify::Class::Pool, self.usage.pool_held_bytes);
        c
    }

    /// Live GPU memory by class on one device (`None`: every device), pool-held bytes
    /// there included, host memory not: what an out-of-memory failure on that device weighs.
    /// Scans the live allocations: for rare moments, not for every record.
    pub fn classes_on(&self, device: Option<i32>) -> ClassBytes {
        let mut c = ClassBytes::default();
        for a in self
            .live_allocations()
            .filter(|a| !a.mem.is_host() && (device.is_none() || a.device == device))
        {
            c.add(a.class, a.bytes);
        }
        let pool = match device {
            Some(_) => self.devices.get(&device).map_or(0, |u| u.pool_held_bytes),
            None => self.usage.pool_held_bytes,
        };
        c.set(classify::Class::Pool, pool);
        c
    }

    /// Live bytes by class at exit (or now, while the process runs).
    pub fn classes_at_exit(&self) -> ClassBytes {
        self.exit
            .as_ref()
            .map_or_else(|| self.classes(), |e| e.classes)
    }

    /// Stamps and classifies an allocation about to be inserted at `at`.
    fn classify_new(&mut self, a: &mut LiveAllocation, at: AllocRef) {
        self.classifier.on_new(a, at);
    }

    /// An allocation was given back: the classifier counts the free, and what has now
    /// outlived enough frees is classified again.
    fn classify_gone(&mut self, a: &LiveAllocation) {
        let ts = self.last_ts_ns.unwrap_or(0);
        self.classifier.on_gone(a, ts);
        while let Some((at, seq)) = self.classifier.next_due() {
            let live = match at {
                AllocRef::Addr(k) => self.by_addr.get_mut(&k),
                AllocRef::Array(h) => self.arrays.get_mut(&h),
                AllocRef::Vmm(h) => self.vmm.get_mut(&h).map(|v| &mut v.alloc),
            };
            if let Some(live) = live
                && live.seq == seq
            {
                // Its evidence changed (it outlived enough frees), whether its class did or not.
                let was = live.class;
                self.classifier.reclassify(Arc::make_mut(live));
                Self::updated(&mut self.changes, self.proc, was, live);
            }
        }
    }

    fn note_host_finding(&mut self, c: &Call, mem: Mem, bytes: u64) {
        self.host_fallback_total += 1;
        let finding = HostFinding {
            ts_ns: c.ts_ns,
            tid: c.tid,
            api: c.api.to_string(),
            bytes,
            mem: Some(mem),
            flags: c.flags,
            stack: c.stack,
            signalled: c.signalled,
        };
        if self.host_fallback.len() < HOST_FINDINGS {
            self.host_fallback.push(finding.clone());
        }
        self.changes.push(Change::HostFinding {
            proc: self.proc,
            finding,
        });
    }

    /// The device a call is about: named by the call, or the thread's current context's.
    pub(crate) fn call_device(&self, c: &Call) -> Option<i32> {
        self.device_of(c, self.current_ctx(c.tid))
    }

    pub(crate) fn note_oom(&mut self, oom: Oom) {
        if self.ooms.len() < OOMS {
            self.ooms.push(oom);
        }
    }

    /// Bytes of reserved VMM address space (not memory).
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved
            .values()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }

    pub(crate) fn touch(&mut self, ts_ns: u64) {
        self.first_ts_ns.get_or_insert(ts_ns);
        self.last_ts_ns = Some(self.last_ts_ns.map_or(ts_ns, |t| t.max(ts_ns)));
    }

    pub(crate) fn anomaly(&mut self, kind: &'static str, example: impl FnOnce() -> String) {
        let a = self.anomalies.entry(kind).or_default();
        a.count += 1;
        if a.examples.len() < EXAMPLES {
            a.examples.push(example());
        }
        self.changes.push(Change::Anomaly {
            proc: self.proc,
            kind,
        });
    }

    /// A new allocation is about to be inserted: the change says so.
    fn started(&mut self, a: &Arc<LiveAllocation>) {
        self.started.count += 1;
        self.started.bytes += a.bytes;
        let proc = self.proc;
        push_in_place(&mut self.changes, || Change::Started {
            proc,
            alloc: Arc::clone(a),
        });
    }

    /// A live allocation changed (class, fill, mapping): the change says so.
    fn updated(
        changes: &mut Vec<Change>,
        proc: u32,
        was: classify::Class,
        a: &Arc<LiveAllocation>,
    ) {
        push_in_place(changes, || Change::Updated {
            proc,
            was,
            alloc: Arc::clone(a),
        });
    }

    /// A pool's held bytes may have changed: the change gives the new figure.
    fn pool_changed(&mut self, key: PoolId) {
        let (device, held) = self
            .pools
            .get(&key)
            .map_or((None, 0), |p| (p.device, p.held));
        let device = match key {
            PoolId::Default(d) | PoolId::Graph(d) => device.or(d),
            PoolId::Handle(_) => device,
        };
        self.changes.push(Change::PoolHeld {
            proc: self.proc,
            pool: key,
            device,
            held,
        });
    }

    fn book_add(&mut self, t: &mut Totals, device: Option<i32>, class: Held, bytes: u64, ts: u64) {
        self.usage.add(class, bytes, ts);
        if class != Held::Host {
            self.devices
                .entry(device)
                .or_default()
                .add(class, bytes, ts);
        }
        t.add(device, class, bytes, ts);
        let now = self.usage.device_and_pool_bytes();
        if class != Held::Host && now > self.classes_peak_bytes {
            self.classes_peak_bytes = now;
            self.classes_at_peak = self.classes();
            self.classes_at_peak_ts_ns = Some(ts);
        }
    }

    fn book_sub(&mut self, t: &mut Totals, device: Option<i32>, class: Held, bytes: u64) {
        let mut ok = self.usage.sub(class, bytes);
        if class != Held::Host {
            ok &= self.devices.entry(device).or_default().sub(class, bytes);
        }
        ok &= t.sub(device, class, bytes);
        if !ok {
            // Only reachable through a bookkeeping bug: every subtraction undoes an addition.
            self.anomaly("accounting_underflow", || {
                format!("{bytes} bytes of {class:?} on device {device:?}")
            });
        }
    }

    fn current_ctx(&self, tid: u32) -> Option<u64> {
        let on_thread = self
            .threads
            .get(&tid)
            .and_then(|s| s.last().copied())
            .filter(|&c| c != 0);
        // A thread that never made a context current while traced (attached mid-run, or a
        // runtime that set it before tracing began): when the process has one context,
        // that is the one.
        on_thread.or_else(|| {
            if self.ctx_device.len() == 1 {
                self.ctx_device.keys().next().copied()
            } else {
                None
            }
        })
    }

    fn device_of(&self, c: &Call, ctx: Option<u64>) -> Option<i32> {
        c.device
            .or_else(|| ctx.and_then(|x| self.ctx_device.get(&x).copied().flatten()))
            .or(self.sole_device)
    }

    fn resolve_pool(&self, pool: Option<u64>, device: Option<i32>) -> PoolId {
        let current = || self.current_pools.get(&device).copied();
        match pool
            .or_else(current)
            .or_else(|| self.default_pools.get(&device).copied())
        {
            Some(h) => PoolId::Handle(h),
            None => PoolId::Default(device),
        }
    }

    /// Gives a live allocation's bytes back and says why it ended: a stream-ordered
    /// allocation freed by a call goes into its pool, anything else to the GPU or the host.
    fn release(&mut self, t: &mut Totals, a: Arc<LiveAllocation>, cause: EndCause, ts: u64) {
        let class = class_of(a.mem);
        self.book_sub(t, a.device, class, a.bytes);
        if cause == EndCause::ContextDestroyed {
            // Teardown is not one of the process's frees: it neither ends loading nor ages
            // young allocations.
            self.classifier.on_ctx_gone(&a);
        } else {
            self.classify_gone(&a);
        }
        let mut cause = cause;
        if a.mem == Mem::Graph {
            // Whatever ended it, its physical memory stays reserved by the graph pool.
            self.graph_give(t, a.device, a.bytes, ts);
            if cause == EndCause::Free {
                cause = EndCause::PoolFree;
            }
        }
        if a.mem == Mem::DeviceAsync {
            let key = self.resolve_pool(a.pool, a.device);
            let threshold = self.new_pool_threshold();
            let pool = self
                .pools
                .entry(key)
                .or_insert_with(|| Pool::new(a.device, threshold));
            pool.used = pool.used.saturating_sub(a.bytes);
            // A destroyed pool lets go of memory as its last allocations are freed.
            if cause == EndCause::Free && !pool.destroyed {
                pool.give(a.bytes);
                let device = pool.device;
                self.book_add(t, device, Held::Pool, a.bytes, ts);
                self.pool_changed(key);
                cause = EndCause::PoolFree;
            }
        }
        self.count_end(cause, a.bytes);
        push_in_place(&mut self.changes, || Change::Ended {
            proc: self.proc,
            alloc: a,
            cause,
            ts_ns: ts,
        });
    }

    fn count_end(&mut self, cause: EndCause, bytes: u64) {
        let n = &mut self.ended[cause.index()];
        n.count += 1;
        n.bytes += bytes;
    }

    fn count_alloc(&mut self, api: &str, bytes: u64) {
        self.allocs.add(api, 1, bytes);
    }

    fn count_free(&mut self, api: &str, calls: u64, bytes: u64) {
        self.frees.add(api, calls, bytes);
    }

    fn new_alloc(&self, c: &Call, mem: Mem, bytes: u64) -> LiveAllocation {
        let ctx = self.current_ctx(c.tid);
        let device = if mem.is_host() {
            None
        } else {
            self.device_of(c, ctx)
        };
        LiveAllocation {
            addr: c.addr,
            handle: c.handle,
            bytes,
            mem,
            api: c.api.clone(),
            ts_ns: c.ts_ns,
            tid: c.tid,
            stack: c.stack,
            device,
            ctx,
            pool: None,
            filled_from_host: 0,
            filled_while_loading: 0,
            class: classify::Class::Unknown,
            evidence: classify::Evidences::new(),
            made_in: Phase::Load,
            frees_before: 0,
            size_unknown: c.bytes.is_none(),
            kept_by_importers: false,
            seq: 0,
        }
    }

    pub(crate) fn on_alloc(&mut self, t: &mut Totals, c: &Call) {
        let Some(mem) = c.mem else {
            self.count_alloc(&c.api, c.bytes.unwrap_or(0));
            self.anomaly("alloc_without_kind", || describe(c));
            return;
        };
        if matches!(mem, Mem::VmmDevice | Mem::VmmHost) {
            self.on_vmm_create(t, c);
            return;
        }
        let bytes = c.bytes.unwrap_or_else(|| {
            self.anomaly("alloc_without_size", || describe(c));
            0
        });
        // A sparse or deferred-mapping array: its memory is what is mapped into it.
        let bytes = if mem == Mem::Array && sparse::sparse(c) {
            0
        } else {
            bytes
        };
        self.count_alloc(&c.api, bytes);
        // An allocation from a pool of managed or host memory is host memory, not the GPU's;
        // the pool keeps none of it once freed (see `Pool::host`).
        let host_pool = match (mem, c.pool) {
            (Mem::DeviceAsync, Some(h)) => self.pools.get(&PoolId::Handle(h)).and_then(|p| p.host),
            _ => None,
        };
        let mem = host_pool.unwrap_or(mem);
        let mut a = self.new_alloc(c, mem, bytes);
        if host_pool.is_some() {
            a.pool = c.pool;
        }
        let ts = c.ts_ns;

        if mem == Mem::Array {
            let Some(h) = c.handle else {
                self.anomaly("alloc_without_handle", || describe(c));
                return;
            };
            if let Some(old) = self.arrays.remove(&h) {
                self.anomaly("alloc_over_live", || describe(c));
                self.release(t, old, EndCause::Replaced, ts);
            }
            self.classify_new(&mut a, AllocRef::Array(h));
            self.book_add(t, a.device, Held::Device, bytes, ts);
            let a = Arc::new(a);
            self.started(&a);
            self.arrays.insert(h, a);
            return;
        }

        let Some(addr) = c.addr else {
            self.anomaly("alloc_without_address", || describe(c));
            return;
        };
        // Nothing is live at the address, as a rule: then the tree is searched once, to
        // insert. Nothing on the way to the insertion reads `by_addr`, so it is set aside.
        let mut by_addr = std::mem::take(&mut self.by_addr);
        if let btree_map::Entry::Vacant(slot) = by_addr.entry(addr) {
            slot.insert(self.start_at(t, c, a, addr));
            self.by_addr = by_addr;
            return;
        }
        self.by_addr = by_addr;
        if let Some(old) = self.by_addr.remove(&addr) {
            self.anomaly("alloc_over_live", || describe(c));
            self.release(t, old, EndCause::Replaced, ts);
        }
        let a = self.start_at(t, c, a, addr);
        self.by_addr.insert(addr, a);
    }

    /// Books `a`, about to be inserted at `addr` with nothing live there: out of its pool's
    /// held bytes when stream-ordered, classified, its bytes added, its change made.
    fn start_at(
        &mut self,
        t: &mut Totals,
        c: &Call,
        mut a: LiveAllocation,
        addr: u64,
    ) -> Arc<LiveAllocation> {
        let (mem, bytes, ts) = (a.mem, a.bytes, c.ts_ns);
        self.freed.remove(addr);

        if mem == Mem::DeviceAsync {
            // Stream-ordered memory comes out of the pool's held bytes first.
            let key = self.resolve_pool(c.pool, a.device);
            if let PoolId::Handle(h) = key {
                a.pool = Some(h);
            }
            // The memory is where the pool is, whatever context the thread has current.
            if c.device.is_none()
                && let Some(d) = self.pools.get(&key).and_then(|p| p.device)
            {
                a.device = Some(d);
            }
            let threshold = self.new_pool_threshold();
            let pool = self
                .pools
                .entry(key)
                .or_insert_with(|| Pool::new(a.device, threshold));
            pool.used += bytes;
            let reuse = pool.take(bytes);
            let pool_device = pool.device;
            if reuse > 0 {
                self.book_sub(t, pool_device, Held::Pool, reuse);
                self.pool_changed(key);
            }
        }
        if mem == Mem::Graph {
            self.graph_take(t, a.device, bytes);
        }
        if mem.is_host() {
            self.note_host_finding(c, mem, bytes);
        }
        self.classify_new(&mut a, AllocRef::Addr(addr));
        self.book_add(t, a.device, class_of(mem), bytes, ts);
        let a = Arc::new(a);
        self.started(&a);
        a
    }

    pub(crate) fn on_free(&mut self, t: &mut Totals, c: &Call) {
        let ts = c.ts_ns;
        if c.mem == Some(Mem::Array) {
            let Some(h) = c.handle else {
                self.count_free(&c.api, 1, 0);
                self.anomaly("free_without_handle", || describe(c));
                return;
            };
            match self.arrays.remove(&h) {
                Some(a) => {
                    self.count_free(&c.api, 1, a.bytes);
                    self.release(t, a, EndCause::ArrayDestroy, ts);
                    self.array_maps_gone(t, h, ts);
                }
                None => {
                    self.count_free(&c.api, 1, 0);
                    self.anomaly("free_unknown_handle", || describe(c));
                }
            }
            return;
        }
        let Some(addr) = c.addr else {
            self.count_free(&c.api, 1, 0);
            self.anomaly("free_without_address", || describe(c));
            return;
        };
        if addr == 0 {
            // Freeing NULL does nothing.
            self.count_free(&c.api, 1, 0);
            return;
        }
        let Some(a) = self.by_addr.remove(&addr) else {
            self.count_free(&c.api, 1, 0);
            if self.freed.contains(addr) {
                self.anomaly("double_free", || describe(c));
            } else {
                self.anomaly("free_unknown_address", || describe(c));
            }
            return;
        };
        let fits = match c.mem {
            // cuMemFreeAsync*: stream-ordered memory, of a host or managed pool too.
            Some(Mem::DeviceAsync) if a.pool.is_some() && a.mem.is_host() => true,
            // cuMemFree*, cuMemFreeAsync*: device memory of either kind, and graph memory.
            None | Some(Mem::Device) | Some(Mem::DeviceAsync) => {
                matches!(a.mem, Mem::Device | Mem::DeviceAsync | Mem::Graph)
            }
            Some(m) => m == a.mem,
        };
        if !fits {
            self.anomaly("free_kind_mismatch", || {
                format!("{} (allocated as {:?})", describe(c), a.mem)
            });
        }
        self.count_free(&c.api, 1, a.bytes);
        self.release(t, a, EndCause::Free, ts);
        self.freed.insert(addr);
    }

    pub(crate) fn on_failed(&mut self, c: &Call) {
        let e = self.failed.entry(c.api.to_string()).or_default();
        e.count += 1;
        e.bytes = e.bytes.saturating_add(c.bytes.unwrap_or(0));
        *e.rets.entry(c.ret).or_default() += 1;
    }

    /// A copy. It fills device memory from the host when its source is not device memory and
    /// its destination lies inside a live device allocation or mapping: the host-to-device
    /// entry points say so by their signature; 2D/3D copies by their source's memory type;
    /// unified copies (`cuMemcpy*`, `CU_MEMORYTYPE_UNIFIED`) by where the Ledger knows the
    /// addresses to lie. A source inside no device allocation the Ledger knows is host
    /// memory (device memory made before tracing began would read as host: a fill too many,
    /// never one too few).
    ///
    /// A batch (`cuMemcpyBatchAsync`, `cuMemcpy3DBatchAsync`) is each of its copies that were
    /// read, by the same rule; copies the probe could not read are counted as an anomaly
    /// (`batch_copies_unread`), never taken for none.
    pub(crate) fn on_copy(&mut self, c: &Call) {
        self.copy_range(c, c.src_mem, c.src, c.addr, c.bytes);
        if let Some(copies) = &c.copies {
            for b in copies.iter() {
                self.copy_range(c, Some(b.src_mem), b.src, b.addr, Some(b.bytes));
            }
        }
        if let Some(count) = c.count {
            // The first copy was read when its source is known (an array-to-array operation
            // has no address on either side).
            let read =
                c.copies.as_ref().map_or(0, |b| b.len() as u64) + u64::from(c.src_mem.is_some());
            if count > read {
                self.anomaly("batch_copies_unread", || {
                    format!("{}: {} of {count} copies read", describe(c), read)
                });
            }
        }
    }

    /// One copy of `c` (the call itself, or one of its batch): a fill when it goes from host
    /// memory into device memory the Ledger knows.
    fn copy_range(
        &mut self,
        c: &Call,
        src_mem: Option<CopySrc>,
        src: Option<u64>,
        addr: Option<u64>,
        bytes: Option<u64>,
    ) {
        // Whether the entry point's signature says the copy is host to device.
        let htod = src_mem.is_none();
        match src_mem {
            None | Some(CopySrc::Host) => {}
            Some(CopySrc::Device | CopySrc::Array) => return,
            Some(CopySrc::Unified) => match src {
                Some(src) if !self.is_device_memory(src) => {}
                _ => return,
            },
        }
        let Some(addr) = addr else {
            if htod {
                self.anomaly("copy_without_address", || describe(c));
            }
            return;
        };
        let len = bytes.unwrap_or(0);
        if let Some((&start, a)) = self.by_addr.range_mut(..=addr).next_back() {
            let end = start.saturating_add(a.bytes);
            if addr < end || (addr == start && a.bytes == 0) {
                // Host to host memory is no fill; the HtoD entry points may fill managed
                // memory, and do.
                if htod || !a.mem.is_host() {
                    let inside = len.min(end - addr);
                    let was = a.class;
                    self.classifier.on_fill(Arc::make_mut(a), inside);
                    Self::updated(&mut self.changes, self.proc, was, a);
                }
                return;
            }
        }
        if let Some((&start, m)) = self.mappings.range(..=addr).next_back() {
            let end = start.saturating_add(m.bytes);
            if addr < end {
                let inside = len.min(end - addr);
                if m.counted
                    && let Some(v) = self.vmm.get_mut(&m.handle)
                    && (htod || !v.alloc.mem.is_host())
                {
                    let was = v.alloc.class;
                    self.classifier.on_fill(Arc::make_mut(&mut v.alloc), inside);
                    Self::updated(&mut self.changes, self.proc, was, &v.alloc);
                }
                return;
            }
        }
        // A unified or typed copy to an address outside device memory is device (or host) to
        // host: no fill, and nothing amiss.
        if htod {
            self.anomaly("copy_outside_allocations", || describe(c));
        }
    }

    /// Whether `addr` lies in device memory the Ledger knows: a live device allocation, or a
    /// mapping of a device-located VMM handle (or of a handle made before tracing began).
    fn is_device_memory(&self, addr: u64) -> bool {
        if let Some((&start, a)) = self.by_addr.range(..=addr).next_back()
            && addr < start.saturating_add(a.bytes.max(1))
        {
            return !a.mem.is_host();
        }
        if let Some((&start, m)) = self.mappings.range(..=addr).next_back()
            && addr < start.saturating_add(m.bytes)
        {
            return self
                .vmm
                .get(&m.handle)
                .is_none_or(|v| !v.alloc.mem.is_host());
        }
        false
    }

    // --- process end ---

    pub(crate) fn on_exit(&mut self, t: &mut Totals, e: &Exit) {
        let mut largest: Vec<LiveAllocation> = self.live_allocations().cloned().collect();
        let live_allocations = largest.len();
        largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.ts_ns.cmp(&b.ts_ns)));
        largest.truncate(HELD_AT_EXIT);
        self.exit = Some(ExitSnapshot {
            ts_ns: e.ts_ns,
            device_bytes: self.usage.device_bytes,
            pool_held_bytes: self.usage.pool_held_bytes,
            host_bytes: self.usage.host_bytes,
            devices: self.devices.clone(),
            live_allocations,
            classes: self.classes(),
            largest,
        });
        // Everything the process held is gone: take it off the machine totals.
        for (&device, u) in &self.devices {
            t.sub(device, Held::Device, u.device_bytes);
            t.sub(device, Held::Pool, u.pool_held_bytes);
        }
        t.sub(None, Held::Host, self.usage.host_bytes);
        self.usage.clear_live();
        for u in self.devices.values_mut() {
            u.clear_live();
        }
        let proc = self.proc;
        let ended = |alloc| Change::Ended {
            proc,
            alloc,
            cause: EndCause::ProcessExit,
            ts_ns: e.ts_ns,
        };
        let gone: Vec<Arc<LiveAllocation>> = std::mem::take(&mut self.by_addr)
            .into_values()
            .chain(std::mem::take(&mut self.arrays).into_values())
            .chain(std::mem::take(&mut self.vmm).into_values().map(|v| v.alloc))
            .collect();
        for a in &gone {
            self.count_end(EndCause::ProcessExit, a.bytes);
        }
        self.changes.extend(gone.into_iter().map(ended));
        for (pool, p) in std::mem::take(&mut self.pools) {
            if p.held > 0 {
                self.changes.push(Change::PoolHeld {
                    proc,
                    pool,
                    device: p.device,
                    held: 0,
                });
            }
        }
        self.graphs_gone();
        self.changes.push(Change::Exited {
            proc,
            ts_ns: e.ts_ns,
        });
        self.mappings.clear();
        self.multicast.clear();
        self.array_maps.clear();
        self.imported_handles.clear();
        self.reserved.clear();
        self.default_pools.clear();
        self.current_pools.clear();
        self.ctx_device.clear();
        self.primary.clear();
        self.green.clear();
        self.threads.clear();
        self.freed.clear();
        self.classifier.clear_live();
    }
}
