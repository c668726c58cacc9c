//! One traced process: its live allocations, pools, VMM handles, contexts and counters.
//!
//! Every change of live bytes goes through [`ProcessState::book_add`] and
//! [`ProcessState::book_sub`], which move the process, its device and the machine totals
//! together, so the three can never disagree.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::change::{Change, EndCause, PoolId};
use super::classify::{self, AllocRef, ClassBytes, Classifier, Phase};
use super::usage::{Class, Totals, Usage};
use crate::trace::{Call, Exit, Mem, Process};

/// How many examples of each anomaly are kept.
const EXAMPLES: usize = 3;
/// How many freed addresses are remembered to tell a double free from a free of an address
/// that was never seen (attach mid-run). Forgotten all at once when full: a double free then
/// reads as an unknown free, which is still an anomaly.
const FREED_MEMORY: usize = 1 << 16;
/// How many of the largest allocations still live at exit the snapshot keeps.
const HELD_AT_EXIT: usize = 16;
/// How many host-memory findings a process keeps; the rest are counted.
const HOST_FINDINGS: usize = 4096;
/// How many out-of-memory failures a process keeps; the rest are counted as failures.
const OOMS: usize = 64;

/// An allocation that is live: device or host memory, a CUDA array, or a VMM handle's
/// physical memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveAllocation {
    /// Address (for VMM: the first address it is mapped at, while mapped).
    pub addr: Option<u64>,
    /// CUDA array or VMM handle.
    pub handle: Option<u64>,
    /// Size in bytes.
    pub bytes: u64,
    /// Where it lives.
    pub mem: Mem,
    /// The entry point that made it.
    pub api: Arc<str>,
    /// When it was made.
    pub ts_ns: u64,
    /// The thread that made it.
    pub tid: u32,
    /// Id of the stack that made it.
    pub stack: Option<u32>,
    /// Device ordinal, when it could be told.
    pub device: Option<i32>,
    /// The context that was current on the thread when it was made.
    pub ctx: Option<u64>,
    /// The pool of a stream-ordered allocation, when its handle is known.
    pub pool: Option<u64>,
    /// Bytes copied into it from the host (`cuMemcpyHtoD*`), all copies together.
    pub filled_from_host: u64,
    /// The part of `filled_from_host` copied while the process was in its load phase.
    pub filled_while_loading: u64,
    /// What it is, as far as the evidence so far tells (`docs/classification.md`).
    pub class: classify::Class,
    /// The evidence that decided `class`.
    pub evidence: classify::Evidences,
    /// The process's phase when it was made.
    pub made_in: Phase,
    /// Device frees the process had made before it was made.
    pub frees_before: u64,
    /// The size was not known (counted as 0 bytes).
    pub size_unknown: bool,
    /// Unique within the process.
    pub(crate) seq: u64,
}

impl LiveAllocation {
    /// A number unique among the allocations of its process, in the order they were made:
    /// with the process's id it names the allocation in the change stream, whatever address
    /// is reused.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// An allocation in host RAM by a traced process: a finding, a violation under the
/// vram-only policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFinding {
    /// When it returned.
    pub ts_ns: u64,
    /// The calling thread.
    pub tid: u32,
    /// The entry point.
    pub api: String,
    /// Bytes placed in host RAM.
    pub bytes: u64,
    /// What kind of host memory.
    pub mem: Option<Mem>,
    /// The flags argument, as passed.
    pub flags: Option<u64>,
    /// Id of the call's stack.
    pub stack: Option<u32>,
    /// The signal the probe sent the thread at the call.
    pub signalled: Option<u32>,
}

/// What NVML said about a GPU at the sample nearest an out-of-memory failure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmlAtOom {
    /// When the sample was taken.
    pub ts_ns: u64,
    /// Free bytes on the GPU, when NVML told.
    pub free_bytes: Option<u64>,
    /// Used bytes on the GPU, when NVML told.
    pub used_bytes: Option<u64>,
    /// Total bytes, when NVML told.
    pub total_bytes: Option<u64>,
}

