//! What the Ledger reports about a process: live allocations, findings, out-of-memory
//! failures, counters, anomalies and the exit snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ledger::classify::{self, ClassBytes, Phase};
use crate::ledger::usage::Usage;
use crate::trace::{ApiName, Mem};

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
    pub api: ApiName,
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
    /// Its owner freed it while another process still mapped it: the driver keeps the
    /// memory until the last mapping closes, and so does the Ledger.
    pub kept_by_importers: bool,
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

    /// Whether destroying the context it was made in frees it (`cuCtxDestroy*`, the primary
    /// context's last `cuDevicePrimaryCtxRelease*`, `cuDevicePrimaryCtxReset*`).
    ///
    /// The driver API reference of `cuCtxDestroy` names what goes with a context: arrays and
    /// mipmapped arrays, and memory from `cuMemAlloc`, `cuMemAllocPitch`, `cuMemAllocHost`
    /// (and so `cuMemHostAlloc`, the same allocation with flags) and `cuMemAllocManaged`. It
    /// also says that memory from `cuMemCreate`, `cuMemAllocAsync` and
    /// `cuMemAllocFromPoolAsync` is "not associated with any CUDA context": pools belong to
    /// a device, so stream-ordered memory (from the default or a created pool, of device,
    /// host or managed memory) stays, as VMM memory does. Registered host memory
    /// (`cuMemHostRegister`) is not named either way; it is taken to go with its context.
    /// See docs/classification.md, "What a context's destruction frees".
    ///
    /// Graph memory (`cuGraphAddMemAllocNode`) comes from the device's graph memory pool,
    /// which belongs to the device as stream-ordered pools do: it stays too.
    pub fn freed_with_context(&self) -> bool {
        let stream_ordered = self.mem == Mem::DeviceAsync || self.pool.is_some();
        let vmm = matches!(self.mem, Mem::VmmDevice | Mem::VmmHost);
        !stream_ordered && !vmm && self.mem != Mem::Graph
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
    #[serde(rename = "stack_id")]
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
    /// Device plus pool-held bytes of every traced process on this GPU when the sample was
    /// taken, when the trace's own sample is the source: what the traced processes took
    /// since the sample is not in NVML's free figure yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traced_bytes: Option<u64>,
    /// NVML's figure for the failing process on this GPU at the sample, when NVML listed it
    /// with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_used_bytes: Option<u64>,
    /// The failing process's device plus pool-held bytes on this GPU when the sample was
    /// taken: what NVML's per-process figure is to be set against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_traced_bytes: Option<u64>,
}

impl NvmlAtOom {
    /// NVML's free bytes, less what the traced processes took on this GPU since the sample
    /// (`traced_now`: their device plus pool-held bytes at the failure): the free memory at
    /// the failure as far as is known. A sample taken before a burst of allocations would
    /// otherwise show memory that was no longer free.
    pub fn free_at_failure(&self, traced_now: u64) -> Option<u64> {
        let free = self.free_bytes?;
        let since = traced_now.saturating_sub(self.traced_bytes.unwrap_or(traced_now));
        Some(free.saturating_sub(since))
    }

    /// Bytes the traced processes took on this GPU since the sample.
    pub fn taken_since(&self, traced_now: u64) -> u64 {
        traced_now.saturating_sub(self.traced_bytes.unwrap_or(traced_now))
    }
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
    #[serde(rename = "stack_id")]
    pub stack: Option<u32>,
    /// The device asked (CUDA ordinal), when it could be told.
    pub device: Option<i32>,
    /// That device's NVML index, when it could be told.
    pub nvml_index: Option<u32>,
    /// The process's live GPU bytes by class on that device (every device when it could
    /// not be told), pool-held included, host memory not; every class, zeros included. Sums
    /// to `device_bytes`.
    pub live_by_class: BTreeMap<classify::Class, u64>,
    /// The process's device plus pool-held bytes on that device (all devices when it could
    /// not be told).
    pub device_bytes: u64,
    /// The other traced processes on the same device.
    pub others: Vec<OomNeighbour>,
    /// The GPU's NVML figures at the nearest sample, when NVML was sampled.
    pub nvml: Option<NvmlAtOom>,
    /// The process was already running when the recording started (`record -p`, or a
    /// machine-wide recording): what it allocated before is not in `device_bytes`; NVML's per-process figure (`nvml.process_used_bytes`)
    /// counts it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
}

