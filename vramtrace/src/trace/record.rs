//! The records of a trace file: one JSON object per line, tagged by `type`.
//!
//! These types are the one vocabulary of the project: the converter turns raw probe events
//! into them, the writer serializes them, the reader parses them back, and the Ledger consumes
//! them, live and on replay alike. `docs/trace-format.md` documents every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::name::ApiName;

/// Name written in every header's `format` field.
pub const FORMAT_NAME: &str = "vramtrace";
/// Major version: readers refuse any other. Bumped on incompatible changes.
pub const FORMAT_MAJOR: u32 = 1;
/// Minor version: additions that older readers may ignore.
pub const FORMAT_MINOR: u32 = 9;

/// Declares [`Record`] and everything that lists its types, from one list: its variants
/// (`before` and `after` the calls, which all carry a [`Call`]), each with the `type` it is
/// written with, which must be serde's snake_case name of the variant (a test holds it to
/// that). A new record type is added here once and is then known to every match.
macro_rules! records {
    (
        before { $($(#[$bdoc:meta])* $before:ident($bty:ty) = $btag:literal,)* }
        calls { $($(#[$cdoc:meta])* $call:ident = $ctag:literal,)* }
        after { $($(#[$adoc:meta])* $after:ident($aty:ty) = $atag:literal,)* }
    ) => {
        /// One line of a trace.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Record {
            $($(#[$bdoc])* $before($bty),)*
            $($(#[$cdoc])* $call(Call),)*
            $($(#[$adoc])* $after($aty),)*
        }

        /// The record types in declaration order: their discriminants are the indices into
        /// [`RECORD_TYPES`].
        #[derive(Clone, Copy)]
        enum RecordType {
            $($before,)*
            $($call,)*
            $($after,)*
        }

        /// The `type` tags, in declaration order.
        const TAGS: &[&str] = &[$(tag_str($btag),)* $(tag_str($ctag),)* $(tag_str($atag),)*];

        /// Every `type` that [`Record::kind`] returns, in declaration order.
        pub const RECORD_TYPES: [&str; TAGS.len()] = match TAGS.first_chunk() {
            Some(all) => *all,
            None => unreachable!(),
        };

        impl Record {
            /// The `type` tag of this record, as written in the file.
            pub fn kind(&self) -> &'static str {
                RECORD_TYPES[self.type_index()]
            }

            /// The position of the record's type in [`RECORD_TYPES`].
            #[inline(always)]
            pub(crate) fn type_index(&self) -> usize {
                let ty = match self {
                    $(Record::$before(_) => RecordType::$before,)*
                    $(Record::$call(_) => RecordType::$call,)*
                    $(Record::$after(_) => RecordType::$after,)*
                };
                ty as usize
            }

            /// The driver call this record describes, if it is one.
            pub fn call(&self) -> Option<&Call> {
                match self {
                    $(Record::$call(c))|* => Some(c),
                    _ => None,
                }
            }

            /// [`Record::call`], to change it.
            pub fn call_mut(&mut self) -> Option<&mut Call> {
                match self {
                    $(Record::$call(c))|* => Some(c),
                    _ => None,
                }
            }

            /// The record a call line of type `tag` is: `None` for the types that are not
            /// calls.
            pub(crate) fn call_kind(tag: &[u8]) -> Option<fn(Call) -> Record> {
                Some(match tag {
                    $($ctag => Record::$call,)*
                    _ => return None,
                })
            }

            /// The record of type `tag` with an empty call, to be filled where it lies:
            /// `None` for the types that are not calls.
            #[inline(always)]
            pub(crate) fn empty_call(tag: &[u8]) -> Option<Record> {
                Some(match tag {
                    $($ctag => Record::$call(Call::default()),)*
                    _ => return None,
                })
            }
        }
    };
}

/// A `type` tag as text, at compile time.
const fn tag_str(tag: &'static [u8]) -> &'static str {
    match std::str::from_utf8(tag) {
        Ok(s) => s,
        Err(_) => panic!("a record type is ASCII"),
    }
}

records! {
    before {
        /// First line: what recorded this, where, and against which driver.
        Header(Box<Header>) = b"header",
        /// A traced process, written once before its first event.
        Process(Process) = b"process",
        /// A call stack, written once before the first event that refers to it.
        Stack(Stack) = b"stack",
    }
    calls {
        /// Memory was allocated (device, pitched, async, array, managed, pinned, registered).
        Alloc = b"alloc",
        /// Memory was freed (to the GPU, to the host, or into a stream-ordered pool).
        Free = b"free",
        /// A driver call returned an error. Never an allocation.
        Failed = b"failed",
        /// `cuMemCreate`: physical memory behind a VMM handle.
        VmmCreate = b"vmm_create",
        /// `cuMemRelease`: a VMM handle released (memory goes once it is also unmapped).
        VmmRelease = b"vmm_release",
        /// `cuMemMap`: a VMM handle mapped into a reserved range.
        VmmMap = b"vmm_map",
        /// `cuMemUnmap`.
        VmmUnmap = b"vmm_unmap",
        /// `cuMemAddressReserve`: address space, not memory.
        Reserve = b"reserve",
        /// `cuMemAddressFree`.
        Unreserve = b"unreserve",
        /// `cuMemPoolCreate`, `cuDeviceGetDefaultMemPool`, ...: a pool became known (since 1.6
        /// also `cuMemPoolImportFromShareableHandle`, another process's pool).
        PoolCreate = b"pool_create",
        /// `cuMemPoolDestroy`.
        PoolDestroy = b"pool_destroy",
        /// `cuMemPoolTrimTo`.
        PoolTrim = b"pool_trim",
        /// `cuMemPoolSetAttribute`, `cuMemPoolGetAttribute`: one attribute of a pool and its
        /// value. Added in format 1.4.
        PoolAttr = b"pool_attr",
        /// `cuCtxSynchronize`, `cuStreamSynchronize*`, `cuEventSynchronize`: pools give back
        /// what they hold above their release threshold. Added in format 1.4.
        Sync = b"sync",
        /// `cuGraphAddMemAllocNode`: a graph's alloc node, its address fixed now, its memory made
        /// by each launch that runs it (`mem` `graph`, `graph`, `addr`, `bytes`, `device`).
        /// Added in format 1.6.
        GraphAllocNode = b"graph_alloc_node",
        /// `cuGraphAddMemFreeNode`: a graph's free node of `addr`. Added in format 1.6.
        GraphFreeNode = b"graph_free_node",
        /// `cuGraphInstantiate*`: the exec `handle` made from `graph`. Added in format 1.6.
        GraphInstantiate = b"graph_instantiate",
        /// `cuGraphLaunch*`: the exec `handle` runs its alloc and free nodes. Added in format 1.6.
        GraphLaunch = b"graph_launch",
        /// `cuGraphDestroy` (`graph`) or `cuGraphExecDestroy` (`handle`). Added in format 1.6.
        GraphDestroy = b"graph_destroy",
        /// `cuDeviceGraphMemTrim`: the `device`'s graph pool gives back what is not in use.
        /// Added in format 1.6.
        GraphMemTrim = b"graph_mem_trim",
        /// `cuDeviceGetGraphMemAttribute`, `cuDeviceSetGraphMemAttribute`: one of the driver's
        /// graph-memory figures of `device` (`attr`, `value`). Added in format 1.6.
        GraphMemAttr = b"graph_mem_attr",
        /// `cuCtxCreate*`, `cuDevicePrimaryCtxRetain`: a context on a device.
        CtxCreate = b"ctx_create",
        /// `cuCtxDestroy*`, `cuDevicePrimaryCtxRelease*`.
        CtxDestroy = b"ctx_destroy",
        /// `cuCtxSetCurrent`, `cuCtxPushCurrent*`, `cuCtxPopCurrent*`: the thread's current
        /// context.
        CtxCurrent = b"ctx_current",
        /// Host-to-device copy: the destination range only.
        Copy = b"copy",
        /// Memory made shareable with another process: `cuIpcGetMemHandle` and
        /// `cuMemPoolExportPointer` (`addr`, and `share`, the 64 bytes the importer is given),
        /// `cuMemExportToShareableHandle` (`handle`, `handle_type`, `os_handle`),
        /// `cuMemPoolExportToShareableHandle` (`pool`, `handle_type`, `os_handle`). Added in 1.6.
        Export = b"export",
        /// Memory of another process mapped into this one: `cuIpcOpenMemHandle*` and
        /// `cuMemPoolImportPointer` (`addr`, `share`), `cuMemImportFromShareableHandle`
        /// (`handle`, `handle_type`, `os_handle`; mapped by a later `vmm_map`). Mapped, not
        /// owned. Added in 1.6.
        Import = b"import",
        /// `cuIpcCloseMemHandle`: an IPC mapping closed (`addr`). Added in 1.6.
        ImportClose = b"import_close",
        /// `cuMemRetainAllocationHandle`: one more reference to the VMM handle (`handle`) mapped
        /// at `addr`, released by `cuMemRelease`. Added in 1.6.
        Retain = b"retain",
        /// `cuMulticastCreate`: a multicast object (`handle`) of `bytes` for a team of `count`
        /// devices, exportable as `handle_type`. It has no memory of its own: what is bound to it
        /// is; it is mapped (`vmm_map`) and released (`vmm_release`) as a VMM handle. Added in 1.8.
        MulticastCreate = b"multicast_create",
        /// `cuMulticastBindMem*` (`bound`: the VMM handle and the offset into it) or
        /// `cuMulticastBindAddr*` (`addr`: where that memory is mapped): `bytes` of memory bound
        /// at `offset` of the multicast object `handle`, for `device` (`_v2`; otherwise the
        /// memory's own). The binding keeps the memory until it is unbound. Added in 1.8.
        MulticastBind = b"multicast_bind",
        /// `cuMulticastUnbind`: the binding at `offset` of `handle` for `device`, of `bytes`,
        /// undone. Added in 1.8.
        MulticastUnbind = b"multicast_unbind",
        /// `cuMemMapArrayAsync*`: the VMM memory `bound` (its handle and the offset into it)
        /// mapped into `region` of the sparse or deferred-mapping array (or mipmapped array)
        /// `handle`; it keeps that memory until unmapped. Of a call with `count` operations, the
        /// first. Added in 1.8.
        ArrayMap = b"array_map",
        /// `cuMemMapArrayAsync*`: what is mapped inside `region` of the array `handle` unmapped.
        /// Of a call with `count` operations, the first. Added in 1.8.
        ArrayUnmap = b"array_unmap",
        /// A driver call that never returned: its thread ended inside it (the process was killed,
        /// a signal sent at the call ended it), or the thread entered the same entry point again
        /// first. What it was asked for is known; what it made, if anything, is not. Its `ts_ns`
        /// is when that was seen, and `ret` is 0 without meaning. Never an allocation. Added in
        /// format 1.1.
        Unreturned = b"unreturned",
    }
    after {
        /// A traced process ended: everything it held is gone.
        Exit(Exit) = b"exit",
        /// Events that the kernel side could not deliver, counted since the last such record.
        Lost(Lost) = b"lost",
        /// What NVML reported for every GPU at one instant.
        Nvml(NvmlSample) = b"nvml",
        /// Last line: counts and the digest of every byte before it.
        Footer(Footer) = b"footer",
    }
}

impl Record {
    /// The time of the record on the trace's clock, for those that have one.
    pub fn ts_ns(&self) -> Option<u64> {
        match self {
            Record::Exit(e) => Some(e.ts_ns),
            Record::Lost(l) => Some(l.ts_ns),
            Record::Nvml(n) => Some(n.ts_ns),
            _ => self.call().map(|c| c.ts_ns),
        }
    }

    /// The `process` record id of the process a call or an exit is about.
    pub fn proc(&self) -> Option<u32> {
        match self {
            Record::Exit(e) => Some(e.proc),
            _ => self.call().map(|c| c.proc),
        }
    }

    /// The process the record is about, for those about one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Record::Process(p) => Some(p.pid),
            Record::Exit(e) => Some(e.pid),
            _ => self.call().map(|c| c.pid),
        }
    }
}

/// The trace's first line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// `"MAJOR.MINOR"`.
    pub version: String,
    /// vramtrace's version.
    pub tool_version: String,
    /// Host name.
    pub host: String,
    /// `uname -r`.
    pub kernel: String,
    /// The driver libraries the probes were attached to.
    pub libraries: Vec<Library>,
    /// Wall-clock time at the start, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// `CLOCK_MONOTONIC` at the same instant: every `ts_ns` in the trace is on this clock, so
    /// `unix = start_unix_ns + (ts_ns - start_monotonic_ns)`.
    pub start_monotonic_ns: u64,
    /// What was traced: `all`, or the PIDs, or the command.
    pub scope: Scope,
    /// What NVML could tell at the start: versions and GPUs, or why it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvml: Option<NvmlInfo>,
    /// `vram-only` when host-memory allocations were recorded as violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Extra facts that later minor versions add.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// NVML's view of the machine when recording started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmlInfo {
    /// NVML initialized and answered.
    pub available: bool,
    /// Why it is not available (no driver, no GPU, the library missing), when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Driver version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// NVML version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvml_version: Option<String>,
    /// The GPUs, by NVML index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuInfo>,
}

/// One GPU as NVML names it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// `GPU-...` UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// PCI bus id, to match CUDA device ordinals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    /// Total memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
}

/// What NVML reported at one instant. A figure NVML could not give is absent, never 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmlSample {
    /// `CLOCK_MONOTONIC` nanoseconds when the sample was taken.
    pub ts_ns: u64,
    /// One entry per GPU.
    pub gpus: Vec<GpuSample>,
}

/// One GPU in an NVML sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// NVML index.
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// Reserved by the driver, where NVML reports it (memory info v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_bytes: Option<u64>,
    /// Per process, compute and graphics lists merged by PID (host PIDs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<GpuProcess>,
}

/// A process on a GPU, as NVML sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Host PID.
    pub pid: u32,
    /// Memory NVML attributes to it on this GPU; absent when NVML cannot say (it reports
    /// "not available" in some containers and under MIG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
}

/// A driver library that probes were attached to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Library {
    /// The library's path: on the host; for a copy a traced process maps, the path as the
    /// process names it, followed by ` (mapped by PID N)`; for a copy found inside a
    /// process's root, the path there, followed by ` (in PID N's root)`.
    pub path: String,
    /// GNU build ID, hex, when the library has one.
    pub build_id: Option<String>,
    /// One entry per hooked symbol.
    pub probes: Vec<Probe>,
}

/// One hooked symbol.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Exported symbol, e.g. `cuMemAllocAsync_ptsz`.
    pub symbol: String,
    /// File offset of the symbol.
    pub symbol_offset: u64,
    /// Bytes past the symbol where the probes sit (0: at the symbol).
    pub probe_offset: u64,
}

/// What a recording traced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    /// Every process on the machine.
    pub all: bool,
    /// The PIDs named with `-p`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    /// The command started with `-- CMD`, and its descendants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// A traced process. PIDs are reused; `id` is not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// Id that events refer to in their `proc` field; unique within the trace.
    pub id: u32,
    /// Process id (as the host sees it).
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22), when it could be read.
    pub start_time: Option<u64>,
    /// Parent process id, when known.
    pub ppid: Option<u32>,
    /// Short name (`/proc/PID/comm`), or `"?"` when the process was gone before it was read.
    pub comm: String,
    /// Command line, when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    /// Executable path, when known.
    pub exe: Option<String>,
    /// Container id, when the process runs in one (from its cgroup).
    pub container: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` as the process started with it (`/proc/PID/environ`), when set
    /// and readable: maps its CUDA device ordinals to NVML indices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_visible_devices: Option<String>,
    /// UID of the Kubernetes pod it runs in, from its cgroup, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Name of that pod, when the process's environment says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Namespace of that pod, when its service-account mount or environment says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
}

/// A user call stack, innermost frame first. Frame 0 is the immediate caller of the driver
/// (the return address read at entry); the rest come from the frame-pointer walk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// Id that events refer to in their `stack` field.
    pub id: u32,
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why the stack is incomplete, when it is (the walk failed, frames were cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

/// One frame, normalized at record time so it can be symbolized after the process is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// Virtual address in the process.
    pub addr: u64,
    /// The object file that holds it (path as the process saw it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// GNU build ID of that file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Offset of `addr` in that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Function name, when symbolized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sym: Option<String>,
    /// `file:line`, when debug information had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Why this frame could not be normalized or symbolized. Data, not an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// A frame of the Python interpreter's own stack, not a native one: `file` is the `.py`
    /// source, `sym` the qualified function name (`Model.forward`), `src` `path/file.py:LINE`,
    /// `addr` the code object's address or 0, and no `offset` or `build_id`. Added in
    /// format 1.3.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub python: bool,
    /// A function that the compiler inlined into the frame that follows (the next one out):
    /// `sym` and `src` are its own, `addr`, `file`, `build_id` and `offset` those of the
    /// return address it shares with the frames around it. Added in format 1.4.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

/// Where memory lives and how it was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mem {
    /// Device memory (`cuMemAlloc*`, `cuMemAllocPitch*`).
    Device,
    /// Stream-ordered device memory (`cuMemAllocAsync*`, `cuMemAllocFromPoolAsync*`).
    DeviceAsync,
    /// A CUDA array (`cuArrayCreate*`, `cuArray3DCreate*`, `cuMipmappedArrayCreate`).
    Array,
    /// VMM physical memory on a device (`cuMemCreate` with a device location).
    VmmDevice,
    /// VMM physical memory in host RAM (`cuMemCreate` with a host location).
    VmmHost,
    /// Managed (unified) memory: may live in host RAM.
    Managed,
    /// Pinned host memory (`cuMemAllocHost*`, `cuMemHostAlloc`).
    HostPinned,
    /// Host memory registered with the driver (`cuMemHostRegister*`).
    HostRegistered,
    /// Device memory of a CUDA graph's alloc node (`cuGraphAddMemAllocNode`), live from the
    /// launch that runs the node until its free runs. Added in format 1.6.
    Graph,
}

impl Mem {
    /// The name used in traces, reports and the live view: `device`, `device_async`,
    /// `array`, `vmm_device`, `vmm_host`, `managed`, `host_pinned`, `host_registered`, `graph`.
    pub fn name(self) -> &'static str {
        match self {
            Mem::Device => "device",
            Mem::DeviceAsync => "device_async",
            Mem::Array => "array",
            Mem::VmmDevice => "vmm_device",
            Mem::VmmHost => "vmm_host",
            Mem::Managed => "managed",
            Mem::HostPinned => "host_pinned",
            Mem::HostRegistered => "host_registered",
            Mem::Graph => "graph",
        }
    }

    /// True when the memory lives in host RAM (or may, for managed memory).
    pub fn is_host(self) -> bool {
        matches!(
            self,
            Mem::VmmHost | Mem::Managed | Mem::HostPinned | Mem::HostRegistered
        )
    }
}

/// A driver call. Which optional fields are present depends on the record's `type` and the
/// entry point; an absent field means "not known", never zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The exported symbol that was called, e.g. `cuMemAlloc_v2`. Shared: a trace names a
    /// handful of entry points millions of times.
    pub api: ApiName,
    /// The `id` of the calling process's `process` record.
    pub proc: u32,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `CLOCK_MONOTONIC` nanoseconds at return.
    pub ts_ns: u64,
    /// Nanoseconds spent in the driver.
    #[serde(default)]
    pub dur_ns: u64,
    /// The driver's return code (`CUresult`).
    pub ret: i32,
    /// Bytes allocated, freed, mapped, copied or requested (pitched: pitch × height).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Device or host address (for VMM: the virtual address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    /// Where the memory lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Mem>,
    /// A handle: VMM allocation handle, CUDA array, memory pool or context, by entry point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The device ordinal, when the call names it or the thread's context tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<i32>,
    /// The memory pool, for pool calls and `cuMemAllocFromPoolAsync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<u64>,
    /// The stream, for stream-ordered calls and async copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
    /// Offset into the VMM handle (`cuMemMap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Flags argument as passed (host-alloc flags, managed attach flags, VMM flags); a 3D
    /// array descriptor's `Flags` (0x40 sparse, 0x80 deferred mapping: no memory of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    /// Row pitch of a pitched allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitch: Option<u64>,
    /// Id of the call's `stack` record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<u32>,
    /// Fields the probe could not read (a faulting pointer): their names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// The signal the probe sent to the calling thread at this call (vram-only policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signalled: Option<u32>,
    /// What a copy's source is, as its arguments say; absent for the host-to-device entry
    /// points, whose signature says it (`cuMemcpyHtoD*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_mem: Option<CopySrc>,
    /// The source address of a copy (`src_mem` `host`, `device` or `unified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<u64>,
    /// The pool attribute a `pool_attr` record sets or gets (`CUmemPool_attribute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<u32>,
    /// The attribute's value: what was set, or what the driver answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// The green context (`CUgreenCtx`) that `cuGreenCtxCreate` made, `cuCtxFromGreenCtx`
    /// converted or `cuGreenCtxDestroy` destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub green: Option<u64>,
    /// The 64 bytes that identify shared memory across processes, in hex: the
    /// `CUipcMemHandle` of `cuIpcGetMemHandle` / `cuIpcOpenMemHandle*`, the
    /// `CUmemPoolPtrExportData` of `cuMemPoolExportPointer` / `cuMemPoolImportPointer`. Added
    /// in 1.6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// `CUmemAllocationHandleType` of a shareable handle (1: POSIX file descriptor, 2: Win32,
    /// 4: Win32 KMT, 8: fabric). Added in 1.6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_type: Option<u32>,
    /// The OS handle exported or imported (a file descriptor, or the first 8 bytes of a
    /// fabric handle). Added in 1.6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_handle: Option<u64>,
    /// The CUDA graph (`CUgraph`) a graph record is about. Added in format 1.6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<u64>,
    /// A batch of copies (`cuMemcpyBatchAsync*`, `cuMemcpy3DBatchAsync*`): its copies after
    /// the first, which is in `addr`, `src_mem`, `src` and `bytes`, as far as the probe read
    /// them. Added in format 1.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<Box<[BatchCopy]>>,
    /// How many copies the batch had (`count`, `numOps`): more than were read when the probe
    /// read only the first; the devices of a multicast object's team. Added in format 1.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The memory a `cuMulticastBindMem*` binds: its VMM handle and the offset into it.
    /// Added in format 1.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<Box<Bound>>,
    /// Which open file the POSIX descriptor `os_handle` of a shareable-handle export or import
    /// is: two records of one trace with the same `file` name the same open file (a
    /// descriptor passed from one process to another). A keyed hash of the kernel's address,
    /// meaningless across traces. Added in format 1.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<u64>,
    /// The region of a sparse array that an `array_map` or `array_unmap` is about. Added in
    /// format 1.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Box<ArrayRegion>>,
}

/// A region of a sparse CUDA array (`CUarrayMapInfo::subresource`): of a mip level, in
/// elements, or of the mip tail, in bytes along the first axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArrayRegion {
    /// The mip tail (`CU_ARRAY_SPARSE_SUBRESOURCE_TYPE_MIPTAIL`), not a mip level.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub miptail: bool,
    /// The mip level (0 for an array that is not mipmapped, and for the mip tail).
    pub level: u32,
    /// The layer of a layered array (else 0).
    pub layer: u32,
    /// Where it starts: x, y, z in elements; the mip tail's byte offset in `offset[0]`.
    pub offset: [u64; 3],
    /// How far it goes: width, height, depth in elements; the mip tail's bytes in
    /// `extent[0]`.
    pub extent: [u64; 3],
}

impl ArrayRegion {
    /// The first and last regions in their order: the bounds of one array's regions.
    pub const MIN: ArrayRegion = ArrayRegion {
        miptail: false,
        level: 0,
        layer: 0,
        offset: [0; 3],
        extent: [0; 3],
    };
    pub const MAX: ArrayRegion = ArrayRegion {
        miptail: true,
        level: u32::MAX,
        layer: u32::MAX,
        offset: [u64::MAX; 3],
        extent: [u64::MAX; 3],
    };

    /// Whether this region lies inside `outer` (same kind, level and layer).
    pub fn inside(&self, outer: &ArrayRegion) -> bool {
        self.miptail == outer.miptail
            && self.level == outer.level
            && self.layer == outer.layer
            && (0..3).all(|i| {
                self.offset[i] >= outer.offset[i]
                    && self.offset[i].saturating_add(self.extent[i])
                        <= outer.offset[i].saturating_add(outer.extent[i])
            })
    }
}

/// VMM memory bound to a multicast object by its handle (`cuMulticastBindMem*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    /// The `cuMemCreate` handle.
    pub handle: u64,
    /// Where in it the bound range starts.
    pub offset: u64,
}

/// One copy of a batch after its first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCopy {
    /// The destination's address; absent when it is not one (an array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    /// What it reads from.
    pub src_mem: CopySrc,
    /// The source's address, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<u64>,
    /// Bytes copied.
    pub bytes: u64,
}