/// Another traced process on the GPU of an out-of-memory failure, at that moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomNeighbour {
    /// Its `process` record id.
    pub proc: u32,
    /// Process id.
    pub pid: u32,
    /// Short name.
    pub comm: String,
    /// Its live device bytes on that GPU.
    pub device_bytes: u64,
    /// Its pool-held bytes there.
    #[serde(default)]
    pub pool_held_bytes: u64,
}

/// A request that failed for want of memory (`CUDA_ERROR_OUT_OF_MEMORY`, or a failed
/// `cuMemCreate`), with what was held at that moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oom {
    /// When it failed.
    pub ts_ns: u64,
    /// The calling thread.
    pub tid: u32,
    /// The entry point.
    pub api: String,
    /// The driver's return code.
    pub ret: i32,
    /// Bytes asked for, when the call has a size.
    pub requested_bytes: Option<u64>,
    /// Id of the call's stack.
    pub stack: Option<u32>,
    /// The device asked (CUDA ordinal), when it could be told.
    pub device: Option<i32>,
    /// That device's NVML index, when it could be told.
    pub nvml_index: Option<u32>,
    /// The process's live bytes by class (every class, zeros included).
    pub live_by_class: BTreeMap<classify::Class, u64>,
    /// The process's device plus pool-held bytes on that device (all devices when it could
    /// not be told).
    pub device_bytes: u64,
    /// The other traced processes on the same device.
    pub others: Vec<OomNeighbour>,
    /// The GPU's NVML figures at the nearest sample, when NVML was sampled.
    pub nvml: Option<NvmlAtOom>,
}

/// Calls and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiCount {
    /// Calls.
    pub count: u64,
    /// Bytes allocated or freed by them (for frees: the sizes of the allocations found).
    pub bytes: u64,
}

/// Failed calls of one entry point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailedCount {
    /// Calls.
    pub count: u64,
    /// Bytes requested, where the call has a size.
    pub bytes: u64,
    /// Calls per `CUresult`.
    pub rets: BTreeMap<i32, u64>,
}

/// Input that does not fit what the ledger knows: a free of an unknown address, a double
/// free, an unmap of an unknown range. Counted, never fatal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Anomaly {
    /// Occurrences.
    pub count: u64,
    /// The first few, described.
    pub examples: Vec<String>,
}

/// What a process held when it exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitSnapshot {
    /// When the exit was seen.
    pub ts_ns: u64,
    /// Live device bytes.
    pub device_bytes: u64,
    /// Pool-held bytes.
    pub pool_held_bytes: u64,
    /// Live host bytes.
    pub host_bytes: u64,
    /// Per device (live and pool-held; peaks as of the exit).
    pub devices: BTreeMap<Option<i32>, Usage>,
    /// How many allocations were live.
    pub live_allocations: usize,
    /// Live bytes by class (pool-held and host bytes included).
    pub classes: ClassBytes,
    /// The largest of them, largest first.
    pub largest: Vec<LiveAllocation>,
}

/// A stream-ordered pool as the trace can know it: the freed blocks it still holds from the
/// GPU. An allocation reuses the smallest held block that fits (the rest of that block stays
/// held); one that fits in no block takes new memory from the GPU. A trim gives back the
/// largest blocks first. This is the suballocation the driver documents for pools; the
/// driver may also trim on its own (release threshold), so held bytes are an upper bound.
#[derive(Clone, Debug, Default)]
struct Pool {
    device: Option<i32>,
    /// Sum of `blocks`.
    held: u64,
    blocks: Vec<u64>,
    destroyed: bool,
}

impl Pool {
    fn new(device: Option<i32>) -> Self {
        Pool {
            device,
            ..Pool::default()
        }
    }

    fn give(&mut self, bytes: u64) {
        if bytes > 0 {
            self.blocks.push(bytes);
            self.held += bytes;
        }
    }

