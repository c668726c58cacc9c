//! `GET /metrics`: the Prometheus text format, or OpenMetrics when the scraper asks for it.
//!
//! Labels are bounded: per GPU and class always; per process only for the top N by bytes,
//! with a gauge of how many were left out; never a stack or an address. Names follow
//! Prometheus's conventions (base units, `_bytes`, `_total` on counters) and, where they
//! overlap, OpenTelemetry's `hw.gpu.memory.usage` / `hw.gpu.memory.limit`.

use std::fmt::Write as _;

use super::state::{Gpu, Model};
use crate::ledger::{Class, Ledger};
use crate::nvml::GpuTelemetry;

/// The exposition format a scrape asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A label value as the text formats accept it: backslash, quote and newline escaped;
/// other control characters replaced (the formats have no escape for them); at most
/// `MAX_LABEL` characters.
pub fn label_value(s: &str) -> String {
    const MAX_LABEL: usize = 128;
    let mut out = String::with_capacity(s.len().min(MAX_LABEL) + 2);
    for (i, c) in s.chars().enumerate() {
        if i == MAX_LABEL {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

struct Writer {
    out: String,
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

impl Writer {
    /// `name` is the sample name (counters end in `_total`).
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (family, ty) = match kind {
            Kind::Gauge => (name, "gauge"),
            Kind::Counter => match self.format {
                Format::OpenMetrics => (name.strip_suffix("_total").unwrap_or(name), "counter"),
                Format::Prometheus => (name, "counter"),
            },
        };
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {ty}");
        if self.format == Format::OpenMetrics && family.ends_with("_bytes") {
            let _ = writeln!(self.out, "# UNIT {family} bytes");
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Every value [`api_family`] gives.
pub const API_FAMILIES: [&str; 6] = ["device", "stream_ordered", "vmm", "array", "host", "other"];

/// The API family of a driver entry point, for counters that must stay few.
pub fn api_family(api: &str) -> &'static str {
    let base = api.split('_').next().unwrap_or(api);
    match base {
        "cuMemAllocAsync"
        | "cuMemAllocFromPoolAsync"
        | "cuMemFreeAsync"
        | "cuMemPoolTrimTo"
        | "cuMemPoolCreate"
        | "cuMemPoolDestroy"
        | "cuMemPoolSetAttribute"
        | "cuMemPoolGetAttribute" => "stream_ordered",
        "cuMemCreate"
        | "cuMemRelease"
        | "cuMemMap"
        | "cuMemUnmap"
        | "cuMemAddressReserve"
        | "cuMemAddressFree" => "vmm",
        "cuArrayCreate"
        | "cuArray3DCreate"
        | "cuMipmappedArrayCreate"
        | "cuArrayDestroy"
        | "cuMipmappedArrayDestroy" => "array",
        "cuMemAllocManaged"
        | "cuMemAllocHost"
        | "cuMemHostAlloc"
        | "cuMemFreeHost"
        | "cuMemHostRegister"
        | "cuMemHostUnregister" => "host",
        "cuMemAlloc" | "cuMemAllocPitch" | "cuMemFree" => "device",
        _ => "other",
    }
}

/// Everything `/metrics` says, in `format`.
pub fn render(
    model: &Model,
    ledger: &Ledger,
    gpus_now: &[GpuTelemetry],
    top: usize,
    format: Format,
) -> String {
    let mut w = Writer {
        out: String::with_capacity(16 * 1024),
        format,
    };
    w.family(
        "vramtrace_build_info",
        Kind::Gauge,
        "The vramtrace version serving these metrics.",
    );
    w.sample(
        "vramtrace_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    let gpus = model.gpus(ledger);
    w.family(
        "vramtrace_gpu_memory_traced_bytes",
        Kind::Gauge,
        "Live device memory allocated by traced processes, by GPU and class.",
    );
    for (gpu, sums) in &gpus {
        let g = gpu.label();
        for (c, b) in Class::ALL.iter().zip(sums.device) {
            if *c == Class::HostFallback || *c == Class::Pool {
                continue;
            }
            w.sample(
                "vramtrace_gpu_memory_traced_bytes",
                &[("gpu", &g), ("class", c.name())],
                b,
            );
        }
    }
    w.family(
        "vramtrace_gpu_memory_pool_held_bytes",
        Kind::Gauge,
        "Memory freed into stream-ordered pools and still held from the GPU.",
    );
    for (gpu, sums) in &gpus {
        w.sample(
            "vramtrace_gpu_memory_pool_held_bytes",
            &[("gpu", &gpu.label())],
            sums.pool_held,
        );
    }
    w.family(
        "vramtrace_host_fallback_bytes",
        Kind::Gauge,
        "Live host-RAM memory that traced processes gave the GPU (managed, pinned, registered, host VMM).",
    );
    w.sample("vramtrace_host_fallback_bytes", &[], model.host_bytes());
    w.family(
        "vramtrace_vram_bytes_used",
        Kind::Gauge,
        "Device memory traced right now, every process and GPU (pool-held bytes apart).",
    );
    w.sample("vramtrace_vram_bytes_used", &[], model.vram_bytes_used());

    nvml(&mut w, ledger);
    telemetry(&mut w, gpus_now);

    w.family(
        "vramtrace_allocations_total",
        Kind::Counter,
        "Allocations made, by memory kind.",
    );
    for (kind, n) in &model.allocations {
        w.sample("vramtrace_allocations_total", &[("kind", kind)], *n);
    }
    // Every family from the start, at 0: a rate over a counter that appears with its first
    // failure would miss that failure, and a dashboard would show no data instead of none.
    let mut failed: std::collections::BTreeMap<&str, u64> =
        API_FAMILIES.iter().map(|f| (*f, 0)).collect();
    for p in ledger.processes() {
        for (api, f) in &p.failed {
            *failed.entry(api_family(api)).or_default() += f.count;
        }
    }
    w.family(
        "vramtrace_failed_calls_total",
        Kind::Counter,
        "Driver calls that returned an error, by API family.",
    );
    for (family, n) in &failed {
        w.sample("vramtrace_failed_calls_total", &[("family", family)], *n);
    }
    w.family(
        "vramtrace_oom_total",
        Kind::Counter,
        "Requests that failed for want of GPU memory.",
    );
    w.sample("vramtrace_oom_total", &[], model.ooms);
    w.family(
        "vramtrace_host_findings_total",
        Kind::Counter,
        "Allocations that placed memory in host RAM.",
    );
    w.sample("vramtrace_host_findings_total", &[], model.host_findings);
    w.family(
        "vramtrace_lost_events_total",
        Kind::Counter,
        "Events the kernel side could not deliver.",
    );
    w.sample("vramtrace_lost_events_total", &[], model.lost_events);

    processes(&mut w, model, ledger, top);
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

/// NVML's own figures per GPU, when it has them: absent, never zero, when it does not.
fn nvml(w: &mut Writer, ledger: &Ledger) {
    let info = ledger.nvml().info();
    w.family(
        "vramtrace_nvml_up",
        Kind::Gauge,
        "1 when NVML answered, 0 when it could not be used.",
    );
    w.sample(
        "vramtrace_nvml_up",
        &[],
        u64::from(info.is_some_and(|i| i.available)),
    );
    let Some(sample) = ledger.nvml().latest() else {
        return;
    };
    let gpu_info = |i: u32| info.and_then(|inf| inf.gpus.iter().find(|g| g.index == i));
    for (name, help, pick) in [
        (
            "vramtrace_gpu_memory_used_bytes",
            "GPU memory in use as NVML reports it (OpenTelemetry hw.gpu.memory.usage).",
            (|g: &crate::trace::GpuSample| g.used_bytes) as fn(&_) -> Option<u64>,
        ),
        (
            "vramtrace_gpu_memory_limit_bytes",
            "GPU memory in all as NVML reports it (OpenTelemetry hw.gpu.memory.limit).",
            |g| g.total_bytes,
        ),
        (
            "vramtrace_gpu_memory_free_bytes",
            "GPU memory free as NVML reports it.",
            |g| g.free_bytes,
        ),
    ] {
        w.family(name, Kind::Gauge, help);
        for g in &sample.gpus {
            let Some(v) = pick(g) else { continue };
            let gi = gpu_info(g.index);
            let uuid = gi.and_then(|i| i.uuid.as_deref()).unwrap_or("");
            let model_name = gi.and_then(|i| i.name.as_deref()).unwrap_or("");
            w.sample(
                name,
                &[
                    ("gpu", &Gpu::Nvml(g.index).label()),
                    ("uuid", uuid),
                    ("model", model_name),
                ],
                v,
            );
        }
    }
}

/// What the telemetry poller read of each GPU beside memory: utilization, temperature and
/// power. A figure the GPU did not give is absent, never zero.
fn telemetry(w: &mut Writer, gpus: &[GpuTelemetry]) {
    fn percent(v: Option<u32>) -> Option<f64> {
        v.map(|p| f64::from(p) / 100.0)
    }
    for (name, help, pick) in [
        (
            "vramtrace_gpu_utilization_ratio",
            "Share of the last sample period in which a kernel ran on the GPU (NVML).",
            (|g: &GpuTelemetry| percent(g.utilization_gpu_percent))
                as fn(&GpuTelemetry) -> Option<f64>,
        ),
        (
            "vramtrace_gpu_memory_activity_ratio",
            "Share of the last sample period in which device memory was read or written (NVML).",
            |g| percent(g.utilization_memory_percent),
        ),
        (
            "vramtrace_gpu_temperature_celsius",
            "GPU temperature (NVML).",
            |g| g.temperature_celsius.map(f64::from),
        ),
        ("vramtrace_gpu_power_watts", "GPU power draw (NVML).", |g| {
            g.power_watts
        }),
        (
            "vramtrace_gpu_power_limit_watts",
            "GPU power limit (NVML).",
            |g| g.power_limit_watts,
        ),
    ] {
        if gpus.iter().all(|g| pick(g).is_none()) {
            continue;
        }
        w.family(name, Kind::Gauge, help);
        for g in gpus {
            let Some(v) = pick(g) else { continue };
            w.sample(
                name,
                &[
                    ("gpu", &Gpu::Nvml(g.index).label()),
                    ("uuid", g.uuid.as_deref().unwrap_or("")),
                    ("model", g.name.as_deref().unwrap_or("")),
                ],
                v,
            );
        }
    }
}

/// Per-process series for the top `top` processes by bytes, and how many were left out.
fn processes(w: &mut Writer, model: &Model, ledger: &Ledger, top: usize) {
    let ranked = model.ranked();
    w.family(
        "vramtrace_processes",
        Kind::Gauge,
        "Traced processes running now.",
    );
    w.sample("vramtrace_processes", &[], ranked.len() as u64);
    w.family(
        "vramtrace_processes_omitted",
        Kind::Gauge,
        "Running traced processes left out of the per-process series (beyond --top).",
    );
    w.sample(
        "vramtrace_processes_omitted",
        &[],
        ranked.len().saturating_sub(top) as u64,
    );
    let shown = &ranked[..ranked.len().min(top)];
    let labels: Vec<[String; 7]> = shown
        .iter()
        .map(|(proc, _)| {
            let st = ledger.process(*proc);
            let info = st.and_then(|s| s.info.as_ref());
            let command = info.map(|i| i.cmdline.join(" ")).unwrap_or_default();
            [
                st.map_or(0, |s| s.pid).to_string(),
                st.map(|s| s.comm().to_owned()).unwrap_or_default(),
                command,
                info.and_then(|i| i.container.clone()).unwrap_or_default(),
                info.and_then(|i| i.pod_uid.clone()).unwrap_or_default(),
                info.and_then(|i| i.pod_name.clone()).unwrap_or_default(),
                info.and_then(|i| i.pod_namespace.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    for (name, help, pick) in [
        (
            "vramtrace_process_device_bytes",
            "Live device memory of one of the top processes.",
            (|r: &super::state::ProcRow| r.device_bytes()) as fn(&_) -> u64,
        ),
        (
            "vramtrace_process_pool_held_bytes",
            "Bytes held in stream-ordered pools by one of the top processes.",
            |r| r.pool_held_bytes(),
        ),
        (
            "vramtrace_process_host_bytes",
            "Live host-RAM memory given to the GPU by one of the top processes.",
            |r| r.host_bytes,
        ),
    ] {
        w.family(name, Kind::Gauge, help);
        for ((_, row), l) in shown.iter().zip(&labels) {
            w.sample(
                name,
                &[
                    ("pid", &l[0]),
                    ("comm", &l[1]),
                    ("command", &l[2]),
                    ("container", &l[3]),
                    ("pod_uid", &l[4]),
                    ("pod", &l[5]),
                    ("namespace", &l[6]),
                ],
                pick(row),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_bounded() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label_value("x\u{1b}[31my\u{7}"), "x\u{FFFD}[31my\u{FFFD}");
        assert_eq!(label_value("<script>"), "<script>");
        assert_eq!(label_value(&"a".repeat(500)).chars().count(), 129);
    }

    #[test]
    fn api_families() {
        assert_eq!(api_family("cuMemAlloc_v2"), "device");
        assert_eq!(api_family("cuMemAllocAsync_ptsz"), "stream_ordered");
        assert_eq!(api_family("cuMemCreate"), "vmm");
        assert_eq!(api_family("cuMemHostAlloc"), "host");
        assert_eq!(api_family("cuArray3DCreate_v2"), "array");
        assert_eq!(api_family("cuCtxCreate_v2"), "other");
        let (model, ledger) = (Model::default(), Ledger::new());
        let text = render(&model, &ledger, &[], 20, Format::Prometheus);
        for family in API_FAMILIES {
            let zero = format!("vramtrace_failed_calls_total{{family=\"{family}\"}} 0\n");
            assert!(text.contains(&zero), "{zero} in {text}");
        }
    }

    #[test]
    fn openmetrics_names_counters_by_family_and_ends_with_eof() {
        let (model, ledger) = (Model::default(), Ledger::new());
        let om = render(&model, &ledger, &[], 20, Format::OpenMetrics);
        assert!(om.contains("# TYPE vramtrace_oom counter\n"));
        assert!(om.contains("\nvramtrace_oom_total 0\n"));
        assert!(om.ends_with("# EOF\n"));
        let text = render(&model, &ledger, &[], 20, Format::Prometheus);
        assert!(text.contains("# TYPE vramtrace_oom_total counter\n"));
        assert!(!text.contains("# EOF"));
    }
}
