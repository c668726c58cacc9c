//! NVML, the driver's own view of GPU memory: machine facts for the header, and samples of
//! used memory per GPU and per process taken by a poller thread, for reconciliation with what
//! was traced.
//!
//! `nvml-wrapper` opens `libnvidia-ml.so.1` at run time, so vramtrace builds and runs where
//! there is no NVIDIA driver: [`Nvml::init`] then fails with a reason, which the trace keeps
//! (`header.nvml.available == false`), and tracing goes on without samples.
//!
//! What the samples hold (NVML API reference, `nvml.h`):
//!
//! - `nvmlDeviceGetMemoryInfo_v2`: `total`, `used`, `free` and `reserved` (memory the driver
//!   sets aside, not counted in `used`; version 1 of the call folded it into `used`).
//! - `nvmlDeviceGetComputeRunningProcesses` and `...GraphicsRunningProcesses`: the processes
//!   with a context on the GPU, with host PIDs, and their used memory, which NVML reports as
//!   "not available" in some containers and under MIG. A process in both lists (a CUDA and a
//!   graphics context) appears once here, with the larger figure: both lists report the
//!   same per-process total.
//!
//! A figure NVML cannot give is `None`, never 0.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use nvml_wrapper::{
    enums::device::UsedGpuMemory, error::NvmlError, struct_wrappers::device::ProcessInfo,
};

use crate::trace::{GpuInfo, GpuProcess, GpuSample, NvmlInfo, NvmlSample};

/// The library NVML lives in; the driver package installs it under this name only (the
/// unversioned `libnvidia-ml.so` comes with development packages).
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// Why NVML cannot be used on this machine. Not an error of vramtrace's: the trace records
/// it and tracing goes on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NvmlUnavailable {
    /// What happened, for a person: the library missing, the kernel driver not loaded, ...
    pub reason: String,
}

impl NvmlUnavailable {
    /// The header's record of it.
    pub fn info(&self) -> NvmlInfo {
        NvmlInfo {
            available: false,
            reason: Some(self.reason.clone()),
            ..NvmlInfo::default()
        }
    }
}

/// Words for a person from what loading and initializing NVML returned.
fn reason(err: &NvmlError) -> String {
    match err {
        NvmlError::LibloadingError(e) => {
            format!("{LIBRARY} could not be loaded ({e}); is the NVIDIA driver installed?")
        }
        NvmlError::FailedToLoadSymbol(s) => {
            format!(
                "{LIBRARY} lacks nvmlInit_v2 ({s}); the driver is too old or the library is not NVML"
            )
        }
        NvmlError::DriverNotLoaded => format!(
            "NVML could not initialize: Driver Not Loaded ({LIBRARY} found, no NVIDIA kernel driver)"
        ),
        NvmlError::NoPermission => format!(
            "NVML could not initialize: No Permission ({LIBRARY} found, access to /dev/nvidia* denied)"
        ),
        other => format!("NVML could not initialize: {other} ({LIBRARY} found)"),
    }
}

/// An initialized NVML.
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml").finish_non_exhaustive()
    }
}

impl Nvml {
    /// Loads `libnvidia-ml.so.1` and initializes NVML. Without a GPU or driver this fails
    /// with the reason; it never panics.
    pub fn init() -> Result<Nvml, NvmlUnavailable> {
        nvml_wrapper::Nvml::builder()
            .lib_path(std::ffi::OsStr::new(LIBRARY))
            .init()
            .map(|nvml| Nvml { nvml })
            .map_err(|e| NvmlUnavailable { reason: reason(&e) })
    }

    /// Versions and GPUs, for the header. A GPU that NVML cannot open is left out; a
    /// property it cannot read is `None`.
    pub fn info(&self) -> NvmlInfo {
        let count = self.nvml.device_count().unwrap_or(0);
        let gpus = (0..count)
            .filter_map(|index| {
                let d = self.nvml.device_by_index(index).ok()?;
                Some(GpuInfo {
                    index,
                    uuid: d.uuid().ok(),
                    name: d.name().ok(),
                    pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
                    total_bytes: d.memory_info().ok().map(|m| m.total),
                })
            })
            .collect();
        NvmlInfo {
            available: true,
            reason: None,
            driver_version: self.nvml.sys_driver_version().ok(),
            nvml_version: self.nvml.sys_nvml_version().ok(),
            gpus,
        }
    }

