//! The postmortem of a trace: every record replayed through the [`Ledger`], summed up per
//! process, rendered as text or serialized as JSON.
//!
//! The input is any iterator of records plus, optionally, what the reader found out about
//! the file ([`ReadStatus`]), so this module does not depend on how the file was read.

mod by_proc;
mod filter;
mod leaks;
pub mod postmortem;
mod render;
mod render_post;
pub mod timeline;
mod window;

#[cfg(test)]
mod agreement_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::api::cuda_error_name;
pub use filter::{Filters, Moment, analyze_file_with};
pub use postmortem::Postmortem;
pub use render::{human_bytes, render_text};

use crate::ledger::{
    Class, DeviceReconciliation, GpuReconciliation, HostFinding, Ledger, LiveAllocation, Oom,
    ProcessState, Usage,
};
use crate::site::Site;
use crate::trace::{Footer, Frame, Header, Integrity, Mem, NvmlInfo, Record};

/// What reading the trace file found, apart from the records themselves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadStatus {
    /// The reader's verdict on the file as a whole.
    pub integrity: Integrity,
    /// Whether the footer's digest matched (`None`: not checked, or no footer).
    pub digest_ok: Option<bool>,
    /// Lines that could not be read: (line number, what was wrong).
    pub problems: Vec<(u64, String)>,
    /// What the verdict rests on when it is not [`Integrity::Complete`] and a line says why
    /// (the digest or counts that differ, the lines after the footer): (line, what).
    pub integrity_notes: Vec<(u64, String)>,
    /// The header, when the reader keeps it out of the record stream.
    pub header: Option<Header>,
    /// The footer, when the reader keeps it out of the record stream.
    pub footer: Option<Footer>,
}

/// The summary of one trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `integrity` is complete: kept for readers of older reports.
    pub complete: bool,
    /// Whether the trace is whole: complete, cut short, altered or appended to.
    #[serde(default)]
    pub integrity: Integrity,
    /// Why the verdict is not complete, where a line of the trace says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub integrity_notes: Vec<ReadProblem>,
    /// Whether the footer's digest matched (`None`: not checked).
    pub digest_ok: Option<bool>,
    /// Lines that could not be read (a line that reads but was changed is not one: the
    /// verdict reports it).
    pub problems: Vec<ReadProblem>,
    /// Where and with what the trace was recorded.
    pub header: Option<HeaderSummary>,
    /// Events that never reached user space: allocations or frees may be missing.
    pub lost_events: u64,
    /// Stacks that could not be captured.
    pub stack_failed: u64,
    /// From the start of the recording to its end (or its last event); with `at_ns`, to it.
    pub duration_ns: Option<u64>,
    /// The moment the report describes, when not the end of the recording (`analyze --at`):
    /// a CLOCK_MONOTONIC time like the records' `ts_ns`. Records after it were read, so the
    /// integrity verdict covers the whole file, but not counted; the figures "at exit" are
    /// those at this moment, and a process that exited after it has not exited.
    #[serde(default)]
    pub at_ns: Option<u64>,
    /// Why the recording stopped, as its footer says (`SIGINT`, `command exited`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// The filters the report was narrowed by (`analyze --pid/--gpu/--from/--to`).
    #[serde(default)]
    pub filters: AppliedFilters,
    /// All processes together.
    pub machine: MachineReport,
    /// One entry per traced process (per `process` record: PIDs may repeat).
    pub processes: Vec<ProcessReport>,
    /// Out-of-memory explanations, leak suspects and the timeline.
    #[serde(default)]
    pub postmortem: Postmortem,
    /// What NVML could tell, or why it could not; absent when the trace does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvml: Option<NvmlReport>,
}

/// NVML in a recording: the header's facts and how many samples were taken.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmlReport {
    /// What the header says: available or why not, versions, GPUs.
    #[serde(flatten)]
    pub info: NvmlInfo,
    /// `nvml` records in the trace.
    pub samples: u64,
}

/// A line the reader skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadProblem {
    /// 1-based line number.
    pub line: u64,
    /// What was wrong with it.
    pub message: String,
}

