//! Reconciliation of traced memory with NVML's figures, per process and GPU, and per GPU for
//! the machine: how much of what the driver reports the trace explains, and what else was on
//! each GPU.
//!
//! Choices, and why:
//!
//! - Traced bytes are live device bytes *plus* pool-held bytes: memory freed into a
//!   stream-ordered pool is still taken from the GPU, and the driver reports it as used.
//!   Host memory (managed, pinned, registered) is not on the GPU and not compared.
//! - NVML reports host PIDs. A PID is matched to the traced process with that PID that has
//!   not exited (PIDs are reused; process record ids are not).
//! - Device ordinals are CUDA's, NVML indices are NVML's; [`nvml_index`] maps one to the
//!   other (see there for the assumptions).
//! - The difference is NVML's figure minus the traced bytes: the context, its code and
//!   stacks, the driver's own reservations, and anything the trace missed (allocations
//!   before attaching, lost events). It is signed: the trace can be ahead of NVML between
//!   two samples. Coverage is traced / NVML; absent when NVML gives no figure (or 0).
//! - Each sample is reconciled against the ledger as it is when the sample is applied. A
//!   recording writes samples as they arrive, up to one tick after they were taken, so the
//!   two can be a tick apart; replay sees the same order, so live and replay agree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ProcessState;
use crate::trace::{GpuInfo, NvmlInfo, NvmlSample};

/// One process on one GPU: what was traced against what NVML reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReconciliation {
    /// The process's CUDA device ordinal, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<i32>,
    /// The NVML index of that GPU, when the ordinal could be mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvml_index: Option<u32>,
    /// Live device plus pool-held bytes the trace saw.
    pub traced_bytes: u64,
    /// NVML's per-process figure; absent when NVML cannot say or does not list the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvml_bytes: Option<u64>,
    /// `nvml_bytes - traced_bytes`: driver and context overhead and anything untraced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference_bytes: Option<i64>,
    /// `traced_bytes / nvml_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
}

impl DeviceReconciliation {
    fn new(device: Option<i32>, nvml_index: Option<u32>, traced: u64, nvml: Option<u64>) -> Self {
        DeviceReconciliation {
            device,
            nvml_index,
            traced_bytes: traced,
            nvml_bytes: nvml,
            difference_bytes: nvml.map(|n| clamp_i64(i128::from(n) - i128::from(traced))),
            coverage: nvml.filter(|&n| n > 0).map(|n| traced as f64 / n as f64),
        }
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// One process at one sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// The sample's time.
    pub ts_ns: u64,
    /// Per GPU, by NVML index (unmapped devices last).
    pub devices: Vec<DeviceReconciliation>,
}

impl Reconciliation {
    /// Traced bytes on every GPU together.
    pub fn traced_bytes(&self) -> u64 {
        self.devices.iter().map(|d| d.traced_bytes).sum()
    }
}

/// A process's reconciliations worth keeping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessNvml {
    /// At the latest sample while the process lived (for an exited process: the last one
    /// before its exit).
    pub latest: Reconciliation,
    /// At the sample where its traced bytes were highest (the first such).
    pub at_peak: Reconciliation,
}

/// A process NVML listed on a GPU that is not a live traced process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntracedProcess {
    /// Host PID.
    pub pid: u32,
    /// NVML's figure; absent when NVML cannot say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// One GPU at the latest sample: NVML's figures and the traced processes' sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuReconciliation {
    /// NVML index.
    pub index: u32,
    /// The sample's time.
    pub ts_ns: u64,
    /// NVML: total memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// NVML: used memory (all processes and the driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// NVML: reserved by the driver, outside `used_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_bytes: Option<u64>,
    /// Live device plus pool-held bytes of every traced process mapped to this GPU.
    pub traced_bytes: u64,
    /// `traced_bytes / used_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// What else was on the GPU: processes NVML lists that are not traced (or have exited).
    pub untraced_processes: Vec<UntracedProcess>,
}

impl GpuReconciliation {
    /// NVML's used memory that no traced allocation explains (`used_bytes - traced_bytes`,
    /// not below zero): the driver's and contexts' own memory, untraced processes, and
    /// anything the trace missed. Absent when NVML did not give its used figure.
    pub fn unexplained_bytes(&self) -> Option<u64> {
        self.used_bytes.map(|u| u.saturating_sub(self.traced_bytes))
    }
}