/// What a copy reads from, as its arguments say (`CUmemorytype` of `CUDA_MEMCPY2D/3D`, or
/// unified addressing for `cuMemcpy`, `cuMemcpyAsync`). The Ledger decides from it, and for
/// `unified` from what it knows of the address, whether the copy fills from host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopySrc {
    /// Host memory (`CU_MEMORYTYPE_HOST`).
    Host,
    /// Device memory (`CU_MEMORYTYPE_DEVICE`).
    Device,
    /// A CUDA array (`CU_MEMORYTYPE_ARRAY`): device memory.
    Array,
    /// An address in the unified address space (`CU_MEMORYTYPE_UNIFIED`, `cuMemcpy*`):
    /// device or host, as the Ledger knows the address.
    Unified,
}

impl Call {
    /// Whether this call, as a failure, ran out of memory: an allocating entry point
    /// (`cuMemCreate` included) that returned `CUDA_ERROR_OUT_OF_MEMORY`. Other failures are
    /// not: PyTorch's expandable segments, for one, try a `cuMemCreate` that driver 580
    /// refuses with `CUDA_ERROR_NOT_PERMITTED` before any memory is used. The one rule: the
    /// Ledger decides with it, and everything else reads the Ledger's OOMs.
    pub fn is_oom(&self) -> bool {
        let allocates = self.api.starts_with("cuMemCreate") || self.mem.is_some();
        allocates && self.ret == crate::api::CUDA_ERROR_OUT_OF_MEMORY
    }
}