/// The facts of the header that a reader of the report needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderSummary {
    /// Trace format version, `"MAJOR.MINOR"`.
    pub format_version: String,
    /// The vramtrace that recorded it.
    pub tool_version: String,
    /// Host name.
    pub host: String,
    /// Kernel release.
    pub kernel: String,
    /// Wall-clock start, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// `CLOCK_MONOTONIC` at the start: event times are on this clock.
    pub start_monotonic_ns: u64,
    /// The driver libraries the probes were attached to.
    pub libraries: Vec<LibrarySummary>,
}

/// A driver library the probes were attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibrarySummary {
    /// Path as attached.
    pub path: String,
    /// GNU build ID, hex.
    pub build_id: Option<String>,
    /// How many symbols were hooked.
    pub probes: usize,
}

/// All processes together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineReport {
    /// Highest traced device bytes at any instant, all processes together.
    pub peak_device_bytes: u64,
    /// When.
    pub peak_ts_ns: Option<u64>,
    /// Highest device plus pool-held bytes.
    pub peak_device_and_pool_bytes: u64,
    /// Per device.
    pub devices: Vec<DeviceReport>,
    /// Per GPU at the last NVML sample: NVML's used bytes, what was traced, and what else
    /// was on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvml_gpus: Vec<GpuReconciliation>,
}

/// Calls and bytes of one entry point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTotal {
    /// Calls.
    pub count: u64,
    /// Bytes allocated or freed.
    pub bytes: u64,
}

/// Failed calls of one entry point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTotal {
    /// Calls.
    pub count: u64,
    /// Bytes requested, where the call has a size.
    pub bytes: u64,
    /// Calls per `CUresult` code.
    pub rets: BTreeMap<i32, u64>,
}

/// One kind of inconsistent input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyReport {
    /// Occurrences.
    pub count: u64,
    /// The first few.
    pub examples: Vec<String>,
}

/// One device of one process (or of the machine).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Device ordinal; `None` when it could not be told.
    pub device: Option<i32>,
    /// Highest live device bytes (pool-held excluded).
    pub peak_device_bytes: u64,
    /// When.
    pub peak_ts_ns: Option<u64>,
    /// Live device bytes at exit (or at the end of the trace).
    pub device_bytes_at_exit: u64,
    /// Pool-held bytes at exit (or at the end of the trace).
    pub pool_held_bytes_at_exit: u64,
}

/// An allocation still held at exit (or at the end of the trace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAllocation {
    /// Address (VMM: where mapped).
    pub addr: Option<u64>,
    /// Array or VMM handle.
    pub handle: Option<u64>,
    /// Size.
    pub bytes: u64,
    /// Kind of memory.
    pub mem: Mem,
    /// Entry point that made it.
    pub api: String,
    /// When it was made.
    pub ts_ns: u64,
    /// Thread that made it.
    pub tid: u32,
    /// Stack id.
    pub stack: Option<u32>,
    /// Device ordinal.
    pub device: Option<i32>,
    /// Bytes copied into it from the host.
    pub filled_from_host: u64,
    /// Its class (docs/classification.md).
    #[serde(default)]
    pub class: Option<Class>,
    /// The evidence that decided the class.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// The title of its stack's site: the frame in the user's code (`train.py:88 forward`),
    /// or the first named frame outside the driver and the CUDA runtime when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_frame: Option<String>,
}

/// The filters a report was narrowed by, echoed in it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedFilters {
    /// Only these PIDs (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    /// Only this device ordinal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<i32>,
    /// The window's start, seconds after the recording started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_s: Option<f64>,
    /// The window's end, seconds after the recording started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_s: Option<f64>,
    /// What a filter names that the trace does not hold, each with what it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<String>,
}

impl AppliedFilters {
    /// Whether any filter was given.
    pub fn any(&self) -> bool {
        !self.pids.is_empty() || self.gpu.is_some() || self.from_s.is_some() || self.to_s.is_some()
    }
}

