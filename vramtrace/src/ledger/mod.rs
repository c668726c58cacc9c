//! Live GPU and host memory per process and device: the one accounting path that live tracing
//! and trace replay both feed, one [`Record`] at a time.
//!
//! What the ledger takes from CUDA's semantics (CUDA driver API reference, `cuda.h`):
//!
//! - `cuMemFreeAsync` returns memory to its pool, not to the GPU; the next stream-ordered
//!   allocation from that pool reuses it first. `cuMemPoolTrimTo` (down to a number of
//!   reserved bytes, in use plus held) and `cuMemPoolDestroy` give it back, and so does every
//!   stream, event or context synchronization, down to the pool's release threshold
//!   (`CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`, 0 by default). Where the threshold is not known
//!   (a process that ran before the recording), pool-held bytes are an upper bound.
//! - VMM physical memory lives from `cuMemCreate` until the handle is released *and* every
//!   mapping of it is unmapped, in either order. Reservations are address space only.
//! - Destroying a context (or releasing a primary context as often as it was retained, or
//!   resetting it) frees what was made in it, except stream-ordered and VMM memory, which
//!   no context owns (`LiveAllocation::freed_with_context`).
//! - A thread's current context decides the device; `Call::device` overrides it.
//! - An `exit` frees everything the process held; the ledger keeps a snapshot first.
//! - An `nvml` sample is reconciled with the live processes ([`nvml`]).
//!
//! - Every live byte has one class (weights, KV cache, dynamic, pool, host fallback,
//!   unknown), decided by [`classify`] from the event stream and revised as evidence arrives.
//! - A host-memory allocation is a finding; a request that fails for want of memory
//!   ([`Call::is_oom`]) is an [`Oom`] with what every traced process held at that moment, on
//!   which device and NVML device.
//! - [`Ledger::apply`] returns what each record changed ([`Change`]): every consumer reads
//!   those and the Ledger's state, and decides none of these facts again.
//!
//! Input that does not fit (a free of an unknown address, a double free, an unmap of an
//! unknown range) is counted per process as an anomaly, never a panic.

mod change;
pub mod classify;
pub mod nvml;
mod process;
mod replay;
mod shared;
mod usage;

#[cfg(test)]
mod change_tests;
#[cfg(test)]
mod classify_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use foldhash::HashMap;

pub use change::{Change, EndCause, PoolId};
pub use classify::{Class, ClassBytes, Evidence, Phase};
pub use nvml::{
    DeviceReconciliation, GpuReconciliation, NvmlLedger, ProcessNvml, Reconciliation,
    UntracedProcess,
};
pub use process::{
    Anomaly, ApiCount, ApiCounts, ExitSnapshot, FailedCount, GraphMemReport, GraphPool,
    HostFinding, ImportedMapping, LiveAllocation, NvmlAtOom, Oom, OomNeighbour, Owner,
    ProcessState,
};
pub use replay::{READ_AHEAD_BATCH, Replay, Seen, Step, header_record};
pub use usage::{Totals, Usage};

use crate::trace::{Call, Record, Stack};
use process::take_changes;