    /// What NVML says now about every GPU, stamped `ts_ns`.
    pub fn sample(&self, ts_ns: u64) -> NvmlSample {
        let count = self.nvml.device_count().unwrap_or(0);
        let gpus = (0..count)
            .filter_map(|index| {
                let d = self.nvml.device_by_index(index).ok()?;
                let mem = d.memory_info().ok();
                let compute = d.running_compute_processes().unwrap_or_default();
                let graphics = d.running_graphics_processes().unwrap_or_default();
                Some(GpuSample {
                    index,
                    total_bytes: mem.as_ref().map(|m| m.total),
                    used_bytes: mem.as_ref().map(|m| m.used),
                    free_bytes: mem.as_ref().map(|m| m.free),
                    reserved_bytes: mem.as_ref().map(|m| m.reserved),
                    processes: merge_processes(compute.iter().chain(graphics.iter())),
                })
            })
            .collect();
        NvmlSample { ts_ns, gpus }
    }
}

/// One GPU's live telemetry, for the service: every figure NVML could not read is `None`
/// (never a zero it did not report).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GpuTelemetry {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// Percent of the last sample period a kernel ran.
    pub utilization_gpu_percent: Option<u32>,
    /// Percent of the last sample period device memory was read or written.
    pub utilization_memory_percent: Option<u32>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    /// Fan 0's speed, percent of its maximum.
    pub fan_percent: Option<u32>,
    pub encoder_percent: Option<u32>,
    pub decoder_percent: Option<u32>,
    /// Processes on the GPU, by PID.
    pub processes: Vec<GpuProcess>,
}

impl Nvml {
    /// Utilization, memory, temperature, power and its limit, fan, encoder and decoder use
    /// and processes of every GPU NVML can open.
    pub fn telemetry(&self) -> Vec<GpuTelemetry> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let d = self.nvml.device_by_index(index).ok()?;
                let mem = d.memory_info().ok();
                let util = d.utilization_rates().ok();
                let compute = d.running_compute_processes().unwrap_or_default();
                let graphics = d.running_graphics_processes().unwrap_or_default();
                Some(GpuTelemetry {
                    index,
                    name: d.name().ok(),
                    uuid: d.uuid().ok(),
                    utilization_gpu_percent: util.as_ref().map(|u| u.gpu),
                    utilization_memory_percent: util.as_ref().map(|u| u.memory),
                    memory_total_bytes: mem.as_ref().map(|m| m.total),
                    memory_used_bytes: mem.as_ref().map(|m| m.used),
                    memory_free_bytes: mem.as_ref().map(|m| m.free),
                    temperature_celsius: d.temperature(TemperatureSensor::Gpu).ok(),
                    power_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1e3),
                    power_limit_watts: d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1e3),
                    fan_percent: d.fan_speed(0).ok(),
                    encoder_percent: d.encoder_utilization().ok().map(|u| u.utilization),
                    decoder_percent: d.decoder_utilization().ok().map(|u| u.utilization),
                    processes: merge_processes(compute.iter().chain(graphics.iter())),
                })
            })
            .collect()
    }
}

/// Merges NVML's compute and graphics process lists by PID, sorted by PID. A process listed
/// twice gets the larger known figure; "not available" only when no list had one.
pub fn merge_processes<'a>(lists: impl Iterator<Item = &'a ProcessInfo>) -> Vec<GpuProcess> {
    let mut by_pid: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    for p in lists {
        let used = match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => Some(b),
            UsedGpuMemory::Unavailable => None,
        };
        let e = by_pid.entry(p.pid).or_insert(None);
        *e = (*e).max(used);
    }
    by_pid
        .into_iter()
        .map(|(pid, used_bytes)| GpuProcess { pid, used_bytes })
        .collect()
}

/// True when two samples differ in anything but their time.
pub fn changed(a: &NvmlSample, b: &NvmlSample) -> bool {
    a.gpus != b.gpus
}

