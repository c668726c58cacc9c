//! Telemetry beside the tracer: what NVML says about each GPU (utilization, memory,
//! temperature, power, fan, encoder and decoder, processes and their users), or
//! `nvidia-smi`'s CSV when NVML cannot load, or "unavailable" with the reason; and the
//! machine's own figures (CPU, memory, load, uptime, disks) from `sysinfo`. Polled on a
//! thread of its own; a figure that could not be read is absent, never zero.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Value, json};

use super::Shared;
use crate::nvml::{GpuTelemetry, Nvml};

/// The poll interval unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest poll interval accepted; anything under [`DEFAULT_INTERVAL`] is warned about.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Where the GPU figures came from.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Gpus {
    Nvml { gpus: Vec<GpuTelemetry> },
    NvidiaSmi { gpus: Vec<GpuTelemetry> },
    Unavailable { reason: String },
}

/// The columns asked of `nvidia-smi --query-gpu`, in [`parse_smi`]'s order.
pub const SMI_QUERY: &str = "index,name,uuid,utilization.gpu,utilization.memory,memory.total,\
memory.used,memory.free,temperature.gpu,power.draw,power.limit,fan.speed,\
utilization.encoder,utilization.decoder";

/// Parses `nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits`: a field that
/// says `[N/A]`, `[Not Supported]` or does not parse is `None`. Memory is in MiB there.
pub fn parse_smi(csv: &str) -> Vec<GpuTelemetry> {
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let text = |i: usize| {
                f.get(i)
                    .filter(|s| !s.is_empty() && !s.starts_with('['))
                    .map(|s| (*s).to_owned())
            };
            let num = |i: usize| text(i).and_then(|s| s.parse::<f64>().ok());
            let int = |i: usize| num(i).map(|v| v as u32);
            let mib = |i: usize| num(i).map(|v| (v * 1024.0 * 1024.0) as u64);
            Some(GpuTelemetry {
                index: int(0)?,
                name: text(1),
                uuid: text(2),
                utilization_gpu_percent: int(3),
                utilization_memory_percent: int(4),
                memory_total_bytes: mib(5),
                memory_used_bytes: mib(6),
                memory_free_bytes: mib(7),
                temperature_celsius: int(8),
                power_watts: num(9),
                power_limit_watts: num(10),
                fan_percent: int(11),
                encoder_percent: int(12),
                decoder_percent: int(13),
                processes: Vec::new(),
            })
        })
        .collect()
}

/// nvidia-smi's figures, when it is on `PATH`. It is looked for before it is run: a program
/// that cannot be started still costs a fork, and the failed child's exit signal, sent while
/// the forking thread has every signal blocked, interrupts whatever another thread of the
/// process is doing in the kernel (a program being verified aborts with `EAGAIN`).
fn smi() -> Result<Vec<GpuTelemetry>, String> {
    let program = which::which("nvidia-smi").map_err(|e| format!("nvidia-smi: {e}"))?;
    let out = std::process::Command::new(program)
        .arg(format!("--query-gpu={SMI_QUERY}"))
        .arg("--format=csv,noheader,nounits")
        .output()
        .map_err(|e| format!("nvidia-smi could not run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nvidia-smi failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_smi(&String::from_utf8_lossy(&out.stdout)))
}

/// The user a process runs as, from `/proc` and `/etc/passwd`.
fn user_of(pid: u32) -> Option<(u32, Option<String>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
    });
    Some((uid, name))
}

/// The poller's state: NVML once loaded, or why not; sysinfo's handles.
pub struct Poller {
    nvml: Result<Nvml, String>,
    /// The GPUs of the latest reading.
    pub last_gpus: Vec<GpuTelemetry>,
    system: Result<sysinfo::System, String>,
    disks: Result<sysinfo::Disks, String>,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

impl Poller {
    pub fn new() -> Self {
        Poller {
            nvml: Nvml::init().map_err(|e| e.reason),
            last_gpus: Vec::new(),
            system: sysinfo::System::new().map_err(|e| e.to_string()),
            disks: sysinfo::Disks::new_with_refreshed_list().map_err(|e| e.to_string()),
        }
    }

    fn gpus(&self) -> Gpus {
        match &self.nvml {
            Ok(n) => Gpus::Nvml {
                gpus: n.telemetry(),
            },
            Err(nvml_reason) => match smi() {
                Ok(gpus) => Gpus::NvidiaSmi { gpus },
                Err(smi_reason) => Gpus::Unavailable {
                    reason: format!("{nvml_reason}; {smi_reason}"),
                },
            },
        }
    }