/// Live allocations and counters of every traced process.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    procs: BTreeMap<u32, ProcessState>,
    /// Shared, so that a copy of the Ledger (a replay's checkpoint) does not copy every frame.
    stacks: HashMap<u32, std::sync::Arc<Stack>>,
    totals: Totals,
    lost_events: u64,
    stack_failed: u64,
    first_ts_ns: Option<u64>,
    last_ts_ns: Option<u64>,
    nvml: NvmlLedger,
    /// The latest NVML figures per device ordinal, for out-of-memory records.
    nvml_at_oom: BTreeMap<i32, NvmlAtOom>,
    /// What the header said was traced, and when the recording started: which processes
    /// were already running then.
    scope: crate::trace::Scope,
    start_monotonic_ns: u64,
    /// Memory shared between processes: exports, and the mappings open on them.
    shared: shared::Shared,
    /// What the latest record changed.
    changes: Vec<Change>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one record into account and returns what it changed, in order (also kept for
    /// [`Ledger::changes`] until the next record). Never fails: inconsistent input becomes an
    /// anomaly of the process it names.
    pub fn apply(&mut self, rec: &Record) -> &[Change] {
        self.changes.clear();
        self.apply_record(rec);
        &self.changes
    }

    /// What the latest [`Ledger::apply`] changed.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    fn apply_record(&mut self, rec: &Record) {
        match rec {
            Record::Header(h) => {
                self.nvml.set_info(h.nvml.clone());
                self.scope.clone_from(&h.scope);
                self.start_monotonic_ns = h.start_monotonic_ns;
            }
            Record::Footer(_) => {}
            Record::Nvml(s) => self.nvml.apply(s, &self.procs),
            Record::Process(p) => {
                let gpus = self.nvml_gpus().len();
                let running_before = self.scope.pids.contains(&p.pid)
                    || (self.scope.all && started_before(p.start_time, self.start_monotonic_ns));
                let st = self.proc_mut(p.id, p.pid);
                st.pid = p.pid;
                st.info = Some(p.clone());
                st.sole_device = sole_device(gpus, p.cuda_visible_devices.as_deref());
                st.running_before = running_before;
            }
            Record::Stack(s) => {
                self.stacks.insert(s.id, std::sync::Arc::new(s.clone()));
            }
            Record::Lost(l) => {
                self.touch(l.ts_ns);
                self.lost_events = self.lost_events.saturating_add(l.events());
                self.stack_failed = self.stack_failed.saturating_add(l.stack_failed);
                self.changes.push(Change::Lost {
                    events: l.events(),
                    stack_failed: l.stack_failed,
                });
            }
            Record::Exit(e) => {
                self.touch(e.ts_ns);
                // Its mappings of other processes' memory end first: what an owner kept for
                // them ends with them.
                self.shared_exit(e.proc, e.ts_ns);
                let Ledger {
                    procs,
                    totals,
                    changes,
                    ..
                } = self;
                let st = procs
                    .entry(e.proc)
                    .or_insert_with(|| ProcessState::new(e.proc, e.pid));
                st.touch(e.ts_ns);
                if st.exited() {
                    st.anomaly("second_exit", || format!("exit at {} ns", e.ts_ns));
                }
                st.on_exit(totals, e);
                take_changes(changes, &mut st.changes);
            }
            _ => self.apply_call(rec),
        }
    }

    fn apply_call(&mut self, rec: &Record) {
        let Some(c) = rec.call() else {
            return;
        };
        self.touch(c.ts_ns);
        let Ledger {
            procs,
            totals,
            changes,
            shared,
            ..
        } = self;
        let st = procs
            .entry(c.proc)
            .or_insert_with(|| ProcessState::new(c.proc, c.pid));
        st.touch(c.ts_ns);
        if st.exited() {
            st.anomaly("call_after_exit", || format!("{} at {} ns", c.api, c.ts_ns));
        }
        // Records about memory shared between processes are applied across processes, below.
        let across = match rec {
            Record::Export(_) | Record::Import(_) | Record::ImportClose(_) => true,
            Record::Free(_) => shared.takes_free(st, c),
            _ => false,
        };
        if c.ret != 0 && !matches!(rec, Record::Failed(_)) {
            // A call that returned an error made nothing, whatever the record says.
            st.anomaly("error_in_success_record", || {
                format!("{} ret {} at {} ns", c.api, c.ret, c.ts_ns)
            });
            st.on_failed(c);
            take_changes(changes, &mut st.changes);
            return;
        }
        let phase = st.classifier.phase;
        match rec {
            Record::Alloc(_) => st.on_alloc(totals, c),
            Record::Free(_) if !across => st.on_free(totals, c),
            Record::Failed(_) => st.on_failed(c),
            Record::VmmCreate(_) => st.on_vmm_create(totals, c),
            Record::VmmRelease(_) => st.on_vmm_release(totals, c),
            Record::VmmMap(_) => st.on_vmm_map(totals, c),
            Record::VmmUnmap(_) => st.on_vmm_unmap(totals, c),
            Record::Reserve(_) => st.on_reserve(c),
            Record::Unreserve(_) => st.on_unreserve(c),
            Record::PoolCreate(_) => st.on_pool_create(totals, c),
            Record::PoolDestroy(_) => st.on_pool_destroy(totals, c),
            Record::PoolTrim(_) => st.on_pool_trim(totals, c),
            Record::PoolAttr(_) => st.on_pool_attr(totals, c),
            Record::Sync(_) => st.on_sync(totals),
            Record::GraphAllocNode(_) => st.on_graph_alloc_node(c),
            Record::GraphFreeNode(_) => st.on_graph_free_node(c),
            Record::GraphInstantiate(_) => st.on_graph_instantiate(c),
            Record::GraphLaunch(_) => st.on_graph_launch(totals, c),
            Record::GraphDestroy(_) => st.on_graph_destroy(c),
            Record::GraphMemTrim(_) => st.on_graph_mem_trim(totals, c),
            Record::GraphMemAttr(_) => st.on_graph_mem_attr(totals, c),
            Record::CtxCreate(_) => st.on_ctx_create(c),
            Record::CtxDestroy(_) => st.on_ctx_destroy(totals, c),
            Record::CtxCurrent(_) => st.on_ctx_current(c),
            Record::Copy(_) => st.on_copy(c),
            Record::Retain(_) => st.on_retain(c),
            Record::MulticastCreate(_) => st.on_multicast_create(totals, c),
            Record::MulticastBind(_) => st.on_multicast_bind(totals, c),
            Record::MulticastUnbind(_) => st.on_multicast_unbind(totals, c),
            Record::ArrayMap(_) => st.on_array_map(totals, c),
            Record::ArrayUnmap(_) => st.on_array_unmap(totals, c),
            Record::Unreturned(_) => *st.unreturned.entry(c.api.to_string()).or_default() += 1,
            _ => {}
        }
        take_changes(changes, &mut st.changes);
        let released_imports = !st.imports_released.is_empty();
        if st.classifier.phase != phase {
            changes.push(Change::Phase {
                proc: c.proc,
                phase: st.classifier.phase,
                ts_ns: c.ts_ns,
            });
        }
        if across && c.ret == 0 {
            self.apply_shared(rec, c);
        }
        if released_imports {
            self.imports_released(c.proc, false, c.ts_ns);
        }
        self.shared.forget_ended(&self.changes);
        if matches!(rec, Record::Failed(_)) && c.is_oom() {
            self.on_oom(c);
        }
    }

    /// Records an out-of-memory failure with the live bytes of its process by class and of
    /// every other traced process on the same device, and NVML's figures for that device.
    fn on_oom(&mut self, c: &Call) {
        let Some(st) = self.procs.get(&c.proc) else {
            return;
        };
        let device = st.call_device(c);
        // On the failing device; on every device when it could not be told.
        let on_device = |p: &ProcessState| match device {
            Some(_) => p.devices.get(&device).copied().unwrap_or_default(),
            None => p.usage,
        };
        let others = self
            .procs
            .values()
            .filter(|p| p.proc != c.proc && !p.exited())
            .map(|p| {
                let u = on_device(p);
                OomNeighbour {
                    proc: p.proc,
                    pid: p.pid,
                    comm: p.comm().to_owned(),
                    device_bytes: u.device_bytes,
                    pool_held_bytes: u.pool_held_bytes,
                }
            })
            .filter(|o| o.device_bytes + o.pool_held_bytes > 0)
            .collect();
        let nvml_index = device.and_then(|d| self.nvml_index_of(st, d));
        let oom = Oom {
            ts_ns: c.ts_ns,
            tid: c.tid,
            api: c.api.to_string(),
            ret: c.ret,
            requested_bytes: c.bytes,
            stack: c.stack,
            device,
            nvml_index,
            live_by_class: st.classes_on(device).to_map(),
            device_bytes: on_device(st).device_and_pool_bytes(),
            others,
            nvml: nvml_index
                .and_then(|i| nvml_at(&self.nvml, i, st.pid, c.proc))
                .or_else(|| device.and_then(|d| self.nvml_at_oom.get(&d)).cloned()),
            attached: st.running_before,
        };
        self.changes.push(Change::Oom {
            proc: c.proc,
            oom: Box::new(oom.clone()),
        });
        if let Some(st) = self.procs.get_mut(&c.proc) {
            st.note_oom(oom);
        }
    }

    /// The latest NVML figures for a device (by CUDA ordinal): out-of-memory records made
    /// from now on carry them when the trace has no NVML sample of that GPU. Fed by whoever
    /// polls NVML outside the record stream.
    pub fn set_nvml_context(&mut self, device: i32, at: NvmlAtOom) {
        self.nvml_at_oom.insert(device, at);
    }

    /// The NVML index of CUDA device `ordinal` as process `proc` numbers it (through its
    /// `CUDA_VISIBLE_DEVICES` and the GPUs' UUIDs), when it can be told. The one place a
    /// CUDA ordinal becomes an NVML device.
    pub fn nvml_index(&self, proc: u32, ordinal: i32) -> Option<u32> {
        match self.procs.get(&proc) {
            Some(st) => self.nvml_index_of(st, ordinal),
            None => nvml::nvml_index(ordinal, None, self.nvml_gpus()),
        }
    }

    fn nvml_index_of(&self, st: &ProcessState, ordinal: i32) -> Option<u32> {
        let visible = st
            .info
            .as_ref()
            .and_then(|p| p.cuda_visible_devices.as_deref());
        nvml::nvml_index(ordinal, visible, self.nvml_gpus())
    }

    /// The GPUs NVML listed in the header (none when it did not).
    fn nvml_gpus(&self) -> &[crate::trace::GpuInfo] {
        self.nvml.info().map(|i| i.gpus.as_slice()).unwrap_or(&[])
    }

    /// Live bytes by class, every running process together.
    pub fn classes(&self) -> ClassBytes {
        let mut all = ClassBytes::default();
        for p in self.procs.values() {
            all.merge(&p.classes());
        }
        all
    }

    fn proc_mut(&mut self, proc: u32, pid: u32) -> &mut ProcessState {
        self.procs
            .entry(proc)
            .or_insert_with(|| ProcessState::new(proc, pid))
    }

    fn touch(&mut self, ts_ns: u64) {
        self.first_ts_ns.get_or_insert(ts_ns);
        self.last_ts_ns = Some(self.last_ts_ns.map_or(ts_ns, |t| t.max(ts_ns)));
    }

    /// Every process seen, by `process` record id.
    pub fn processes(&self) -> impl Iterator<Item = &ProcessState> + '_ {
        self.procs.values()
    }

    /// One process by its `process` record id.
    pub fn process(&self, proc: u32) -> Option<&ProcessState> {
        self.procs.get(&proc)
    }

    /// The allocations a process holds now (none after its exit).
    pub fn live_allocations(&self, proc: u32) -> impl Iterator<Item = &LiveAllocation> + '_ {
        self.procs
            .get(&proc)
            .into_iter()
            .flat_map(|p| p.live_allocations())
    }

    /// Machine-wide live bytes and peaks, all processes together.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// A stack by id, once its `stack` record was applied.
    pub fn stack(&self, id: u32) -> Option<&Stack> {
        self.stacks.get(&id).map(|s| &**s)
    }

    /// Events lost in the kernel, summed over `lost` records.
    pub fn lost_events(&self) -> u64 {
        self.lost_events
    }

    /// Stacks that could not be captured, summed over `lost` records.
    pub fn stack_failed(&self) -> u64 {
        self.stack_failed
    }

    /// NVML: the header's facts, the latest sample, and the reconciliations.
    pub fn nvml(&self) -> &NvmlLedger {
        &self.nvml
    }

    /// First and last timestamp seen in calls, exits and loss records.
    pub fn time_span(&self) -> Option<(u64, u64)> {
        self.first_ts_ns.zip(self.last_ts_ns)
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s start time (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// Whether a process that started `start_ticks` after boot was already running when the
/// recording started (`start_monotonic_ns`; the two clocks agree on a machine that never
/// slept). One tick of doubt counts as not before.
fn started_before(start_ticks: Option<u64>, start_monotonic_ns: u64) -> bool {
    let Some(ticks) = start_ticks else {
        return false;
    };
    let tick_ns = 1_000_000_000 / USER_HZ;
    ticks.saturating_add(1).saturating_mul(tick_ns) < start_monotonic_ns
}

/// The one CUDA device a process can see, when it can see one only: its
/// `CUDA_VISIBLE_DEVICES` names one device, or it is unset and NVML lists one GPU (`gpus`).
fn sole_device(gpus: usize, visible: Option<&str>) -> Option<i32> {
    let one = match visible {
        Some(v) => v.split(',').filter(|d| !d.trim().is_empty()).count() == 1,
        None => gpus == 1,
    };
    one.then_some(0)
}

/// What the latest NVML sample said about the GPU of NVML index `index`, and about process
/// `pid` (record id `proc`) on it.
fn nvml_at(nvml: &NvmlLedger, index: u32, pid: u32, proc: u32) -> Option<NvmlAtOom> {
    let sample = nvml.latest()?;
    let g = sample.gpus.iter().find(|g| g.index == index)?;
    Some(NvmlAtOom {
        ts_ns: sample.ts_ns,
        free_bytes: g.free_bytes,
        used_bytes: g.used_bytes,
        total_bytes: g.total_bytes,
        traced_bytes: nvml
            .gpus()
            .iter()
            .find(|r| r.index == index)
            .map(|r| r.traced_bytes),
        process_used_bytes: g
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .and_then(|p| p.used_bytes),
        process_traced_bytes: nvml
            .process(proc)
            .map(|p| &p.latest)
            .filter(|r| r.ts_ns == sample.ts_ns)
            .and_then(|r| r.devices.iter().find(|d| d.nvml_index == Some(index)))
            .map(|d| d.traced_bytes),
    })
}
