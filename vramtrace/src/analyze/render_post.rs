//! The postmortem sections of the text report: out-of-memory explanations, leak suspects,
//! retention, and a sparkline per process.

use std::fmt::Write as _;

use super::human_bytes as hb;
use super::postmortem::{OomExplanation, Postmortem, StackFrames};
use super::render::{at, secs};
use super::timeline::sparkline;

/// A duration a person reads at a glance: `850 µs`, `12.5 ms`, `3.200 s`.
pub(super) fn dur(ns: u64) -> String {
    match ns {
        n if n < 1_000_000 => format!("{} µs", n / 1000),
        n if n < 1_000_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        n => secs(n),
    }
}

/// Cells in a sparkline.
const SPARK: usize = 60;
/// Frames shown per stack in text.
const TEXT_FRAMES: usize = 6;

/// The frames of `s`, at most [`TEXT_FRAMES`] of them: the innermost, or, when its site is
/// deeper, the two innermost and the frames from the site on.
fn stack_lines(o: &mut String, s: &StackFrames, indent: &str) {
    if s.frames.is_empty() {
        let _ = writeln!(
            o,
            "{indent}(no stack{})",
            s.id.map_or(String::new(), |i| format!(" record for id {i}"))
        );
        return;
    }
    let site = s.site.as_ref().map_or(0, |site| site.frame);
    let mut shown = 0;
    for (i, f) in s.frames.iter().enumerate() {
        if site >= TEXT_FRAMES && i == 2 {
            let _ = writeln!(o, "{indent}... {} frames", site - 2);
        }
        if site >= TEXT_FRAMES && (2..site).contains(&i) {
            continue;
        }
        if shown == TEXT_FRAMES {
            let _ = writeln!(o, "{indent}... {} more frames", s.frames.len() - i);
            break;
        }
        let _ = writeln!(o, "{indent}{f}");
        shown += 1;
    }
}

/// ` from TITLE` for a finding whose stack has a site, and how many stacks it groups.
fn from(s: &StackFrames) -> String {
    let mut t = String::new();
    if let Some(site) = &s.site {
        let _ = write!(t, " from {}", site.title);
        if !site.user {
            t.push_str(" (no frame in the user's code)");
        }
    }
    if !s.merged.is_empty() {
        let _ = write!(t, " ({} stacks)", s.merged.len() + 1);
    }
    t
}