/// A thread that samples NVML at a fixed interval and sends each sample down a channel.
/// Dropping it (or [`Poller::stop`]) ends the thread.
#[derive(Debug)]
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts sampling every `interval` (the first sample at once), with `clock` stamping
    /// each sample; samples arrive on the returned receiver. The thread ends when stopped or
    /// when the receiver is dropped.
    pub fn spawn(
        nvml: Nvml,
        interval: Duration,
        clock: fn() -> u64,
    ) -> std::io::Result<(Poller, mpsc::Receiver<NvmlSample>)> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vramtrace-nvml".into())
            .spawn(move || {
                // Sleep in short steps so that stopping does not wait a whole interval.
                let step = interval.min(Duration::from_millis(50));
                while !flag.load(Ordering::Relaxed) {
                    if tx.send(nvml.sample(clock())).is_err() {
                        break;
                    }
                    let mut slept = Duration::ZERO;
                    while slept < interval && !flag.load(Ordering::Relaxed) {
                        std::thread::sleep(step);
                        slept += step;
                    }
                }
            })?;
        Ok((
            Poller {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Ends the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A panic in the sampler has already been reported by the panic hook.
            let _ = t.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, used: UsedGpuMemory) -> ProcessInfo {
        ProcessInfo {
            pid,
            used_gpu_memory: used,
            gpu_instance_id: None,
            compute_instance_id: None,
        }
    }

    /// The real `libnvidia-ml.so.1` of Debian's libnvidia-ml1 is installed on the developers'
    /// and CI's machines, which have no GPU: NVML must refuse to initialize, say why, and not
    /// panic. On a machine with a GPU it initializes and answers.
    #[test]
    fn init_without_a_gpu_fails_with_a_reason() {
        match Nvml::init() {
            Err(e) => {
                eprintln!("NVML said: {}", e.reason);
                assert!(
                    e.reason.contains("NVML could not initialize")
                        || e.reason.contains("could not be loaded"),
                    "{}",
                    e.reason
                );
                if std::path::Path::new("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").exists()
                    && !std::path::Path::new("/proc/driver/nvidia").exists()
                {
                    // The library is there, the kernel module is not (a `/dev/nvidiactl`
                    // node alone proves nothing: containers and udev leave them behind).
                    assert!(e.reason.contains("Driver Not Loaded"), "{}", e.reason);
                }
                let info = e.info();
                assert!(!info.available);
                assert_eq!(info.reason.as_deref(), Some(e.reason.as_str()));
                assert!(info.gpus.is_empty());
            }
            Ok(nvml) => {
                let info = nvml.info();
                assert!(info.available);
                let s = nvml.sample(1);
                assert_eq!(s.gpus.len(), info.gpus.len());
            }
        }
    }

    #[test]
    fn process_lists_merge_by_pid() {
        let compute = [
            proc(30, UsedGpuMemory::Used(100)),
            proc(10, UsedGpuMemory::Unavailable),
            proc(20, UsedGpuMemory::Used(5)),
        ];
        let graphics = [
            proc(20, UsedGpuMemory::Used(7)),
            proc(10, UsedGpuMemory::Unavailable),
            proc(40, UsedGpuMemory::Unavailable),
            proc(30, UsedGpuMemory::Unavailable),
        ];
        let merged = merge_processes(compute.iter().chain(graphics.iter()));
        assert_eq!(
            merged,
            [
                GpuProcess {
                    pid: 10,
                    used_bytes: None
                },
                GpuProcess {
                    pid: 20,
                    used_bytes: Some(7)
                },
                GpuProcess {
                    pid: 30,
                    used_bytes: Some(100)
                },
                GpuProcess {
                    pid: 40,
                    used_bytes: None
                },
            ]
        );
    }

    #[test]
    fn samples_differ_only_in_their_gpus() {
        let a = NvmlSample {
            ts_ns: 1,
            gpus: vec![GpuSample {
                index: 0,
                used_bytes: Some(5),
                ..GpuSample::default()
            }],
        };
        let mut b = a.clone();
        b.ts_ns = 2;
        assert!(!changed(&a, &b));
        b.gpus[0].used_bytes = Some(6);
        assert!(changed(&a, &b));
    }
}