/// One traced process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    /// The `process` record id (unique; PIDs are not).
    pub proc: u32,
    /// Process id.
    pub pid: u32,
    /// Short name, `"?"` when unknown.
    pub comm: String,
    /// Command line, when known.
    pub cmdline: Vec<String>,
    /// Its `CUDA_VISIBLE_DEVICES`, when set: how its CUDA device numbers map to NVML's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_visible_devices: Option<String>,
    /// True when the process exited during the trace; false: the `*_at_exit` figures are at
    /// the end of the trace, with the process still running.
    pub exited: bool,
    /// Already running when the recording started (named by `record -p`, or found by a
    /// machine-wide recording): what it allocated before the
    /// recording started is not in the trace (NVML's per-process figure still counts it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// Still running when the recording stopped, as the footer says: it went on untraced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untraced_after: bool,
    /// When it exited, or its last event.
    pub end_ts_ns: Option<u64>,
    /// Highest live device bytes (pool-held excluded).
    pub peak_device_bytes: u64,
    /// When the peak was reached.
    pub peak_ts_ns: Option<u64>,
    /// Highest device plus pool-held bytes.
    pub peak_device_and_pool_bytes: u64,
    /// Highest host bytes (managed, pinned, registered, host VMM).
    pub peak_host_bytes: u64,
    /// Live device bytes at exit.
    pub device_bytes_at_exit: u64,
    /// Live host bytes at exit.
    pub host_bytes_at_exit: u64,
    /// Bytes held in stream-ordered pools at exit.
    pub pool_held_bytes_at_exit: u64,
    /// Allocations live at exit.
    pub live_allocations_at_exit: usize,
    /// The largest of them.
    pub largest_at_exit: Vec<HeldAllocation>,
    /// Successful allocations per entry point.
    pub allocs: BTreeMap<String, ApiTotal>,
    /// Frees per entry point (with the bytes of the allocations they freed).
    pub frees: BTreeMap<String, ApiTotal>,
    /// Every allocation that became live, whatever made it.
    #[serde(default)]
    pub started: ApiTotal,
    /// The allocations that ended, by cause (`free`, `pool_free`, `array_destroy`,
    /// `vmm_release`, `context_destroyed`, `process_exit`, `replaced`): with what is held at
    /// exit, they add up to `started`. A cause with nothing is left out.
    #[serde(default)]
    pub ended: BTreeMap<String, ApiTotal>,
    /// Failed calls per entry point.
    pub failed: BTreeMap<String, FailedTotal>,
    /// All failed calls.
    pub failed_total: u64,
    /// Calls that never returned, per entry point (the thread died in the driver).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unreturned: BTreeMap<String, u64>,
    /// Inconsistent input, per kind.
    pub anomalies: BTreeMap<String, AnomalyReport>,
    /// Per device.
    pub devices: Vec<DeviceReport>,
    /// Traced bytes against NVML's per GPU, at the last sample while the process lived.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvml: Vec<DeviceReconciliation>,
    /// The same at the sample where its traced bytes were highest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvml_at_peak: Vec<DeviceReconciliation>,
    /// Live bytes by class at exit (or at the end of the trace): every class, zeros included.
    #[serde(default)]
    pub classes_at_exit: BTreeMap<Class, u64>,
    /// Bytes by class when device plus pool-held bytes peaked.
    #[serde(default)]
    pub classes_at_peak: BTreeMap<Class, u64>,
    /// Host-memory allocations: findings, violations under the vram-only policy.
    #[serde(default)]
    pub host_fallback: Vec<HostFallbackReport>,
    /// All host-memory allocations, when more were made than listed.
    #[serde(default)]
    pub host_fallback_total: u64,
    /// Requests that failed for want of memory, with what was held then.
    #[serde(default)]
    pub ooms: Vec<OomReport>,
    /// Memory of other processes this one mapped (IPC, pool pointer and shareable-handle
    /// imports): mapped, not owned, never in its bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<ImportReport>,
    /// Imported mappings in all, when more were made than listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub imports_total: u64,
    /// CUDA graph memory: each device's graph pool at exit (or at the end of the trace), with
    /// the driver's own figures where the process asked for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graph_pools: Vec<GraphPoolReport>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An imported mapping, as the Ledger recorded it, and where it came from in words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// The mapping.
    #[serde(flatten)]
    pub mapping: crate::ledger::ImportedMapping,
    /// `mapped from PID N`, `from an untraced process`, or for a shareable handle `from
    /// another process, by shareable handle (owner not identified)`.
    pub from: String,
}