/// What the ledger keeps of NVML.
#[derive(Clone, Debug, Default)]
pub struct NvmlLedger {
    info: Option<NvmlInfo>,
    samples: u64,
    latest: Option<NvmlSample>,
    gpus: Vec<GpuReconciliation>,
    procs: BTreeMap<u32, ProcessNvml>,
}

impl NvmlLedger {
    /// What the header said about NVML (`None`: the trace does not say).
    pub fn info(&self) -> Option<&NvmlInfo> {
        self.info.as_ref()
    }

    /// How many samples were applied.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<&NvmlSample> {
        self.latest.as_ref()
    }

    /// Per GPU, at the latest sample.
    pub fn gpus(&self) -> &[GpuReconciliation] {
        &self.gpus
    }

    /// A process's reconciliations, by `process` record id.
    pub fn process(&self, proc: u32) -> Option<&ProcessNvml> {
        self.procs.get(&proc)
    }

    pub(crate) fn set_info(&mut self, info: Option<NvmlInfo>) {
        self.info = info;
    }

    pub(crate) fn apply(&mut self, sample: &NvmlSample, procs: &BTreeMap<u32, ProcessState>) {
        self.samples += 1;
        let known: &[GpuInfo] = self.info.as_ref().map_or(&[], |i| &i.gpus);
        let live: Vec<&ProcessState> = procs.values().filter(|p| !p.exited()).collect();
        let mut traced_on: BTreeMap<u32, u64> = BTreeMap::new();
        for st in &live {
            let devices = reconcile(st, sample, known);
            if devices.is_empty() {
                continue;
            }
            for d in &devices {
                if let Some(i) = d.nvml_index {
                    *traced_on.entry(i).or_default() += d.traced_bytes;
                }
            }
            let now = Reconciliation {
                ts_ns: sample.ts_ns,
                devices,
            };
            let e = self.procs.entry(st.proc).or_default();
            if e.at_peak.devices.is_empty() || now.traced_bytes() > e.at_peak.traced_bytes() {
                e.at_peak = now.clone();
            }
            e.latest = now;
        }
        self.gpus = sample
            .gpus
            .iter()
            .map(|g| {
                let traced = traced_on.get(&g.index).copied().unwrap_or(0);
                GpuReconciliation {
                    index: g.index,
                    ts_ns: sample.ts_ns,
                    total_bytes: g.total_bytes,
                    used_bytes: g.used_bytes,
                    reserved_bytes: g.reserved_bytes,
                    traced_bytes: traced,
                    coverage: g
                        .used_bytes
                        .filter(|&u| u > 0)
                        .map(|u| traced as f64 / u as f64),
                    untraced_processes: g
                        .processes
                        .iter()
                        .filter(|p| !live.iter().any(|st| st.pid == p.pid))
                        .map(|p| UntracedProcess {
                            pid: p.pid,
                            bytes: p.used_bytes,
                        })
                        .collect(),
                }
            })
            .collect();
        self.latest = Some(sample.clone());
    }
}

/// The entries of `CUDA_VISIBLE_DEVICES` that CUDA honours: it stops at the first entry that
/// is not valid, so `0,x,1` makes one device visible.
fn visible_entries(v: &str) -> Vec<&str> {
    v.split(',')
        .map(str::trim)
        .take_while(|e| {
            !e.is_empty()
                && (e.bytes().all(|b| b.is_ascii_digit())
                    || e.starts_with("GPU-")
                    || e.starts_with("MIG-"))
        })
        .collect()
}