    /// Serves an allocation of `bytes` from a held block, if one fits: the bytes reused.
    fn take(&mut self, bytes: u64) -> u64 {
        let best = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| **b >= bytes)
            .min_by_key(|(i, b)| (**b, *i))
            .map(|(i, _)| i);
        let Some(i) = best else { return 0 };
        let block = self.blocks.remove(i);
        if block > bytes {
            self.blocks.push(block - bytes);
        }
        self.held -= bytes;
        bytes
    }

    /// Gives back held bytes above `keep`, largest blocks first: the bytes released.
    fn trim(&mut self, keep: u64) -> u64 {
        let mut excess = self.held.saturating_sub(keep);
        let released = excess;
        while excess > 0 {
            let Some(i) = self
                .blocks
                .iter()
                .enumerate()
                .max_by_key(|(i, b)| (**b, std::cmp::Reverse(*i)))
                .map(|(i, _)| i)
            else {
                break;
            };
            if self.blocks[i] <= excess {
                excess -= self.blocks.remove(i);
            } else {
                self.blocks[i] -= excess;
                excess = 0;
            }
        }
        self.held -= released - excess;
        released - excess
    }

    /// Lets go of everything held: the bytes released.
    fn clear(&mut self) -> u64 {
        self.blocks.clear();
        std::mem::take(&mut self.held)
    }

    fn absorb(&mut self, other: Pool) {
        self.held += other.held;
        self.blocks.extend(other.blocks);
    }
}

#[derive(Clone, Debug)]
struct VmmHandle {
    alloc: LiveAllocation,
    released: bool,
    mappings: u32,
}

#[derive(Clone, Debug)]
struct Mapping {
    bytes: u64,
    handle: u64,
    /// Whether the mapping was counted on its handle (the handle was live when mapped).
    counted: bool,
}

#[derive(Clone, Debug)]
struct PrimaryCtx {
    ctx: u64,
    refs: u32,
}

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
    pub allocs: BTreeMap<String, ApiCount>,
    /// Frees per entry point (`cuMemRelease`, and context destruction for what it freed).
    pub frees: BTreeMap<String, ApiCount>,
    /// Failed calls per entry point.
    pub failed: BTreeMap<String, FailedCount>,
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

    /// Boxed: the tree moves its values as it rebalances.
    by_addr: BTreeMap<u64, Box<LiveAllocation>>,
    arrays: HashMap<u64, LiveAllocation>,
    vmm: HashMap<u64, VmmHandle>,
    mappings: BTreeMap<u64, Mapping>,
    reserved: BTreeMap<u64, u64>,
    pools: HashMap<PoolId, Pool>,
    default_pools: HashMap<Option<i32>, u64>,
    ctx_device: HashMap<u64, Option<i32>>,
    primary: HashMap<Option<i32>, PrimaryCtx>,
    threads: HashMap<u32, Vec<u64>>,
    freed: HashSet<u64>,
    /// Device plus pool-held bytes when `classes_at_peak` was taken.
    classes_peak_bytes: u64,
    /// What the record being applied changed so far; the Ledger takes them after each record.
    pub(crate) changes: Vec<Change>,
}

/// The counter of entry point `api`, without allocating its name but the first time.
fn counter<'a>(counts: &'a mut BTreeMap<String, ApiCount>, api: &str) -> &'a mut ApiCount {
    if !counts.contains_key(api) {
        counts.insert(api.to_owned(), ApiCount::default());
    }
    counts.get_mut(api).expect("inserted above")
}