/// A device's CUDA graph memory pool, as the Ledger booked it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphPoolReport {
    /// The device ordinal.
    pub device: Option<i32>,
    /// Bytes of live graph allocations (device bytes, counted there too).
    pub used_bytes: u64,
    /// Bytes the pool held from the GPU: in use plus held (held bytes are counted in the
    /// pool-held figures).
    pub reserved_bytes: u64,
    /// Highest used bytes since the start or the last reset of the mark.
    pub used_high_bytes: u64,
    /// Highest reserved bytes since the start or the last reset of the mark.
    pub reserved_high_bytes: u64,
    /// The driver's figures as the process last read them (`cuDeviceGetGraphMemAttribute`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub driver: Vec<GraphMemReading>,
}

/// One `cuDeviceGetGraphMemAttribute` answer beside the Ledger's figure at that moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphMemReading {
    /// `USED_MEM_CURRENT`, `USED_MEM_HIGH`, `RESERVED_MEM_CURRENT`, `RESERVED_MEM_HIGH`.
    pub attribute: String,
    /// When the driver answered.
    pub ts_ns: u64,
    /// What the driver said.
    pub driver_bytes: u64,
    /// What the Ledger had booked then.
    pub traced_bytes: u64,
}

fn graph_pools(p: &ProcessState) -> Vec<GraphPoolReport> {
    p.graph_pools()
        .map(|(device, g)| GraphPoolReport {
            device,
            used_bytes: g.used,
            reserved_bytes: g.reserved,
            used_high_bytes: g.used_high,
            reserved_high_bytes: g.reserved_high,
            driver: p
                .graph_mem_reports()
                .filter(|(d, _, _)| *d == device)
                .map(|(_, attr, r)| GraphMemReading {
                    attribute: crate::api::graph_mem_attr::name(attr).into(),
                    ts_ns: r.ts_ns,
                    driver_bytes: r.driver,
                    traced_bytes: r.ledger,
                })
                .collect(),
        })
        .collect()
}

/// A host-memory allocation by a traced process: the Ledger's finding and its stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFallbackReport {
    /// The finding, as the Ledger made it.
    #[serde(flatten)]
    pub finding: HostFinding,
    /// The stack's frames, innermost first, as text (empty when there is no stack).
    pub stack: Vec<String>,
    /// The stack's frame in the user's code, with its title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
}

/// A request that failed for want of memory: the Ledger's snapshot and its stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomReport {
    /// The failure and what was held then, as the Ledger recorded it.
    #[serde(flatten)]
    pub oom: Oom,
    /// The stack's frames, innermost first, as text.
    pub stack: Vec<String>,
    /// The stack's frame in the user's code, with its title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
}

fn stack_text(ledger: &Ledger, id: Option<u32>) -> Vec<String> {
    id.and_then(|id| ledger.stack(id))
        .map(|s| s.frames.iter().map(Frame::line).collect())
        .unwrap_or_default()
}

fn site(ledger: &Ledger, id: Option<u32>) -> Option<Site> {
    ledger.stack(id?)?.site()
}

/// Adds classification, host-memory findings and out-of-memory failures to a process report.
fn add_classification(r: &mut ProcessReport, p: &ProcessState, ledger: &Ledger) {
    r.classes_at_exit = p.classes_at_exit().to_map();
    r.classes_at_peak = p.classes_at_peak.to_map();
    r.host_fallback_total = p.host_fallback_total;
    r.imports = p
        .imports_made()
        .map(|m| ImportReport {
            mapping: m.clone(),
            from: m.source(),
        })
        .collect();
    r.imports_total = p.imports_total + p.imports().count() as u64;
    r.host_fallback = p
        .host_fallback
        .iter()
        .map(|h| HostFallbackReport {
            finding: h.clone(),
            stack: stack_text(ledger, h.stack),
            site: site(ledger, h.stack),
        })
        .collect();
    r.ooms = p
        .ooms
        .iter()
        .map(|o| OomReport {
            oom: o.clone(),
            stack: stack_text(ledger, o.stack),
            site: site(ledger, o.stack),
        })
        .collect();
}