impl Oom {
    /// What NVML counted for this process on the device beyond what was traced: memory
    /// allocated before tracing began (an attached process) or outside the hooked entry
    /// points (the context itself, libraries' own pools). `None` without NVML's
    /// per-process figure.
    pub fn untraced_bytes(&self) -> Option<u64> {
        let nvml = self.nvml.as_ref()?;
        // NVML's figure is of its sample's moment, set against what was traced then; a
        // process that allocated since would otherwise seem to have nothing untraced.
        Some(
            nvml.process_used_bytes?
                .saturating_sub(nvml.process_traced_bytes.unwrap_or(self.device_bytes)),
        )
    }

    /// Device plus pool-held bytes of every traced process on the failing device at the
    /// failure: what NVML counts as used there.
    pub fn traced_on_device(&self) -> u64 {
        self.others.iter().fold(self.device_bytes, |t, o| {
            t.saturating_add(o.device_bytes)
                .saturating_add(o.pool_held_bytes)
        })
    }

    /// NVML's free bytes less what traced processes took on the device since the sample:
    /// the free memory at the failure, as far as is known.
    pub fn free_at_failure(&self) -> Option<u64> {
        self.nvml.as_ref()?.free_at_failure(self.traced_on_device())
    }
}

/// Calls and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiCount {
    /// Calls.
    pub count: u64,
    /// Bytes allocated or freed by them (for frees: the sizes of the allocations found).
    pub bytes: u64,
}

/// Calls and bytes per entry point. A trace names a handful of entry points millions of
/// times, each by the one text its [`ApiName`] shares: that is found by address before any
/// text is compared.
#[derive(Clone, Debug, Default)]
pub struct ApiCounts(Vec<(ApiName, ApiCount)>);

impl ApiCounts {
    /// Adds `calls` and `bytes` to the counter of entry point `api`.
    pub(crate) fn add(&mut self, api: &str, calls: u64, bytes: u64) {
        let same = |n: &ApiName| std::ptr::eq(n.as_str(), api);
        let i = match self.0.iter().position(|(n, _)| same(n)) {
            Some(i) => i,
            None => match self.0.iter().position(|(n, _)| n.as_str() == api) {
                Some(i) => i,
                None => {
                    self.0.push((ApiName::new(api), ApiCount::default()));
                    self.0.len() - 1
                }
            },
        };
        let c = &mut self.0[i].1;
        c.count += calls;
        c.bytes = c.bytes.saturating_add(bytes);
    }

    /// The counter of entry point `api`.
    pub fn get(&self, api: &str) -> Option<&ApiCount> {
        self.0
            .iter()
            .find(|(n, _)| n.as_str() == api)
            .map(|(_, c)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The counters, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &ApiCount> {
        self.0.iter().map(|(_, c)| c)
    }

    /// The counters by entry point, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ApiCount)> {
        self.0.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// The counters by entry point, in the order of the names.
    pub fn to_map(&self) -> BTreeMap<String, ApiCount> {
        self.iter().map(|(n, c)| (n.to_owned(), *c)).collect()
    }
}

impl std::ops::Index<&str> for ApiCounts {
    type Output = ApiCount;

    /// The counter of entry point `api`; panics when it has none.
    fn index(&self, api: &str) -> &ApiCount {
        self.get(api)
            .unwrap_or_else(|| panic!("no calls of {api} are counted"))
    }
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