fn class_of(mem: Mem) -> Class {
    if mem.is_host() {
        Class::Host
    } else {
        Class::Device
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
            .chain(self.arrays.values())
            .chain(self.vmm.values().map(|v| &v.alloc))
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
                PoolId::Default(_) => None,
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
                AllocRef::Addr(k) => self.by_addr.get_mut(&k).map(|a| &mut **a),
                AllocRef::Array(h) => self.arrays.get_mut(&h),
                AllocRef::Vmm(h) => self.vmm.get_mut(&h).map(|v| &mut v.alloc),
            };
            if let Some(live) = live
                && live.seq == seq
            {
                // Its evidence changed (it outlived enough frees), whether its class did or not.
                let was = live.class;
                self.classifier.reclassify(live);
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
    fn started(&mut self, a: &LiveAllocation) {
        self.changes.push(Change::Started {
            proc: self.proc,
            alloc: a.clone(),
        });
    }

    /// A live allocation changed (class, fill, mapping): the change says so.
    fn updated(changes: &mut Vec<Change>, proc: u32, was: classify::Class, a: &LiveAllocation) {
        changes.push(Change::Updated {
            proc,
            was,
            alloc: a.clone(),
        });
    }

    /// A pool's held bytes may have changed: the change gives the new figure.
    fn pool_changed(&mut self, key: PoolId) {
        let (device, held) = self
            .pools
            .get(&key)
            .map_or((None, 0), |p| (p.device, p.held));
        let device = match key {
            PoolId::Default(d) => device.or(d),
            PoolId::Handle(_) => device,
        };
        self.changes.push(Change::PoolHeld {
            proc: self.proc,
            pool: key,
            device,
            held,
        });
    }

    fn book_add(&mut self, t: &mut Totals, device: Option<i32>, class: Class, bytes: u64, ts: u64) {
        self.usage.add(class, bytes, ts);
        if class != Class::Host {
            self.devices
                .entry(device)
                .or_default()
                .add(class, bytes, ts);
        }
        t.add(device, class, bytes, ts);
        let now = self.usage.device_and_pool_bytes();
        if class != Class::Host && now > self.classes_peak_bytes {
            self.classes_peak_bytes = now;
            self.classes_at_peak = self.classes();
            self.classes_at_peak_ts_ns = Some(ts);
        }
    }

    fn book_sub(&mut self, t: &mut Totals, device: Option<i32>, class: Class, bytes: u64) {
        let mut ok = self.usage.sub(class, bytes);
        if class != Class::Host {
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
    }

    fn resolve_pool(&self, pool: Option<u64>, device: Option<i32>) -> PoolId {
        match pool.or_else(|| self.default_pools.get(&device).copied()) {
            Some(h) => PoolId::Handle(h),
            None => PoolId::Default(device),
        }
    }

    fn remember_freed(&mut self, addr: u64) {
        if self.freed.len() >= FREED_MEMORY {
            self.freed.clear();
        }
        self.freed.insert(addr);
    }

    /// Gives a live allocation's bytes back and says why it ended: a stream-ordered
    /// allocation freed by a call goes into its pool, anything else to the GPU or the host.
    fn release(&mut self, t: &mut Totals, a: LiveAllocation, cause: EndCause, ts: u64) {
        let class = class_of(a.mem);
        self.book_sub(t, a.device, class, a.bytes);
        if cause == EndCause::ContextDestroyed {
            // Teardown is not one of the process's frees: it neither ends loading nor ages
            // young allocations, and nothing of a context goes back into a pool.
            self.classifier.on_ctx_gone(&a);
        } else {
            self.classify_gone(&a);
        }
        let mut cause = cause;
        if cause == EndCause::Free && a.mem == Mem::DeviceAsync {
            let key = self.resolve_pool(a.pool, a.device);
            let pool = self.pools.entry(key).or_insert_with(|| Pool::new(a.device));
            // A destroyed pool lets go of memory as its last allocations are freed.
            if !pool.destroyed {
                pool.give(a.bytes);
                let device = pool.device;
                self.book_add(t, device, Class::Pool, a.bytes, ts);
                self.pool_changed(key);
                cause = EndCause::PoolFree;
            }
        }
        self.changes.push(Change::Ended {
            proc: self.proc,
            alloc: a,
            cause,
            ts_ns: ts,
        });
    }

    fn count_alloc(&mut self, api: &str, bytes: u64) {
        let e = counter(&mut self.allocs, api);
        e.count += 1;
        e.bytes = e.bytes.saturating_add(bytes);
    }

    fn count_free(&mut self, api: &str, calls: u64, bytes: u64) {
        let e = counter(&mut self.frees, api);
        e.count += calls;
        e.bytes = e.bytes.saturating_add(bytes);
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
        self.count_alloc(&c.api, bytes);
        let mut a = self.new_alloc(c, mem, bytes);
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
            self.book_add(t, a.device, Class::Device, bytes, ts);
            self.started(&a);
            self.arrays.insert(h, a);
            return;
        }

        let Some(addr) = c.addr else {
            self.anomaly("alloc_without_address", || describe(c));
            return;
        };
        if let Some(old) = self.by_addr.remove(&addr) {
            self.anomaly("alloc_over_live", || describe(c));
            self.release(t, *old, EndCause::Replaced, ts);
        }
        self.freed.remove(&addr);

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
            let pool = self.pools.entry(key).or_insert_with(|| Pool::new(a.device));
            let reuse = pool.take(bytes);
            let pool_device = pool.device;
            if reuse > 0 {
                self.book_sub(t, pool_device, Class::Pool, reuse);
                self.pool_changed(key);
            }
        }
        if mem.is_host() {
            self.note_host_finding(c, mem, bytes);
        }
        self.classify_new(&mut a, AllocRef::Addr(addr));
        self.book_add(t, a.device, class_of(mem), bytes, ts);
        self.started(&a);
        self.by_addr.insert(addr, Box::new(a));
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
            if self.freed.contains(&addr) {
                self.anomaly("double_free", || describe(c));
            } else {
                self.anomaly("free_unknown_address", || describe(c));
            }
            return;
        };
        let fits = match c.mem {
            // cuMemFree*, cuMemFreeAsync*: device memory of either kind.
            None | Some(Mem::Device) | Some(Mem::DeviceAsync) => {
                matches!(a.mem, Mem::Device | Mem::DeviceAsync)
            }
            Some(m) => m == a.mem,
        };
        if !fits {
            self.anomaly("free_kind_mismatch", || {
                format!("{} (allocated as {:?})", describe(c), a.mem)
            });
        }
        self.count_free(&c.api, 1, a.bytes);
        self.release(t, *a, EndCause::Free, ts);
        self.remember_freed(addr);
    }

    pub(crate) fn on_failed(&mut self, c: &Call) {
        let e = self.failed.entry(c.api.to_string()).or_default();
        e.count += 1;
        e.bytes = e.bytes.saturating_add(c.bytes.unwrap_or(0));
        *e.rets.entry(c.ret).or_default() += 1;
    }

    pub(crate) fn on_copy(&mut self, c: &Call) {
        let Some(addr) = c.addr else {
            self.anomaly("copy_without_address", || describe(c));
            return;
        };
        let len = c.bytes.unwrap_or(0);
        if let Some((&start, a)) = self.by_addr.range_mut(..=addr).next_back() {
            let end = start.saturating_add(a.bytes);
            if addr < end || (addr == start && a.bytes == 0) {
                let inside = len.min(end - addr);
                let was = a.class;
                self.classifier.on_fill(a, inside);
                Self::updated(&mut self.changes, self.proc, was, a);
                return;
            }
        }
        if let Some((&start, m)) = self.mappings.range(..=addr).next_back() {
            let end = start.saturating_add(m.bytes);
            if addr < end {
                let inside = len.min(end - addr);
                if m.counted
                    && let Some(v) = self.vmm.get_mut(&m.handle)
                {
                    let was = v.alloc.class;
                    self.classifier.on_fill(&mut v.alloc, inside);
                    Self::updated(&mut self.changes, self.proc, was, &v.alloc);
                }
                return;
            }
        }
        self.anomaly("copy_outside_allocations", || describe(c));
    }

    // --- stream-ordered pools ---

    fn merge_default_pool(&mut self, t: &mut Totals, device: Option<i32>, handle: u64, ts: u64) {
        self.default_pools.insert(device, handle);
        let Some(old) = self.pools.remove(&PoolId::Default(device)) else {
            self.pools
                .entry(PoolId::Handle(handle))
                .or_insert_with(|| Pool::new(device));
            return;
        };
        let (old_device, old_held) = (old.device, old.held);
        let pool = self
            .pools
            .entry(PoolId::Handle(handle))
            .or_insert_with(|| Pool::new(old_device));
        pool.absorb(old);
        let to = pool.device;
        if to != old_device && old_held > 0 {
            self.book_sub(t, old_device, Class::Pool, old_held);
            self.book_add(t, to, Class::Pool, old_held, ts);
        }
        if old_held > 0 {
            self.pool_changed(PoolId::Default(device));
            self.pool_changed(PoolId::Handle(handle));
        }
    }

    pub(crate) fn on_pool_create(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.pool.or(c.handle) else {
            self.anomaly("pool_without_handle", || describe(c));
            return;
        };
        if c.api.starts_with("cuDeviceGetDefaultMemPool") {
            self.merge_default_pool(t, c.device, h, c.ts_ns);
            return;
        }
        let fresh = Pool::new(c.device);
        match self.pools.get(&PoolId::Handle(h)) {
            Some(p) if !p.destroyed => {
                self.anomaly("pool_create_over_live", || describe(c));
            }
            _ => {
                self.pools.insert(PoolId::Handle(h), fresh);
            }
        }
    }

    pub(crate) fn on_pool_trim(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.pool.or(c.handle) else {
            self.anomaly("pool_without_handle", || describe(c));
            return;
        };
        let Some(keep) = c.bytes else {
            self.anomaly("trim_without_size", || describe(c));
            return;
        };
        let key = PoolId::Handle(h);
        if !self.pools.contains_key(&key) {
            // A handle never seen: the default pool got through an entry point that is not
            // traced (cuDeviceGetMemPool). With one default pool in use it can only be that.
            let unresolved: Vec<Option<i32>> = self
                .pools
                .iter()
                .filter_map(|(k, p)| match k {
                    PoolId::Default(d) if p.held > 0 => Some(*d),
                    _ => None,
                })
                .collect();
            match unresolved.as_slice() {
                [] => return,
                [d] => self.merge_default_pool(t, *d, h, c.ts_ns),
                _ => {
                    self.anomaly("trim_ambiguous_pool", || describe(c));
                    return;
                }
            }
        }
        let Some(pool) = self.pools.get_mut(&key) else {
            return;
        };
        let release = pool.trim(keep);
        let device = pool.device;
        if release > 0 {
            self.book_sub(t, device, Class::Pool, release);
            self.pool_changed(key);
        }
    }

    pub(crate) fn on_pool_destroy(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.pool.or(c.handle) else {
            self.anomaly("pool_without_handle", || describe(c));
            return;
        };
        match self.pools.get_mut(&PoolId::Handle(h)) {
            Some(p) if !p.destroyed => {
                let held = p.clear();
                p.destroyed = true;
                let device = p.device;
                if held > 0 {
                    self.book_sub(t, device, Class::Pool, held);
                    self.pool_changed(PoolId::Handle(h));
                }
            }
            _ => self.anomaly("destroy_unknown_pool", || describe(c)),
        }
    }

    // --- virtual memory management ---

    /// Frees a VMM handle's physical memory (released and no longer mapped, or replaced).
    fn drop_handle(&mut self, t: &mut Totals, h: u64, cause: EndCause, ts: u64) {
        if let Some(v) = self.vmm.remove(&h) {
            self.release(t, v.alloc, cause, ts);
        }
    }

    pub(crate) fn on_vmm_create(&mut self, t: &mut Totals, c: &Call) {
        let mem = match c.mem {
            Some(m @ (Mem::VmmDevice | Mem::VmmHost)) => m,
            _ => {
                self.anomaly("vmm_create_without_location", || describe(c));
                Mem::VmmDevice
            }
        };
        let bytes = c.bytes.unwrap_or_else(|| {
            self.anomaly("alloc_without_size", || describe(c));
            0
        });
        self.count_alloc(&c.api, bytes);
        let Some(h) = c.handle else {
            self.anomaly("alloc_without_handle", || describe(c));
            return;
        };
        if self.vmm.contains_key(&h) {
            self.anomaly("alloc_over_live", || describe(c));
            for m in self.mappings.values_mut() {
                if m.handle == h {
                    m.counted = false;
                }
            }
            self.drop_handle(t, h, EndCause::Replaced, c.ts_ns);
        }
        let mut a = self.new_alloc(c, mem, bytes);
        a.addr = None;
        if mem.is_host() {
            self.note_host_finding(c, mem, bytes);
        }
        self.classify_new(&mut a, AllocRef::Vmm(h));
        self.book_add(t, a.device, class_of(mem), bytes, c.ts_ns);
        self.started(&a);
        self.vmm.insert(
            h,
            VmmHandle {
                alloc: a,
                released: false,
                mappings: 0,
            },
        );
    }

    pub(crate) fn on_vmm_release(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.handle else {
            self.count_free(&c.api, 1, 0);
            self.anomaly("free_without_handle", || describe(c));
            return;
        };
        let (bytes, unmapped) = match self.vmm.get_mut(&h) {
            Some(v) if !v.released => {
                v.released = true;
                (v.alloc.bytes, v.mappings == 0)
            }
            Some(_) => {
                self.count_free(&c.api, 1, 0);
                self.anomaly("double_release", || describe(c));
                return;
            }
            None => {
                self.count_free(&c.api, 1, 0);
                self.anomaly("free_unknown_handle", || describe(c));
                return;
            }
        };
        self.count_free(&c.api, 1, bytes);
        if unmapped {
            self.drop_handle(t, h, EndCause::VmmRelease, c.ts_ns);
        }
    }

    fn unmap_at(&mut self, t: &mut Totals, addr: u64, ts: u64) {
        let Some(m) = self.mappings.remove(&addr) else {
            return;
        };
        if !m.counted {
            return;
        }
        let Some(v) = self.vmm.get_mut(&m.handle) else {
            return;
        };
        v.mappings = v.mappings.saturating_sub(1);
        if v.released && v.mappings == 0 {
            self.drop_handle(t, m.handle, EndCause::VmmRelease, ts);
        } else if v.alloc.addr == Some(addr) {
            v.alloc.addr = None;
            Self::updated(&mut self.changes, self.proc, v.alloc.class, &v.alloc);
        }
    }

    pub(crate) fn on_vmm_map(&mut self, t: &mut Totals, c: &Call) {
        let (Some(addr), Some(h)) = (c.addr, c.handle) else {
            self.anomaly("map_without_address_or_handle", || describe(c));
            return;
        };
        if self.mappings.contains_key(&addr) {
            self.anomaly("map_over_mapping", || describe(c));
            self.unmap_at(t, addr, c.ts_ns);
        }
        let counted = match self.vmm.get_mut(&h) {
            Some(v) if !v.released => {
                v.mappings += 1;
                if v.alloc.addr.is_none() {
                    v.alloc.addr = Some(addr);
                    Self::updated(&mut self.changes, self.proc, v.alloc.class, &v.alloc);
                }
                true
            }
            _ => {
                self.anomaly("map_unknown_handle", || describe(c));
                false
            }
        };
        let bytes = c
            .bytes
            .or_else(|| self.vmm.get(&h).map(|v| v.alloc.bytes))
            .unwrap_or(0);
        self.mappings.insert(
            addr,
            Mapping {
                bytes,
                handle: h,
                counted,
            },
        );
    }

    pub(crate) fn on_vmm_unmap(&mut self, t: &mut Totals, c: &Call) {
        let Some(addr) = c.addr else {
            self.anomaly("unmap_without_address", || describe(c));
            return;
        };
        // One call may cover several mappings (a range mapped handle by handle).
        let end = addr.saturating_add(c.bytes.unwrap_or(1).max(1));
        let starts: Vec<u64> = self.mappings.range(addr..end).map(|(&a, _)| a).collect();
        if starts.is_empty() {
            self.anomaly("unmap_unknown_range", || describe(c));
            return;
        }
        for a in starts {
            self.unmap_at(t, a, c.ts_ns);
        }
    }

    pub(crate) fn on_reserve(&mut self, c: &Call) {
        let (Some(addr), Some(bytes)) = (c.addr, c.bytes) else {
            self.anomaly("reserve_without_range", || describe(c));
            return;
        };
        if self.reserved.insert(addr, bytes).is_some() {
            self.anomaly("reserve_over_reserved", || describe(c));
        }
    }

    pub(crate) fn on_unreserve(&mut self, c: &Call) {
        let removed = c.addr.and_then(|a| self.reserved.remove(&a));
        if removed.is_none() {
            self.anomaly("unreserve_unknown_range", || describe(c));
        }
    }

    // --- contexts ---

    pub(crate) fn on_ctx_create(&mut self, c: &Call) {
        let Some(ctx) = c.handle else {
            self.anomaly("ctx_without_handle", || describe(c));
            return;
        };
        self.ctx_device.insert(ctx, c.device);
        if c.api.starts_with("cuDevicePrimaryCtxRetain") {
            // Retaining the primary context does not make it current.
            let p = self
                .primary
                .entry(c.device)
                .or_insert(PrimaryCtx { ctx, refs: 0 });
            p.ctx = ctx;
            p.refs += 1;
        } else {
            // cuCtxCreate pushes the new context on the calling thread's stack.
            self.threads.entry(c.tid).or_default().push(ctx);
        }
    }

    pub(crate) fn on_ctx_destroy(&mut self, t: &mut Totals, c: &Call) {
        if c.api.starts_with("cuDevicePrimaryCtxRelease") {
            let Some(p) = self.primary.get_mut(&c.device) else {
                self.anomaly("release_unretained_primary_ctx", || describe(c));
                return;
            };
            p.refs = p.refs.saturating_sub(1);
            if p.refs == 0 {
                let ctx = p.ctx;
                self.primary.remove(&c.device);
                self.destroy_ctx(t, ctx, &c.api, c.ts_ns);
            }
            return;
        }
        let Some(ctx) = c.handle else {
            self.anomaly("ctx_without_handle", || describe(c));
            return;
        };
        if !self.ctx_device.contains_key(&ctx) {
            self.anomaly("destroy_unknown_ctx", || describe(c));
        }
        // The destroyed context is popped from the calling thread only; other threads keep it
        // current (and get CUDA_ERROR_CONTEXT_IS_DESTROYED from then on).
        if let Some(stack) = self.threads.get_mut(&c.tid)
            && stack.last() == Some(&ctx)
        {
            stack.pop();
        }
        self.destroy_ctx(t, ctx, &c.api, c.ts_ns);
    }

    /// Everything allocated in `ctx` is freed with it. VMM memory is not bound to a context
    /// and stays.
    fn destroy_ctx(&mut self, t: &mut Totals, ctx: u64, api: &str, ts: u64) {
        self.ctx_device.remove(&ctx);
        let addrs: Vec<u64> = self
            .by_addr
            .iter()
            .filter(|(_, a)| a.ctx == Some(ctx))
            .map(|(&k, _)| k)
            .collect();
        let arrays: Vec<u64> = self
            .arrays
            .iter()
            .filter(|(_, a)| a.ctx == Some(ctx))
            .map(|(&k, _)| k)
            .collect();
        let mut freed: Vec<LiveAllocation> = Vec::with_capacity(addrs.len() + arrays.len());
        freed.extend(
            addrs
                .iter()
                .filter_map(|k| self.by_addr.remove(k).map(|a| *a)),
        );
        freed.extend(arrays.iter().filter_map(|k| self.arrays.remove(k)));
        if freed.is_empty() {
            return;
        }
        let calls = freed.len() as u64;
        let mut bytes = 0u64;
        for a in freed {
            bytes = bytes.saturating_add(a.bytes);
            self.release(t, a, EndCause::ContextDestroyed, ts);
        }
        self.count_free(api, calls, bytes);
    }

    pub(crate) fn on_ctx_current(&mut self, c: &Call) {
        let ctx = c.handle.unwrap_or(0);
        let stack = self.threads.entry(c.tid).or_default();
        if c.api.starts_with("cuCtxPushCurrent") {
            stack.push(ctx);
        } else if c.api.starts_with("cuCtxPopCurrent") {
            match stack.pop() {
                None => self.anomaly("pop_empty_ctx_stack", || describe(c)),
                Some(top) if c.handle.is_some_and(|h| h != top) => {
                    self.anomaly("pop_other_ctx", || describe(c));
                }
                Some(_) => {}
            }
        } else if let Some(top) = stack.last_mut() {
            *top = ctx;
        } else if ctx != 0 {
            stack.push(ctx);
        }
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
            t.sub(device, Class::Device, u.device_bytes);
            t.sub(device, Class::Pool, u.pool_held_bytes);
        }
        t.sub(None, Class::Host, self.usage.host_bytes);
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
        self.changes.extend(
            std::mem::take(&mut self.by_addr)
                .into_values()
                .map(|a| ended(*a))
                .chain(std::mem::take(&mut self.arrays).into_values().map(ended))
                .chain(
                    std::mem::take(&mut self.vmm)
                        .into_values()
                        .map(|v| ended(v.alloc)),
                ),
        );
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
        self.changes.push(Change::Exited {
            proc,
            ts_ns: e.ts_ns,
        });
        self.mappings.clear();
        self.reserved.clear();
        self.default_pools.clear();
        self.ctx_device.clear();
        self.primary.clear();
        self.threads.clear();
        self.freed.clear();
        self.classifier.clear_live();
    }
}