/// How many held allocations a process report lists, unless told how many.
const LARGEST: usize = 10;

fn held(a: &LiveAllocation) -> HeldAllocation {
    HeldAllocation {
        addr: a.addr,
        handle: a.handle,
        bytes: a.bytes,
        mem: a.mem,
        api: a.api.to_string(),
        ts_ns: a.ts_ns,
        tid: a.tid,
        stack: a.stack,
        device: a.device,
        filled_from_host: a.filled_from_host,
        class: Some(a.class),
        evidence: a.evidence.iter().map(ToString::to_string).collect(),
        // Filled in by `report`, which has the stacks.
        top_frame: None,
    }
}

fn device_report(device: Option<i32>, u: &Usage) -> DeviceReport {
    DeviceReport {
        device,
        peak_device_bytes: u.peak_device_bytes,
        peak_ts_ns: u.peak_device_ts_ns,
        device_bytes_at_exit: u.device_bytes,
        pool_held_bytes_at_exit: u.pool_held_bytes,
    }
}

fn header_summary(h: &Header) -> HeaderSummary {
    HeaderSummary {
        format_version: h.version.clone(),
        tool_version: h.tool_version.clone(),
        host: h.host.clone(),
        kernel: h.kernel.clone(),
        start_unix_ns: h.start_unix_ns,
        start_monotonic_ns: h.start_monotonic_ns,
        libraries: h
            .libraries
            .iter()
            .map(|l| LibrarySummary {
                path: l.path.clone(),
                build_id: l.build_id.clone(),
                probes: l.probes.len(),
            })
            .collect(),
    }
}

/// What `p` did and holds, with its `limit` largest live allocations (a process that exited
/// lists those its exit snapshot kept, fewer when it kept fewer).
fn process_report(p: &ProcessState, limit: usize) -> ProcessReport {
    let (device_at, pool_at, host_at, live_at, largest, devices, end) = match &p.exit {
        Some(e) => (
            e.device_bytes,
            e.pool_held_bytes,
            e.host_bytes,
            e.live_allocations,
            e.largest.iter().take(limit).map(held).collect(),
            &e.devices,
            Some(e.ts_ns),
        ),
        None => {
            let mut live: Vec<&LiveAllocation> = p.live_allocations().collect();
            live.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.ts_ns.cmp(&b.ts_ns)));
            (
                p.usage.device_bytes,
                p.usage.pool_held_bytes,
                p.usage.host_bytes,
                live.len(),
                live.into_iter().take(limit).map(held).collect(),
                &p.devices,
                p.last_ts_ns,
            )
        }
    };
    // The exit snapshot's peaks are as of the exit; the process's own are as of now, which
    // differs only if calls arrived after the exit (an anomaly of its own).
    let devices = devices
        .iter()
        .map(|(&d, u)| {
            let mut r = device_report(d, u);
            if let Some(now) = p.devices.get(&d) {
                r.peak_device_bytes = now.peak_device_bytes;
                r.peak_ts_ns = now.peak_device_ts_ns;
            }
            r
        })
        .collect();
    let failed: BTreeMap<String, FailedTotal> = p
        .failed
        .iter()
        .map(|(api, f)| {
            (
                api.clone(),
                FailedTotal {
                    count: f.count,
                    bytes: f.bytes,
                    rets: f.rets.clone(),
                },
            )
        })
        .collect();
    let total = |m: &crate::ledger::ApiCounts| {
        m.iter()
            .map(|(api, c)| {
                (
                    api.to_owned(),
                    ApiTotal {
                        count: c.count,
                        bytes: c.bytes,
                    },
                )
            })
            .collect()
    };
    ProcessReport {
        proc: p.proc,
        pid: p.pid,
        comm: p.comm().to_owned(),
        cuda_visible_devices: p.info.as_ref().and_then(|i| i.cuda_visible_devices.clone()),
        cmdline: p
            .info
            .as_ref()
            .map(|i| i.cmdline.clone())
            .unwrap_or_default(),
        exited: p.exited(),
        end_ts_ns: end,
        peak_device_bytes: p.usage.peak_device_bytes,
        peak_ts_ns: p.usage.peak_device_ts_ns,
        peak_device_and_pool_bytes: p.usage.peak_device_and_pool_bytes,
        peak_host_bytes: p.usage.peak_host_bytes,
        device_bytes_at_exit: device_at,
        host_bytes_at_exit: host_at,
        pool_held_bytes_at_exit: pool_at,
        live_allocations_at_exit: live_at,
        largest_at_exit: largest,
        allocs: total(&p.allocs),
        frees: total(&p.frees),
        started: ApiTotal {
            count: p.started.count,
            bytes: p.started.bytes,
        },
        ended: crate::ledger::EndCause::ALL
            .iter()
            .map(|c| (c, &p.ended[c.index()]))
            .filter(|(_, e)| e.count > 0)
            .map(|(c, e)| {
                (
                    c.name().to_owned(),
                    ApiTotal {
                        count: e.count,
                        bytes: e.bytes,
                    },
                )
            })
            .collect(),
        failed_total: failed.values().map(|f| f.count).sum(),
        unreturned: p.unreturned.clone(),
        failed,
        anomalies: p
            .anomalies
            .iter()
            .map(|(k, a)| {
                (
                    (*k).to_owned(),
                    AnomalyReport {
                        count: a.count,
                        examples: a.examples.clone(),
                    },
                )
            })
            .collect(),
        devices,
        // Filled in by `with_nvml`: the reconciliations live in the ledger, not the process.
        nvml: Vec::new(),
        nvml_at_peak: Vec::new(),
        graph_pools: graph_pools(p),
        ..ProcessReport::default()
    }
}

