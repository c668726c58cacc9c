//! The human-readable report: what a person reads after an out-of-memory crash.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{ApiTotal, HeldAllocation, ProcessReport, Report};
use crate::api::cuda_error_name;
use crate::trace::Integrity;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Bytes in binary units with one decimal: `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    let (unit, name) = match b {
        b if b >= TIB => (TIB, "TiB"),
        b if b >= GIB => (GIB, "GiB"),
        b if b >= MIB => (MIB, "MiB"),
        b if b >= KIB => (KIB, "KiB"),
        _ => return format!("{b} B"),
    };
    format!("{:.1} {name}", b as f64 / unit as f64)
}

/// Human units and the exact count: `1.5 GiB (1610612736 bytes)`.
fn bytes_exact(b: u64) -> String {
    if b < KIB {
        format!("{b} bytes")
    } else {
        format!("{} ({b} bytes)", human_bytes(b))
    }
}

pub(super) fn secs(ns: u64) -> String {
    format!("{}.{:03} s", ns / 1_000_000_000, (ns / 1_000_000) % 1000)
}

/// A trace time relative to the start of the recording, when the header says when that was.
pub(super) fn at(ts: u64, start: Option<u64>) -> String {
    match start {
        Some(s) if s > 0 && ts >= s => format!("+{}", secs(ts - s)),
        _ => format!("t={ts} ns"),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix nanoseconds (proleptic Gregorian calendar).
pub(super) fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms", civil_from_days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn device_name(d: Option<i32>) -> String {
    d.map_or_else(|| "GPU ?".to_owned(), |d| format!("GPU {d}"))
}

/// The report as text, one section per process. Problems with the trace itself come first
/// and loudly: figures from a cut, altered or lossy trace are not to be trusted blindly.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let start = r.header.as_ref().map(|h| h.start_monotonic_ns);

    match &r.header {
        Some(h) => {
            let _ = writeln!(
                o,
                "trace of {} (kernel {}), recorded by vramtrace {}, format {}",
                h.host, h.kernel, h.tool_version, h.format_version
            );
            let _ = write!(o, "started {}", utc(h.start_unix_ns));
            if let Some(d) = r.duration_ns {
                let _ = write!(o, ", lasted {}", secs(d));
            }
            if let Some(why) = &r.stopped_by
                && r.at_ns.is_none()
            {
                let _ = write!(o, ", stopped: {why}");
            }
            o.push('\n');
            for l in &h.libraries {
                let _ = writeln!(
                    o,
                    "driver library {} (build id {}, {} probes)",
                    l.path,
                    l.build_id.as_deref().unwrap_or("unknown"),
                    l.probes
                );
            }
        }
        None => {
            let _ = writeln!(
                o,
                "!!! NO HEADER: where and how this trace was recorded is unknown"
            );
        }
    }

    if let Some(ts) = r.at_ns {
        let _ = writeln!(
            o,
            "state at {} (ts {ts} ns), as if the recording had ended there: figures \"at \
             exit\" are at that moment; later records were read, not counted",
            at(ts, start)
        );
    }
    if r.filters.any() {
        let f = &r.filters;
        let mut parts = Vec::new();
        if !f.pids.is_empty() {
            let pids: Vec<String> = f.pids.iter().map(u32::to_string).collect();
            parts.push(format!("pid {}", pids.join(", ")));
        }
        if let Some(g) = f.gpu {
            parts.push(format!(
                "GPU {g} (calls are counted per process, on every GPU)"
            ));
        }
        match (f.from_s, f.to_s) {
            (Some(a), Some(b)) => parts.push(format!("from +{a:.3} s to +{b:.3} s")),
            (Some(a), None) => parts.push(format!("from +{a:.3} s")),
            (None, Some(b)) => parts.push(format!("to +{b:.3} s")),
            (None, None) => {}
        }
        let _ = writeln!(o, "filtered: {}", parts.join("; "));
        if f.to_s.is_some() {
            let _ = writeln!(
                o,
                "  figures \"at exit\" are at the window's end; calls, peaks and failures are \
                 those inside the window"
            );
        } else if f.from_s.is_some() {
            let _ = writeln!(o, "  calls, peaks and failures are those inside the window");
        }
    }
    if r.integrity != Integrity::Complete {
        let _ = writeln!(o, "!!! {}", r.integrity.describe());
        for p in r.integrity_notes.iter().take(3) {
            let _ = writeln!(o, "      line {}: {}", p.line, p.message);
        }
        if r.integrity_notes.len() > 3 {
            let _ = writeln!(o, "      ... and {} more", r.integrity_notes.len() - 3);
        }
    }
    if r.lost_events > 0 {
        let _ = writeln!(
            o,
            "!!! {} EVENTS LOST in the kernel: allocations or frees are missing, \
             live and peak figures may be wrong",
            r.lost_events
        );
    }
    if !r.problems.is_empty() {
        let _ = writeln!(o, "!!! {} UNREADABLE LINES SKIPPED:", r.problems.len());
        for p in r.problems.iter().take(5) {
            let _ = writeln!(o, "      line {}: {}", p.line, p.message);
        }
        if r.problems.len() > 5 {
            let _ = writeln!(o, "      ... and {} more", r.problems.len() - 5);
        }
    }
    if r.integrity == Integrity::Complete && r.lost_events == 0 && r.problems.is_empty() {
        let digest = match r.digest_ok {
            Some(true) => "digest verified",
            _ => "digest not checked",
        };
        let _ = writeln!(o, "trace complete, {digest}, no events lost");
    }
    if r.stack_failed > 0 {
        let _ = writeln!(
            o,
            "note: {} call stacks could not be captured",
            r.stack_failed
        );
    }

    let _ = writeln!(
        o,
        "all processes: peak device {} at {}",
        bytes_exact(r.machine.peak_device_bytes),
        r.machine
            .peak_ts_ns
            .map_or_else(|| "-".to_owned(), |t| at(t, start))
    );
    render_nvml(&mut o, r);
    if r.processes.is_empty() {
        let _ = writeln!(o, "\nno traced process made a GPU memory call");
    }
    for p in &r.processes {
        o.push('\n');
        render_process(&mut o, p, start);
    }
    super::render_post::render_postmortem(&mut o, &r.postmortem, start);
    o
}

fn render_process(o: &mut String, p: &ProcessReport, start: Option<u64>) {
    let end = p.end_ts_ns.map(|t| at(t, start)).unwrap_or_default();
    if p.exited {
        let _ = writeln!(o, "pid {} ({}) exited at {end}", p.pid, p.comm);
    } else if p.untraced_after {
        let _ = writeln!(
            o,
            "pid {} ({}) still running when the recording stopped: it went on untraced",
            p.pid, p.comm
        );
    } else {
        let _ = writeln!(
            o,
            "pid {} ({}) still running at end of trace",
            p.pid, p.comm
        );
    }
    if p.attached {
        let _ = writeln!(
            o,
            "  traced since the recording started (it was already running): what it \
             allocated before is not in these figures; NVML's figure below still counts it"
        );
    }
    if let Some(v) = &p.cuda_visible_devices {
        let _ = writeln!(o, "  CUDA_VISIBLE_DEVICES={v}");
    }
    if !p.cmdline.is_empty() {
        let _ = writeln!(o, "  cmdline: {}", p.cmdline.join(" "));
    }
    let when = p
        .peak_ts_ns
        .map_or_else(String::new, |t| format!(" at {}", at(t, start)));
    let _ = writeln!(
        o,
        "  peak device bytes:       {}{when}",
        bytes_exact(p.peak_device_bytes)
    );
    if p.peak_device_and_pool_bytes > p.peak_device_bytes {
        let _ = writeln!(
            o,
            "  peak incl. pool-held:    {}",
            bytes_exact(p.peak_device_and_pool_bytes)
        );
    }
    if p.peak_host_bytes > 0 {
        let _ = writeln!(
            o,
            "  peak host memory:        {} (lives in host RAM, not VRAM)",
            bytes_exact(p.peak_host_bytes)
        );
    }
    let label = if p.exited {
        "held at exit:"
    } else {
        "held at end of trace:"
    };
    let _ = writeln!(
        o,
        "  {label:<24} device {}, pool-held {}, host {}, in {} live allocation(s)",
        bytes_exact(p.device_bytes_at_exit),
        bytes_exact(p.pool_held_bytes_at_exit),
        bytes_exact(p.host_bytes_at_exit),
        p.live_allocations_at_exit
    );
    if p.devices.len() > 1 || p.devices.iter().any(|d| d.device.is_none()) {
        for d in &p.devices {
            let _ = writeln!(
                o,
                "    {:<8} peak {}, {} {}",
                device_name(d.device),
                bytes_exact(d.peak_device_bytes),
                if p.exited { "at exit" } else { "at end" },
                bytes_exact(d.device_bytes_at_exit)
            );
        }
    }

    render_process_nvml(o, p);
    render_classes(o, p, start);
    render_api_table(o, p);
    render_accounted(o, p);
    render_graph_pools(o, p);

    if p.failed_total > 0 {
        let _ = writeln!(o, "  failures ({}):", p.failed_total);
        for (api, f) in &p.failed {
            let rets: Vec<String> = f
                .rets
                .iter()
                .map(|(code, n)| format!("{n} x {} ({code})", cuda_error_name(*code)))
                .collect();
            let _ = write!(o, "    {api}: {}", rets.join(", "));
            if f.bytes > 0 {
                let _ = write!(o, "; {} requested in all", bytes_exact(f.bytes));
            }
            o.push('\n');
        }
    }

    if !p.unreturned.is_empty() {
        let calls: Vec<String> = p
            .unreturned
            .iter()
            .map(|(api, n)| format!("{n} x {api}"))
            .collect();
        let _ = writeln!(
            o,
            "  never returned (the thread died in the driver; nothing was made): {}",
            calls.join(", ")
        );
    }

    if !p.largest_at_exit.is_empty() {
        let _ = writeln!(
            o,
            "  largest held {}:",
            if p.exited { "at exit" } else { "at end" }
        );
        for a in &p.largest_at_exit {
            let _ = writeln!(o, "    {}", held_line(a, start));
        }
        let count =
            (p.live_allocations_at_exit as u64).saturating_sub(p.largest_at_exit.len() as u64);
        if count > 0 {
            let listed: u64 = p.largest_at_exit.iter().map(|a| a.bytes).sum();
            let held = p.device_bytes_at_exit + p.host_bytes_at_exit;
            let _ = writeln!(
                o,
                "    and {count} smaller allocation(s) holding {}",
                human_bytes(held.saturating_sub(listed))
            );
        }
    }

    if !p.anomalies.is_empty() {
        let n: u64 = p.anomalies.values().map(|a| a.count).sum();
        let _ = writeln!(
            o,
            "  anomalies ({n}, inconsistent input; figures may be off):"
        );
        for (kind, a) in &p.anomalies {
            let _ = write!(o, "    {kind}: {}", a.count);
            if let Some(e) = a.examples.first() {
                let _ = write!(o, ", e.g. {e}");
            }
            o.push('\n');
        }
    }
}

fn percent(coverage: Option<f64>) -> String {
    coverage.map_or_else(
        || "coverage unknown".to_owned(),
        |c| format!("{:.0}% covered", c * 100.0),
    )
}

fn maybe_bytes(b: Option<u64>) -> String {
    b.map_or_else(|| "unknown".to_owned(), bytes_exact)
}

/// NVML: unavailable and why, or per GPU what NVML reported against what was traced.
fn render_nvml(o: &mut String, r: &Report) {
    let Some(n) = &r.nvml else { return };
    if !n.info.available {
        let _ = writeln!(
            o,
            "NVML: not available ({})",
            n.info.reason.as_deref().unwrap_or("no reason recorded")
        );
        return;
    }
    let _ = writeln!(
        o,
        "NVML: driver {}, {} sample(s)",
        n.info.driver_version.as_deref().unwrap_or("?"),
        n.samples
    );
    for g in &r.machine.nvml_gpus {
        let info = n.info.gpus.iter().find(|i| i.index == g.index);
        let name = info.and_then(|i| i.name.as_deref()).unwrap_or("?");
        let _ = writeln!(
            o,
            "  NVML GPU {} ({name}): used {}, traced {} ({}) at the last sample",
            g.index,
            maybe_bytes(g.used_bytes),
            bytes_exact(g.traced_bytes),
            percent(g.coverage)
        );
        for u in &g.untraced_processes {
            let _ = writeln!(o, "    untraced pid {}: {}", u.pid, maybe_bytes(u.bytes));
        }
    }
}

fn class_line(m: &std::collections::BTreeMap<crate::ledger::Class, u64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, b)| **b > 0)
        .map(|(c, b)| format!("{c} {}", human_bytes(*b)))
        .collect();
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Classes at exit and at the peak, host-memory findings and out-of-memory failures.
fn render_classes(o: &mut String, p: &ProcessReport, start: Option<u64>) {
    if p.classes_at_exit.values().any(|b| *b > 0) || p.classes_at_peak.values().any(|b| *b > 0) {
        let label = if p.exited {
            "classes at exit:"
        } else {
            "classes at end:"
        };
        let _ = writeln!(o, "  {label:<24} {}", class_line(&p.classes_at_exit));
        let _ = writeln!(
            o,
            "  {:<24} {}",
            "classes at peak, then:",
            class_line(&p.classes_at_peak)
        );
    }
    if !p.host_fallback.is_empty() {
        let total = p.host_fallback_total.max(p.host_fallback.len() as u64);
        let signalled = p
            .host_fallback
            .iter()
            .filter(|h| h.finding.signalled.is_some())
            .count();
        let _ = write!(
            o,
            "  host-memory allocations ({total}, in host RAM, not VRAM)"
        );
        if signalled > 0 {
            let _ = write!(o, ", {signalled} signalled");
        }
        o.push_str(":\n");
        for h in p.host_fallback.iter().take(5) {
            let _ = write!(
                o,
                "    {:>10}  {} at {}",
                human_bytes(h.finding.bytes),
                h.finding.api,
                at(h.finding.ts_ns, start)
            );
            if let Some(f) = h.finding.flags {
                let _ = write!(o, ", flags {f:#x}");
            }
            if let Some(sig) = h.finding.signalled {
                let _ = write!(o, ", signal {sig} sent");
            }
            if let Some(top) = h.stack.first() {
                let _ = write!(o, ", from {top}");
            }
            o.push('\n');
        }
        if p.host_fallback.len() > 5 {
            let _ = writeln!(o, "    ... and {} more", total - 5);
        }
    }
    if !p.imports.is_empty() {
        let total = p.imports_total.max(p.imports.len() as u64);
        let _ = writeln!(
            o,
            "  mapped from other processes ({total}; mapped, not owned: not in the figures above):"
        );
        for m in p.imports.iter().take(5) {
            let i = &m.mapping;
            let size = if i.size_unknown {
                "size unknown".to_owned()
            } else {
                human_bytes(i.bytes)
            };
            let _ = write!(o, "    {size:>10}  {} at {}", i.api, at(i.ts_ns, start));
            if let Some(a) = i.addr {
                let _ = write!(o, ", {a:#x}");
            }
            let _ = write!(o, ", {}", m.from);
            if let Some(w) = &i.owner {
                let _ = write!(o, " ({} #{}", w.api, w.seq);
                if let Some(a) = w.addr {
                    let _ = write!(o, " at {a:#x}");
                }
                o.push(')');
            }
            match i.end_ts_ns {
                Some(t) => {
                    let _ = write!(o, ", closed at {}", at(t, start));
                }
                None => o.push_str(", still open"),
            }
            o.push('\n');
        }
        if p.imports.len() > 5 {
            let _ = writeln!(o, "    ... and {} more", total - 5);
        }
    }
    // Each failure is told once, in the postmortem's OUT OF MEMORY section, which extends
    // the Ledger's snapshot; the process names how many.
    if !p.ooms.is_empty() {
        let gpus: std::collections::BTreeSet<String> =
            p.ooms.iter().map(|x| device_name(x.oom.device)).collect();
        let _ = writeln!(
            o,
            "  out-of-memory failures: {} on {} (see OUT OF MEMORY below)",
            p.ooms.len(),
            gpus.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
}

fn render_process_nvml(o: &mut String, p: &ProcessReport) {
    for d in &p.nvml {
        let gpu = d.nvml_index.map_or_else(
            || format!("{} (no NVML index)", device_name(d.device)),
            |i| format!("NVML GPU {i}"),
        );
        let diff = d.difference_bytes.map_or_else(String::new, |x| {
            let sign = if x < 0 { "-" } else { "" };
            format!(", not traced {sign}{}", human_bytes(x.unsigned_abs()))
        });
        let _ = writeln!(
            o,
            "  NVML {gpu}: traced {} of {} ({}{diff})",
            bytes_exact(d.traced_bytes),
            maybe_bytes(d.nvml_bytes),
            percent(d.coverage)
        );
    }
}

fn held_line(a: &HeldAllocation, start: Option<u64>) -> String {
    let mut s = format!(
        "{:>10}  {} by {}",
        human_bytes(a.bytes),
        a.mem.name(),
        a.api
    );
    if let Some(addr) = a.addr {
        let _ = write!(s, " at {addr:#x}");
    }
    if let Some(h) = a.handle {
        let _ = write!(s, " handle {h:#x}");
    }
    if a.mem.is_host() {
        s.push_str(" in host RAM");
    } else {
        let _ = write!(s, " on {}", device_name(a.device));
    }
    let _ = write!(s, ", since {}", at(a.ts_ns, start));
    match (&a.top_frame, a.stack) {
        (Some(f), _) => {
            let _ = write!(s, ", from {f}");
        }
        (None, Some(st)) => {
            let _ = write!(s, ", stack {st} (not in the trace)");
        }
        (None, None) => {}
    }
    if a.filled_from_host > 0 {
        let _ = write!(s, ", {} filled from host", human_bytes(a.filled_from_host));
    }
    if let Some(c) = a.class {
        let _ = write!(s, "; {c}");
        if !a.evidence.is_empty() {
            let _ = write!(s, " ({})", a.evidence.join(", "));
        }
    }
    s
}

/// Every byte the process allocated, accounted for: what ended, by cause, and what it
/// held at exit (or at the end). The API table counts calls; this line counts allocations,
/// so that a release of memory still mapped, a context's teardown or an exit are where the
/// bytes went, and the figures add up.
fn render_accounted(o: &mut String, p: &ProcessReport) {
    if p.started.count == 0 {
        return;
    }
    let exit = crate::ledger::EndCause::ProcessExit.name();
    let ended: Vec<(&String, &ApiTotal)> = p.ended.iter().filter(|(c, _)| *c != exit).collect();
    let ended_bytes: u64 = ended.iter().map(|(_, e)| e.bytes).sum();
    let held = p.device_bytes_at_exit + p.host_bytes_at_exit;
    let label = if p.exited { "at exit" } else { "at end" };
    let _ = write!(
        o,
        "  {:<24} allocated {} in {} = ended {}",
        "every byte:",
        bytes_exact(p.started.bytes),
        p.started.count,
        bytes_exact(ended_bytes)
    );
    if !ended.is_empty() {
        let parts: Vec<String> = ended
            .iter()
            .map(|(c, e)| format!("{c} {} in {}", human_bytes(e.bytes), e.count))
            .collect();
        let _ = write!(o, " ({})", parts.join(", "));
    }
    let _ = write!(o, " + held {label} {}", bytes_exact(held));
    let outside = i128::from(p.started.bytes) - i128::from(ended_bytes) - i128::from(held);
    if outside != 0 {
        let _ = write!(
            o,
            "; {outside} bytes not accounted for (an inconsistency: please report it)"
        );
    }
    o.push('\n');
    if p.pool_held_bytes_at_exit > 0 {
        let _ = writeln!(
            o,
            "  {:<24} of what went back to pools (stream-ordered, graph), {} is still held from the GPU",
            "",
            bytes_exact(p.pool_held_bytes_at_exit)
        );
    }
}

/// Each device's CUDA graph memory pool, and the driver's own figures beside the traced ones.
fn render_graph_pools(o: &mut String, p: &ProcessReport) {
    let at = if p.exited { "at exit" } else { "at end" };
    for g in &p.graph_pools {
        let device = g.device.map_or_else(|| "?".to_string(), |d| d.to_string());
        let _ = writeln!(
            o,
            "  graph memory, device {device} {at}: {} in use, {} reserved (high: {} in use, {} reserved)",
            bytes_exact(g.used_bytes),
            bytes_exact(g.reserved_bytes),
            bytes_exact(g.used_high_bytes),
            bytes_exact(g.reserved_high_bytes),
        );
        for r in &g.driver {
            // The driver reserves and counts its pool in chunks (32 MiB on an H100 with
            // driver 580); the Ledger counts bytes until a reading of the reserved figure,
            // which it then takes as the pool's.
            let verdict = if r.driver_bytes == r.traced_bytes {
                "agrees"
            } else if r.attribute == "RESERVED_MEM_CURRENT" {
                "differs: the traced figure is the Ledger's before this reading, which it then took"
            } else if r.attribute.starts_with("USED") && r.driver_bytes > r.traced_bytes {
                "differs: the driver counts whole chunks of its pool, the trace the bytes of live graph allocations"
            } else {
                "differs"
            };
            let _ = writeln!(
                o,
                "    driver's {}: {}, traced {} ({verdict})",
                r.attribute,
                bytes_exact(r.driver_bytes),
                bytes_exact(r.traced_bytes),
            );
        }
    }
}

fn render_api_table(o: &mut String, p: &ProcessReport) {
    let apis: BTreeSet<&str> = p
        .allocs
        .keys()
        .chain(p.frees.keys())
        .chain(p.failed.keys())
        .map(String::as_str)
        .collect();
    if apis.is_empty() {
        return;
    }
    let dash = || "-".to_owned();
    let rows: Vec<[String; 6]> = apis
        .iter()
        .map(|&api| {
            let a = p.allocs.get(api);
            let f = p.frees.get(api);
            [
                api.to_owned(),
                a.map_or_else(dash, |a| a.count.to_string()),
                a.map_or_else(dash, |a| human_bytes(a.bytes)),
                f.map_or_else(dash, |f| f.count.to_string()),
                f.map_or_else(dash, |f| human_bytes(f.bytes)),
                p.failed.get(api).map_or_else(dash, |f| f.count.to_string()),
            ]
        })
        .collect();
    let head = ["api", "allocs", "allocated", "frees", "freed", "failed"].map(str::to_owned);
    let mut width = [0usize; 6];
    for row in std::iter::once(&head).chain(rows.iter()) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&head).chain(rows.iter()) {
        let _ = write!(o, "    {:<w$}", row[0], w = width[0]);
        for (cell, w) in row.iter().zip(width).skip(1) {
            let _ = write!(o, "  {cell:>w$}");
        }
        o.push('\n');
    }
}