/// The NVML index of a process's CUDA device `ordinal`, given its `CUDA_VISIBLE_DEVICES`
/// and the GPUs NVML listed (by index, with UUIDs), when it can be told.
///
/// CUDA numbers the devices it makes visible 0, 1, ...; an entry of `CUDA_VISIBLE_DEVICES`
/// is a device index or a (prefix of a) `GPU-` UUID. A UUID is matched exactly against
/// NVML's. A numeric entry, and an ordinal without `CUDA_VISIBLE_DEVICES`, is taken to be the
/// NVML index. That holds when CUDA enumerates in PCI bus order, as NVML does: with
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID`, and with the default `FASTEST_FIRST` on a machine of
/// identical GPUs (CUDA then breaks the tie by PCI bus id). On a machine of mixed GPUs
/// under `FASTEST_FIRST` it may not hold; telling for sure needs `cuDeviceGetPCIBusId`,
/// which is not traced. `MIG-` instances are not mapped: NVML's per-process figures do not
/// cover them.
pub fn nvml_index(ordinal: i32, visible: Option<&str>, gpus: &[GpuInfo]) -> Option<u32> {
    let ordinal = usize::try_from(ordinal).ok()?;
    let in_range = |i: u32| gpus.is_empty() || gpus.iter().any(|g| g.index == i);
    let Some(visible) = visible else {
        return u32::try_from(ordinal).ok().filter(|&i| in_range(i));
    };
    let entry = *visible_entries(visible).get(ordinal)?;
    if entry.starts_with("GPU-") {
        let mut found = gpus
            .iter()
            .filter(|g| g.uuid.as_deref().is_some_and(|u| u.starts_with(entry)));
        let first = found.next()?;
        // An ambiguous prefix names no device.
        return found.next().is_none().then_some(first.index);
    }
    if entry.starts_with("MIG-") {
        return None;
    }
    entry.parse::<u32>().ok().filter(|&i| in_range(i))
}

/// The NVML index for allocations whose device could not be told: the one GPU the process
/// can see, when it can see only one.
fn sole_index(visible: Option<&str>, gpus: &[GpuInfo]) -> Option<u32> {
    match visible {
        Some(v) if visible_entries(v).len() == 1 => nvml_index(0, Some(v), gpus),
        Some(_) => None,
        None if gpus.len() == 1 => Some(gpus[0].index),
        None => None,
    }
}

/// One process against one sample: an entry per GPU it has traced memory on or NVML lists
/// it on, by NVML index, unmapped devices last.
pub fn reconcile(
    st: &ProcessState,
    sample: &NvmlSample,
    gpus: &[GpuInfo],
) -> Vec<DeviceReconciliation> {
    let visible = st
        .info
        .as_ref()
        .and_then(|i| i.cuda_visible_devices.as_deref());
    // NVML's GPUs from the header, or else from the sample itself.
    let from_sample: Vec<GpuInfo>;
    let gpus = if gpus.is_empty() {
        from_sample = sample
            .gpus
            .iter()
            .map(|g| GpuInfo {
                index: g.index,
                ..GpuInfo::default()
            })
            .collect();
        &from_sample[..]
    } else {
        gpus
    };
    let mut mapped: BTreeMap<u32, (Option<i32>, u64)> = BTreeMap::new();
    let mut unmapped: Vec<(Option<i32>, u64)> = Vec::new();
    for (&device, u) in &st.devices {
        let bytes = u.device_and_pool_bytes();
        let index = match device {
            Some(d) => nvml_index(d, visible, gpus),
            None => sole_index(visible, gpus),
        };
        match index {
            Some(i) => {
                let e = mapped.entry(i).or_insert((device, 0));
                e.0 = e.0.or(device);
                e.1 += bytes;
            }
            None if bytes > 0 => unmapped.push((device, bytes)),
            None => {}
        }
    }
    let nvml_of = |index: u32| {
        sample
            .gpus
            .iter()
            .find(|g| g.index == index)
            .and_then(|g| g.processes.iter().find(|p| p.pid == st.pid))
    };
    // GPUs NVML lists the process on that the trace booked nothing to: its context, at least.
    for g in &sample.gpus {
        if g.processes.iter().any(|p| p.pid == st.pid) && !mapped.contains_key(&g.index) {
            let device =
                (0..gpus.len() as i32).find(|&o| nvml_index(o, visible, gpus) == Some(g.index));
            mapped.insert(g.index, (device, 0));
        }
    }
    let mut out: Vec<DeviceReconciliation> = mapped
        .into_iter()
        .filter_map(|(index, (device, traced))| {
            let listed = nvml_of(index);
            // Nothing traced and not listed: the process never used this GPU.
            if traced == 0 && listed.is_none() {
                return None;
            }
            Some(DeviceReconciliation::new(
                device,
                Some(index),
                traced,
                listed.and_then(|p| p.used_bytes),
            ))
        })
        .collect();
    out.extend(
        unmapped
            .into_iter()
            .map(|(device, traced)| DeviceReconciliation::new(device, None, traced, None)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use crate::trace::{Call, Exit, Header, Mem, Process, Record};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn process(proc: u32, pid: u32, visible: Option<&str>) -> Record {
        Record::Process(Process {
            id: proc,
            pid,
            comm: "python3".into(),
            cuda_visible_devices: visible.map(Into::into),
            ..Process::default()
        })
    }

    fn alloc(proc: u32, pid: u32, ts: u64, addr: u64, bytes: u64, device: i32) -> Record {
        Record::Alloc(Call {
            api: "cuMemAllocAsync".into(),
            proc,
            pid,
            tid: pid,
            ts_ns: ts,
            addr: Some(addr),
            bytes: Some(bytes),
            mem: Some(Mem::DeviceAsync),
            device: Some(device),
            ..Call::default()
        })
    }

    fn free_async(proc: u32, pid: u32, ts: u64, addr: u64) -> Record {
        Record::Free(Call {
            api: "cuMemFreeAsync".into(),
            proc,
            pid,
            tid: pid,
            ts_ns: ts,
            addr: Some(addr),
            mem: Some(Mem::DeviceAsync),
            ..Call::default()
        })
    }

    /// A sample as a recording writes it: one JSON line.
    fn recorded(line: &str) -> Record {
        let rec: Record = serde_json::from_str(line).expect("a valid nvml line");
        assert_eq!(rec.kind(), "nvml");
        rec
    }

    fn header(gpus: &[(u32, &str)]) -> Record {
        Record::Header(Box::new(Header {
            nvml: Some(NvmlInfo {
                available: true,
                driver_version: Some("535.247.01".into()),
                gpus: gpus
                    .iter()
                    .map(|&(index, uuid)| GpuInfo {
                        index,
                        uuid: Some(uuid.into()),
                        ..GpuInfo::default()
                    })
                    .collect(),
                ..NvmlInfo::default()
            }),
            ..Header::default()
        }))
    }

    #[test]
    fn traced_pool_and_nvml_make_coverage_and_untraced_processes_show() {
        let mut l = Ledger::new();
        l.apply(&header(&[(0, "GPU-aaaa")]));
        l.apply(&process(1, 4242, None));
        l.apply(&alloc(1, 4242, 10, 0x1000_0000, GIB, 0));
        l.apply(&alloc(1, 4242, 20, 0x9000_0000, 256 * MIB, 0));
        // Freed into the pool: still taken from the GPU.
        l.apply(&free_async(1, 4242, 30, 0x9000_0000));
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":40,"gpus":[{"index":0,"total_bytes":85899345920,"used_bytes":2147483648,"free_bytes":83751862272,"reserved_bytes":536870912,"processes":[{"pid":999,"used_bytes":104857600},{"pid":4242,"used_bytes":1610612736},{"pid":1000}]}]}"#,
        ));
        let n = l.nvml();
        assert_eq!(n.samples(), 1);
        let p = n.process(1).expect("reconciled");
        assert_eq!(p.latest.ts_ns, 40);
        assert_eq!(
            p.latest.devices,
            [DeviceReconciliation {
                device: Some(0),
                nvml_index: Some(0),
                traced_bytes: GIB + 256 * MIB,
                nvml_bytes: Some(GIB + 512 * MIB),
                difference_bytes: Some(256 * MIB as i64),
                coverage: Some(1280.0 / 1536.0),
            }]
        );
        let g = &n.gpus()[0];
        assert_eq!(g.used_bytes, Some(2 * GIB));
        assert_eq!(g.reserved_bytes, Some(512 * MIB));
        assert_eq!(g.traced_bytes, GIB + 256 * MIB);
        assert_eq!(g.coverage, Some(0.625));
        assert_eq!(
            g.untraced_processes,
            [
                UntracedProcess {
                    pid: 999,
                    bytes: Some(100 * MIB)
                },
                // NVML could not say: absent, not 0.
                UntracedProcess {
                    pid: 1000,
                    bytes: None
                },
            ]
        );
    }

    #[test]
    fn a_figure_nvml_cannot_give_leaves_coverage_absent() {
        let mut l = Ledger::new();
        l.apply(&process(1, 77, None));
        l.apply(&alloc(1, 77, 10, 0x1000, 64 * MIB, 0));
        // Listed without a figure (containers, MIG): unknown, never 0.
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":20,"gpus":[{"index":0,"processes":[{"pid":77}]}]}"#,
        ));
        let d = &l.nvml().process(1).expect("reconciled").latest.devices[0];
        assert_eq!(d.traced_bytes, 64 * MIB);
        assert_eq!(d.nvml_bytes, None);
        assert_eq!(d.difference_bytes, None);
        assert_eq!(d.coverage, None);
        let g = &l.nvml().gpus()[0];
        assert_eq!(g.used_bytes, None);
        assert_eq!(g.coverage, None);
        assert!(g.untraced_processes.is_empty());

        // Not listed at all on the GPU it allocated on: NVML's figure is unknown too.
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":30,"gpus":[{"index":0,"used_bytes":1000}]}"#,
        ));
        let d = &l.nvml().process(1).expect("reconciled").latest.devices[0];
        assert_eq!((d.nvml_bytes, d.coverage), (None, None));
    }

    #[test]
    fn a_gpu_with_only_a_context_shows_with_nothing_traced() {
        let mut l = Ledger::new();
        l.apply(&process(1, 5, None));
        l.apply(&alloc(1, 5, 10, 0x1000, 10 * MIB, 0));
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":20,"gpus":[{"index":0,"processes":[{"pid":5,"used_bytes":524288000}]},{"index":1,"processes":[{"pid":5,"used_bytes":314572800}]}]}"#,
        ));
        let devs = &l.nvml().process(1).expect("reconciled").latest.devices;
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[1].device, Some(1));
        assert_eq!(devs[1].nvml_index, Some(1));
        assert_eq!(devs[1].traced_bytes, 0);
        assert_eq!(devs[1].coverage, Some(0.0));
        assert_eq!(devs[1].difference_bytes, Some(300 * MIB as i64));
    }

    #[test]
    fn cuda_visible_devices_maps_ordinals_to_nvml_indices() {
        let mut l = Ledger::new();
        l.apply(&header(&[
            (0, "GPU-aaaa-1"),
            (1, "GPU-bbbb-2"),
            (2, "GPU-cccc-3"),
        ]));
        // Ordinal 0 is NVML's GPU 2, ordinal 1 is GPU 0 (by UUID prefix).
        l.apply(&process(1, 10, Some("2,GPU-aaaa")));
        l.apply(&alloc(1, 10, 10, 0x1000, 100 * MIB, 0));
        l.apply(&alloc(1, 10, 11, 0x2000_0000, 30 * MIB, 1));
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":20,"gpus":[{"index":0,"used_bytes":52428800,"processes":[{"pid":10,"used_bytes":41943040}]},{"index":1,"used_bytes":0},{"index":2,"used_bytes":209715200,"processes":[{"pid":10,"used_bytes":209715200}]}]}"#,
        ));
        let devs = &l.nvml().process(1).expect("reconciled").latest.devices;
        let got: Vec<_> = devs
            .iter()
            .map(|d| (d.device, d.nvml_index, d.traced_bytes, d.nvml_bytes))
            .collect();
        assert_eq!(
            got,
            [
                (Some(1), Some(0), 30 * MIB, Some(40 * MIB)),
                (Some(0), Some(2), 100 * MIB, Some(200 * MIB)),
            ]
        );
        let traced: Vec<_> = l.nvml().gpus().iter().map(|g| g.traced_bytes).collect();
        assert_eq!(traced, [30 * MIB, 0, 100 * MIB]);
    }

    #[test]
    fn a_reused_pid_is_the_live_process_and_the_exited_one_keeps_its_last() {
        let mut l = Ledger::new();
        l.apply(&process(1, 42, None));
        l.apply(&alloc(1, 42, 10, 0x1000, 200 * MIB, 0));
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":20,"gpus":[{"index":0,"processes":[{"pid":42,"used_bytes":314572800}]}]}"#,
        ));
        l.apply(&Record::Exit(Exit {
            proc: 1,
            pid: 42,
            ts_ns: 30,
        }));
        l.apply(&process(2, 42, None));
        l.apply(&alloc(2, 42, 40, 0x1000, 50 * MIB, 0));
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":50,"gpus":[{"index":0,"processes":[{"pid":42,"used_bytes":157286400}]}]}"#,
        ));
        let old = l.nvml().process(1).expect("reconciled");
        assert_eq!(old.latest.ts_ns, 20);
        assert_eq!(old.latest.devices[0].traced_bytes, 200 * MIB);
        let new = l.nvml().process(2).expect("reconciled");
        assert_eq!(new.latest.ts_ns, 50);
        assert_eq!(new.latest.devices[0].traced_bytes, 50 * MIB);
        assert_eq!(new.latest.devices[0].nvml_bytes, Some(150 * MIB));
        assert!(l.nvml().gpus()[0].untraced_processes.is_empty());
    }

    #[test]
    fn the_peak_reconciliation_stays_when_memory_falls() {
        let mut l = Ledger::new();
        l.apply(&process(1, 7, None));
        l.apply(&Record::Alloc(Call {
            api: "cuMemAlloc_v2".into(),
            proc: 1,
            pid: 7,
            tid: 7,
            ts_ns: 10,
            addr: Some(0x1000),
            bytes: Some(GIB),
            mem: Some(Mem::Device),
            device: Some(0),
            ..Call::default()
        }));
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":20,"gpus":[{"index":0,"processes":[{"pid":7,"used_bytes":1610612736}]}]}"#,
        ));
        l.apply(&Record::Free(Call {
            api: "cuMemFree_v2".into(),
            proc: 1,
            pid: 7,
            tid: 7,
            ts_ns: 30,
            addr: Some(0x1000),
            ..Call::default()
        }));
        l.apply(&recorded(
            r#"{"type":"nvml","ts_ns":40,"gpus":[{"index":0,"processes":[{"pid":7,"used_bytes":536870912}]}]}"#,
        ));
        let p = l.nvml().process(1).expect("reconciled");
        assert_eq!(p.at_peak.ts_ns, 20);
        assert_eq!(p.at_peak.devices[0].traced_bytes, GIB);
        assert_eq!(p.latest.ts_ns, 40);
        assert_eq!(p.latest.devices[0].traced_bytes, 0);
        assert_eq!(p.latest.devices[0].nvml_bytes, Some(512 * MIB));
    }

    #[test]
    fn ordinals_map_by_index_uuid_and_not_past_an_invalid_entry() {
        let gpus: Vec<GpuInfo> = [(0, "GPU-0aa"), (1, "GPU-1bb"), (2, "GPU-1bc")]
            .iter()
            .map(|&(index, uuid)| GpuInfo {
                index,
                uuid: Some(uuid.into()),
                ..GpuInfo::default()
            })
            .collect();
        assert_eq!(nvml_index(1, None, &gpus), Some(1));
        assert_eq!(nvml_index(3, None, &gpus), None);
        assert_eq!(nvml_index(-1, None, &gpus), None);
        assert_eq!(nvml_index(0, Some("2,0"), &gpus), Some(2));
        assert_eq!(nvml_index(1, Some("2, 0"), &gpus), Some(0));
        // CUDA stops at the first invalid entry.
        assert_eq!(nvml_index(1, Some("2,x,0"), &gpus), None);
        assert_eq!(nvml_index(0, Some(""), &gpus), None);
        assert_eq!(nvml_index(0, Some("GPU-1bb"), &gpus), Some(1));
        // Ambiguous prefix, unknown UUID, MIG instance, index NVML does not have.
        assert_eq!(nvml_index(0, Some("GPU-1b"), &gpus), None);
        assert_eq!(nvml_index(0, Some("GPU-ffff"), &gpus), None);
        assert_eq!(nvml_index(0, Some("MIG-0aa/1/0"), &gpus), None);
        assert_eq!(nvml_index(0, Some("7"), &gpus), None);
        // Without NVML's list, an index is taken as it is.
        assert_eq!(nvml_index(0, Some("5"), &[]), Some(5));
    }

    #[test]
    fn no_samples_no_reconciliation() {
        let mut l = Ledger::new();
        l.apply(&process(1, 7, None));
        l.apply(&alloc(1, 7, 10, 0x1000, GIB, 0));
        assert_eq!(l.nvml().samples(), 0);
        assert!(l.nvml().process(1).is_none());
        assert!(l.nvml().gpus().is_empty());
    }
}