fn nvml_report(i: &NvmlInfo, samples: u64) -> NvmlReport {
    NvmlReport {
        info: i.clone(),
        samples,
    }
}

/// Adds a process's NVML reconciliations to its report.
fn with_nvml(mut r: ProcessReport, ledger: &Ledger) -> ProcessReport {
    if let Some(n) = ledger.nvml().process(r.proc) {
        r.nvml = n.latest.devices.clone();
        r.nvml_at_peak = n.at_peak.devices.clone();
    }
    r
}

/// Replays `records` through a fresh [`Ledger`] and sums up the trace. `read` is what the
/// reader learned about the file; without it, the trace counts as complete when a footer was
/// among the records.
pub fn summarize(records: impl Iterator<Item = Record>, read: Option<&ReadStatus>) -> Report {
    let mut replay = Replay::default();
    for rec in records {
        replay.apply(rec);
    }
    replay.report(read)
}

/// Reads a trace file, streaming, and sums it up. Bad lines are reported in the result, not
/// as errors; only a file that is not a readable vramtrace trace is an error.
pub fn analyze_file(path: &std::path::Path) -> Result<Report, crate::trace::read::ReadError> {
    analyze_file_with(path, &Filters::default())
}

impl From<crate::trace::read::ReadSummary> for ReadStatus {
    fn from(s: crate::trace::read::ReadSummary) -> Self {
        let (notes, problems): (Vec<_>, Vec<_>) =
            s.problems.iter().partition(|p| p.kind.is_integrity());
        let pairs = |ps: Vec<&crate::trace::Problem>| {
            ps.into_iter()
                .map(|p| (p.line, p.message.clone()))
                .collect()
        };
        ReadStatus {
            integrity: s.integrity,
            digest_ok: s.digest_ok,
            problems: pairs(problems),
            integrity_notes: pairs(notes),
            header: Some(s.header),
            footer: s.footer,
        }
    }
}

fn problems(lines: &[(u64, String)]) -> Vec<ReadProblem> {
    lines
        .iter()
        .map(|(line, message)| ReadProblem {
            line: *line,
            message: message.clone(),
        })
        .collect()
}

/// A replay in progress: the Ledger, and the header and footer when they come by.
#[derive(Default)]
pub struct Replay {
    pub ledger: Ledger,
    header: Option<Header>,
    footer: Option<Footer>,
    post: postmortem::Collector,
}