fn oom(o: &mut String, e: &OomExplanation, start: Option<u64>) {
    let dev = match (e.device, e.nvml_index) {
        (Some(d), Some(i)) if i64::from(d) != i64::from(i) => format!("GPU {d} (NVML GPU {i})"),
        (Some(d), _) => format!("GPU {d}"),
        (None, _) => "GPU ? (the device could not be told: every device counts)".to_owned(),
    };
    let _ = writeln!(
        o,
        "\n== OUT OF MEMORY at {}: {} (pid {}) {} of {} on {dev} failed with {}",
        at(e.ts_ns, start),
        e.comm,
        e.pid,
        e.api,
        e.request_bytes.map_or_else(|| "? bytes".to_owned(), hb),
        e.error
    );
    let _ = writeln!(o, "   {}", e.verdict);
    let _ = writeln!(o, "   failed call's stack{}:", from(&e.stack));
    stack_lines(o, &e.stack, "      ");
    let _ = writeln!(
        o,
        "   held then: {} device, {} pool-held, {} host, {} allocations; peak before {}{}",
        hb(e.held_device_bytes),
        hb(e.held_pool_bytes),
        hb(e.held_host_bytes),
        e.live_allocations,
        hb(e.peak_before_bytes),
        e.peak_before_ts_ns
            .map_or(String::new(), |t| format!(" at {}", at(t, start)))
    );
    let classes: Vec<String> = e
        .by_class
        .iter()
        .map(|(k, v)| format!("{k} {}", hb(*v)))
        .collect();
    let mems: Vec<String> = e
        .by_mem
        .iter()
        .map(|(k, v)| format!("{k} {}", hb(*v)))
        .collect();
    if classes.is_empty() {
        let _ = writeln!(o, "   nothing of this process's was on that device");
    } else {
        let _ = writeln!(o, "   by class: {}", classes.join(", "));
        let _ = writeln!(o, "   by memory kind: {}", mems.join(", "));
    }
    if let Some(c) = &e.capacity {
        let q = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), hb);
        let _ = writeln!(
            o,
            "   NVML at {}: total {}, used {}, free {}",
            at(c.ts_ns, start),
            q(c.total_bytes),
            q(c.used_bytes),
            q(c.free_bytes)
        );
    }
    if !e.top_stacks.is_empty() {
        let _ = writeln!(o, "   top stacks by live bytes:");
        for (i, h) in e.top_stacks.iter().enumerate() {
            let _ = writeln!(
                o,
                "   {:>2}. {} in {} allocations, oldest held for {}{}",
                i + 1,
                hb(h.bytes),
                h.allocations,
                dur(h.held_for_ns),
                from(&h.stack)
            );
            stack_lines(o, &h.stack, "         ");
        }
        let listed: (u64, u64) = e
            .top_stacks
            .iter()
            .fold((0, 0), |(b, n), h| (b + h.bytes, n + h.allocations));
        let (bytes, count) = rest(e, listed);
        if count > 0 {
            let _ = writeln!(
                o,
                "       and {} in {count} allocation(s) from other stacks",
                hb(bytes)
            );
        }
    }
    if !e.largest.is_empty() {
        let _ = writeln!(o, "   largest holders:");
        for h in &e.largest {
            let _ = writeln!(
                o,
                "      {:>10}  {} ({}) made at {}, held for {}{}",
                hb(h.bytes),
                h.api,
                h.class,
                at(h.ts_ns, start),
                dur(h.held_for_ns),
                match (&h.top_frame, h.stack) {
                    (Some(f), _) => format!(", from {f}"),
                    (None, Some(s)) => format!(", stack {s} (not in the trace)"),
                    (None, None) => String::new(),
                }
            );
        }
        let listed = (
            e.largest.iter().map(|h| h.bytes).sum(),
            e.largest.len() as u64,
        );
        let (bytes, count) = rest(e, listed);
        if count > 0 {
            let _ = writeln!(
                o,
                "      and {count} smaller allocation(s) holding {}",
                hb(bytes)
            );
        }
    }
    if e.others.is_empty() {
        let _ = writeln!(o, "   no other traced process held memory on {dev}");
    } else {
        let _ = writeln!(o, "   also on {dev}:");
        for q in &e.others {
            let _ = writeln!(
                o,
                "      {} (pid {}): {} device, {} pool-held",
                q.comm,
                q.pid,
                hb(q.device_bytes),
                hb(q.pool_held_bytes)
            );
        }
    }
}

/// Appends the postmortem sections to the report text.
pub(super) fn render_postmortem(o: &mut String, pm: &Postmortem, start: Option<u64>) {
    for e in &pm.ooms {
        oom(o, e, start);
    }

    if !pm.leaks.suspects.is_empty() {
        let _ = writeln!(
            o,
            "\n== LEAK SUSPECTS: stacks whose live bytes grew through the steady state"
        );
        for l in &pm.leaks.suspects {
            let _ = writeln!(
                o,
                "   {}{} (pid {}): {} live in {} allocations ({} made, {} freed), {} via {}",
                l.stack
                    .site
                    .as_ref()
                    .map_or(String::new(), |s| format!("{} in ", s.title)),
                l.comm,
                l.pid,
                hb(l.live_bytes),
                l.live_allocations,
                l.allocs,
                l.frees,
                match l.growth_bytes_per_s {
                    Some(rate) => format!("growing {}/s", hb(rate as u64)),
                    None => format!("grew {} in {}", hb(l.growth_bytes), dur(l.growth_over_ns)),
                },
                l.api
            );
            stack_lines(o, &l.stack, "      ");
        }
    }
    if !pm.leaks.retention.is_empty() {
        let _ = writeln!(o, "\n== RETAINED BY DESIGN (not leaks)");
        for r in &pm.leaks.retention {
            let what = match r.kind.as_str() {
                "pool" => "freed into stream-ordered pools, still held from the GPU",
                _ => "a caching allocator's segments: grew while warming up, then flat",
            };
            let _ = writeln!(
                o,
                "   {} (pid {}): {} {what}{}",
                r.comm,
                r.pid,
                hb(r.bytes),
                r.stack.as_ref().map_or(String::new(), from)
            );
            if let Some(s) = &r.stack {
                stack_lines(o, s, "      ");
            }
        }
    }

    let t = &pm.timeline;
    if t.processes
        .iter()
        .any(|p| p.device_bytes.iter().any(|&b| b > 0))
    {
        let len = t
            .processes
            .iter()
            .map(|p| p.device_bytes.len())
            .max()
            .unwrap_or(0);
        // One column covers whole buckets: its width is theirs, not the span divided evenly.
        let column_ns = t
            .bucket_ns
            .saturating_mul(super::timeline::buckets_per_column(len, SPARK) as u64);
        let _ = writeln!(
            o,
            "\n== DEVICE MEMORY OVER TIME (from {}, {} per column, each column its highest; \
             ^ marks the peak)",
            at(t.start_ns, start),
            dur(column_ns)
        );
        let labels: Vec<String> = t
            .processes
            .iter()
            .map(|p| format!("{} {}", p.comm, p.pid))
            .collect();
        let label_width = labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0)
            .max(16);
        for (p, label) in t.processes.iter().zip(&labels) {
            let peak = p.device_bytes.iter().copied().max().unwrap_or(0);
            if peak == 0 {
                continue;
            }
            let (line, at_cell) = sparkline(&p.device_bytes, SPARK);
            let _ = writeln!(o, "   {label:<label_width$} |{line}| peak {}", hb(peak));
            if let Some(c) = at_cell {
                let _ = writeln!(o, "   {:<label_width$}  {}^", "", " ".repeat(c));
            }
        }
    }
}