    /// One reading of everything.
    pub fn poll(&mut self) -> Value {
        let gpus = self.gpus();
        let users: Vec<Value> = match &gpus {
            Gpus::Nvml { gpus } | Gpus::NvidiaSmi { gpus } => gpus
                .iter()
                .flat_map(|g| g.processes.iter().map(move |p| (g.index, p)))
                .map(|(gpu, p)| {
                    let user = user_of(p.pid);
                    json!({ "gpu": gpu, "pid": p.pid, "used_bytes": p.used_bytes,
                            "uid": user.as_ref().map(|u| u.0),
                            "user": user.and_then(|u| u.1) })
                })
                .collect(),
            Gpus::Unavailable { .. } => Vec::new(),
        };
        self.last_gpus = match &gpus {
            Gpus::Nvml { gpus } | Gpus::NvidiaSmi { gpus } => gpus.clone(),
            Gpus::Unavailable { .. } => Vec::new(),
        };
        json!({ "gpus": gpus, "gpu_processes": users, "system": self.system() })
    }

    /// The machine's figures; each one it could not read says why instead.
    fn system(&mut self) -> Value {
        let unavailable = |e: &dyn std::fmt::Display| json!({ "unavailable": e.to_string() });
        let mut v = match self.system.as_mut() {
            Ok(sys) => {
                sys.refresh_cpu_usage();
                sys.refresh_memory();
                json!({
                    "cpu_percent": sys.global_cpu_usage(),
                    "cpus": sys.cpus().len(),
                    "memory_total_bytes": sys.total_memory(),
                    "memory_used_bytes": sys.used_memory(),
                })
            }
            Err(e) => json!({ "cpu": unavailable(e), "memory": unavailable(e) }),
        };
        v["load_average"] = match sysinfo::System::load_average() {
            Ok(l) => json!([l.one, l.five, l.fifteen]),
            Err(e) => unavailable(&e),
        };
        v["uptime_seconds"] = match sysinfo::System::uptime() {
            Ok(u) => json!(u),
            Err(e) => unavailable(&e),
        };
        v["disks"] = match self.disks.as_mut() {
            Ok(disks) => {
                disks.refresh(true);
                disks
                    .iter()
                    .map(|d| {
                        json!({ "mount": d.mount_point().to_string_lossy(),
                                "total_bytes": d.total_space(),
                                "available_bytes": d.available_space() })
                    })
                    .collect()
            }
            Err(e) => unavailable(e),
        };
        v
    }
}

/// Polls every `interval` into the shared state until the process ends.
pub fn spawn(shared: Arc<Shared>, interval: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(move || {
            let mut poller = Poller::new();
            // sysinfo's CPU figure is the use between two refreshes.
            if let Ok(sys) = poller.system.as_mut() {
                sys.refresh_cpu_usage();
            }
            loop {
                let started = Instant::now();
                std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.min(interval));
                let t = poller.poll();
                {
                    let mut s = shared.lock();
                    s.telemetry = t;
                    s.telemetry_seq += 1;
                    s.gpu_telemetry.clone_from(&poller.last_gpus);
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_csv_keeps_what_it_could_not_read_absent() {
        let csv = "0, NVIDIA H100 80GB HBM3, GPU-abc, 37, 5, 81559, 1024, 80535, 41, 71.23, 700.00, [N/A], 0, 0\n\
                   1, Tesla T4, GPU-def, [Not Supported], [N/A], 15360, 0, 15360, 30, [N/A], 70.00, 0, 0, 0\n";
        let g = parse_smi(csv);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].index, 0);
        assert_eq!(g[0].name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(g[0].utilization_gpu_percent, Some(37));
        assert_eq!(g[0].memory_used_bytes, Some(1024 << 20));
        assert_eq!(g[0].power_watts, Some(71.23));
        assert_eq!(g[0].fan_percent, None);
        assert_eq!(g[1].utilization_gpu_percent, None);
        assert_eq!(g[1].power_watts, None);
        assert_eq!(g[1].fan_percent, Some(0));
    }

    #[test]
    fn without_a_gpu_the_figures_are_unavailable_with_the_reason() {
        let mut p = Poller::new();
        let t = p.poll();
        if p.nvml.is_err() {
            assert_eq!(t["gpus"]["source"], "unavailable", "{t}");
            assert!(t["gpus"]["reason"].as_str().is_some_and(|r| !r.is_empty()));
            assert!(t["gpus"].get("gpus").is_none(), "no zeros in their place");
        }
        assert!(
            t["system"]["memory_total_bytes"]
                .as_u64()
                .is_some_and(|m| m > 0)
        );
        assert!(t["system"]["cpus"].as_u64().is_some_and(|c| c > 0));
    }
}