impl Replay {
    /// Feeds one record.
    pub fn apply(&mut self, rec: Record) {
        match &rec {
            Record::Header(h) => self.header = Some((**h).clone()),
            Record::Footer(f) => self.footer = Some(f.clone()),
            _ => {}
        }
        self.ledger.apply(&rec);
        self.post.observe(&self.ledger, &rec);
    }

    /// The report, with what the reader found about the file.
    pub fn report(self, read: Option<&ReadStatus>) -> Report {
        let Replay {
            ledger,
            header,
            footer,
            post,
        } = self;
        report(ledger, post, header, footer, read, LARGEST)
    }
}

/// The report of a replayed trace: the Ledger at its end, what the postmortem collected,
/// and what the reader found about the file; each process lists its `largest` largest live
/// allocations.
pub(crate) fn report(
    ledger: Ledger,
    post: postmortem::Collector,
    header: Option<Header>,
    footer: Option<Footer>,
    read: Option<&ReadStatus>,
    largest: usize,
) -> Report {
    let postmortem = post.finish(&ledger);
    let header = read.and_then(|r| r.header.clone()).or(header);
    let footer = read.and_then(|r| r.footer.clone()).or(footer);

    // The footer's count is the sum over `lost` records: the larger of the two, not both.
    let lost_events = ledger
        .lost_events()
        .max(footer.as_ref().map_or(0, |f| f.lost_events));
    let stack_failed = ledger
        .stack_failed()
        .max(footer.as_ref().map_or(0, |f| f.stack_failed));
    let start = header.as_ref().map(|h| h.start_monotonic_ns);
    let end = footer
        .as_ref()
        .map(|f| f.end_ts_ns)
        .or_else(|| ledger.time_span().map(|(_, last)| last));
    let duration_ns = match (start, end, ledger.time_span()) {
        (Some(s), Some(e), _) if s > 0 && e >= s => Some(e - s),
        (_, _, Some((first, last))) => Some(last - first),
        _ => None,
    };

    let nvml = header
        .as_ref()
        .and_then(|h| h.nvml.as_ref())
        .or(ledger.nvml().info())
        .map(|i| nvml_report(i, ledger.nvml().samples()));
    let t = ledger.totals();
    let machine = MachineReport {
        nvml_gpus: ledger.nvml().gpus().to_vec(),
        peak_device_bytes: t.usage.peak_device_bytes,
        peak_ts_ns: t.usage.peak_device_ts_ns,
        peak_device_and_pool_bytes: t.usage.peak_device_and_pool_bytes,
        devices: t
            .devices
            .iter()
            .map(|(&d, u)| device_report(d, u))
            .collect(),
    };

    // Without the reader's verdict, a footer among the records is taken at its word.
    let integrity = match (read, footer.is_some()) {
        (Some(r), _) => r.integrity,
        (None, true) => Integrity::Complete,
        (None, false) => Integrity::CutShort,
    };
    Report {
        complete: integrity == Integrity::Complete,
        integrity,
        integrity_notes: read
            .map(|r| problems(&r.integrity_notes))
            .unwrap_or_default(),
        digest_ok: read.and_then(|r| r.digest_ok),
        problems: read.map(|r| problems(&r.problems)).unwrap_or_default(),
        header: header.as_ref().map(header_summary),
        lost_events,
        stack_failed,
        duration_ns,
        at_ns: None,
        stopped_by: footer.as_ref().and_then(|f| f.stopped_by.clone()),
        filters: AppliedFilters::default(),
        machine,
        processes: ledger
            .processes()
            .map(|p| {
                let mut r = with_nvml(process_report(p, largest), &ledger);
                add_classification(&mut r, p, &ledger);
                for a in &mut r.largest_at_exit {
                    a.top_frame = postmortem::top_frame(&ledger, a.stack);
                }
                r.attached = p.running_before;
                r.untraced_after = !r.exited
                    && footer
                        .as_ref()
                        .is_some_and(|f| f.untraced_after.contains(&r.pid));
                r
            })
            .collect(),
        nvml,
        postmortem,
    }
}