/// What a failure's lists leave out: the bytes and allocations on the device beyond the
/// `listed` (bytes, allocations).
fn rest(e: &OomExplanation, listed: (u64, u64)) -> (u64, u64) {
    let total: u64 = e.by_mem.values().sum();
    (
        total.saturating_sub(listed.0),
        e.live_allocations.saturating_sub(listed.1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::timeline::{ProcessTimeline, TimelineReport};
    use crate::site::Site;

    fn frames(n: usize, site: Option<usize>) -> StackFrames {
        StackFrames {
            id: Some(1),
            frames: (0..n).map(|i| format!("f{i}")).collect(),
            site: site.map(|frame| Site {
                title: format!("f{frame}"),
                frame,
                user: true,
                ..Site::default()
            }),
            merged: Vec::new(),
        }
    }

    fn lines(s: &StackFrames) -> Vec<String> {
        let mut o = String::new();
        stack_lines(&mut o, s, "");
        o.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_deep_site_is_shown_past_the_runtime_frames() {
        assert_eq!(
            lines(&frames(15, Some(10))),
            [
                "f0",
                "f1",
                "... 8 frames",
                "f10",
                "f11",
                "f12",
                "f13",
                "... 1 more frames"
            ]
        );
        assert_eq!(
            lines(&frames(8, Some(3))),
            ["f0", "f1", "f2", "f3", "f4", "f5", "... 2 more frames"]
        );
        assert_eq!(lines(&frames(3, None)), ["f0", "f1", "f2"]);
        let mut merged = frames(1, Some(0));
        merged.merged = vec![4, 9];
        assert_eq!(from(&merged), " from f0 (3 stacks)");
        if let Some(s) = merged.site.as_mut() {
            s.user = false;
        }
        assert_eq!(
            from(&merged),
            " from f0 (no frame in the user's code) (3 stacks)"
        );
    }

    #[test]
    fn the_timeline_says_its_real_column_width_and_marks_the_peak_under_it() {
        // 200 buckets of 3 ms in 60 columns: 4 buckets, 12 ms, a column.
        let mut device_bytes = vec![1u64; 200];
        device_bytes[150] = 100;
        let pm = Postmortem {
            timeline: TimelineReport {
                start_ns: 1_000_000_000,
                bucket_ns: 3_000_000,
                processes: vec![ProcessTimeline {
                    proc: 1,
                    pid: 123456,
                    comm: "a-very-long-process-name".into(),
                    device_bytes,
                    ..ProcessTimeline::default()
                }],
            },
            ..Postmortem::default()
        };
        let mut o = String::new();
        render_postmortem(&mut o, &pm, Some(1_000_000_000));
        assert!(o.contains("12.0 ms per column"), "{o}");
        let lines: Vec<&str> = o.lines().collect();
        let bar = lines.iter().position(|l| l.contains('█')).expect("a bar");
        let peak_col = lines[bar].chars().position(|c| c == '█').expect("peak");
        let caret_col = lines[bar + 1]
            .chars()
            .position(|c| c == '^')
            .expect("caret");
        assert_eq!(caret_col, peak_col, "{o}");
        assert_eq!(
            150 / 4 + lines[bar].chars().position(|c| c == '|').unwrap() + 1,
            peak_col
        );
    }
}