/// A traced process ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// The `id` of the process record.
    pub proc: u32,
    /// Process id.
    pub pid: u32,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ts_ns: u64,
}

/// Loss counters, as deltas since the previous `lost` record: the kernel side's, and the
/// converter's for what reached user space and could not become a record. The fields after
/// `stack_failed` came with format 1.1; they are left out when zero and read as zero when
/// absent, so traces of either version read the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// `CLOCK_MONOTONIC` nanoseconds when the counters were read.
    pub ts_ns: u64,
    /// Events dropped because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Calls whose entry could not be remembered (the in-flight map was full).
    pub entry_map_full: u64,
    /// Process exits dropped because the ring buffer was full.
    pub exit_dropped: u64,
    /// Stacks that could not be captured (their events were delivered without a stack).
    pub stack_failed: u64,
    /// Calls whose return came without their entry: the process became traced, or the probes
    /// were attached, while the call was in flight.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub return_without_entry: u64,
    /// Children (processes or threads) of traced processes that the full PID filter could
    /// not take: such a process is not traced at all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub filter_map_full: u64,
    /// Events of processes that the kernel side's map of seen processes had no room for:
    /// their exits are not reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seen_map_full: u64,
    /// Calls by threads that the kernel side's map of calling threads had no room for: one
    /// of them that never returns is not reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub thread_map_full: u64,
    /// Calls with an API id outside the table of hooked symbols, dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_api: u64,
    /// Ring-buffer items that could not be decoded, dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub undecodable: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Lost {
    /// Losses: events that never became records, and the failures that leave facts out of
    /// the trace (an untraced child, an unreported exit, an unreported unfinished call). The
    /// footer's `lost_events` is their sum over the trace. Stacks are apart: their events
    /// were delivered.
    pub fn events(&self) -> u64 {
        self.kinds().map(|(_, n)| n).sum()
    }

    /// Each kind of loss that [`events`](Self::events) sums, named as in the trace, with its
    /// count.
    pub fn kinds(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("ringbuf_full", self.ringbuf_full),
            ("entry_map_full", self.entry_map_full),
            ("exit_dropped", self.exit_dropped),
            ("return_without_entry", self.return_without_entry),
            ("filter_map_full", self.filter_map_full),
            ("seen_map_full", self.seen_map_full),
            ("thread_map_full", self.thread_map_full),
            ("unknown_api", self.unknown_api),
            ("undecodable", self.undecodable),
        ]
        .into_iter()
    }
}

/// The trace's last line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Footer {
    /// `CLOCK_MONOTONIC` nanoseconds at the end.
    pub end_ts_ns: u64,
    /// Lines between header and footer, by `type`.
    pub counts: BTreeMap<String, u64>,
    /// Events that never reached user space (sum over `lost` records).
    pub lost_events: u64,
    /// Stacks that could not be captured.
    pub stack_failed: u64,
    /// Host-memory allocations recorded as violations (`vram-only` policy); absent when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub violations: u64,
    /// Why the recording stopped: `command exited`, `SIGINT`, `SIGTERM`, `duration`,
    /// `live view closed`; absent in traces that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Processes still running when the recording stopped, which go on untraced: neither
    /// their exit nor what they did after is in the trace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untraced_after: Vec<u32>,
    /// Hex SHA-256 of every byte of the file before this line: format 1.8 and older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Hex BLAKE3 of every byte of the file before this line: format 1.9 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}
