//! Live bytes by stack at one moment, as folded stacks: `comm (pid);outer;...;inner;api N`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{ExportError, Moment, Options, records, replay};
use crate::ledger::{Change, Ledger, Replay};
use crate::site::frame_line;
use crate::trace::Integrity;

/// A stop before record `index` (`None`: at the end), what the moment is, and the trace's
/// verdict (the whole trace is read to find the moment).
type Found = (Option<u64>, String, Integrity);

/// Where the moment falls.
fn find_moment(trace: &Path, at: Option<Moment>) -> Result<Found, ExportError> {
    let mut peak = (0u64, None::<u64>);
    let mut first_oom = None;
    let start = records(trace)?.header().start_monotonic_ns;
    let mut secs_at = None;
    let want_secs = match at {
        Some(Moment::Secs(s)) => Some((s * 1e9) as u64),
        _ => None,
    };
    let integrity = replay(trace, |l, rec, n| {
        if first_oom.is_none() && l.changes().iter().any(|c| matches!(c, Change::Oom { .. })) {
            first_oom = Some(n);
        }
        let p = l.totals().usage.peak_device_bytes;
        if p > peak.0 {
            peak = (p, Some(n + 1));
        }
        if let (Some(w), Some(c)) = (want_secs, rec.call())
            && secs_at.is_none()
            && c.ts_ns > start.saturating_add(w)
        {
            secs_at = Some(n);
        }
    })?
    .1;
    let (stop, what) = match at {
        Some(Moment::End) => (None, "at the end of the trace".into()),
        Some(Moment::Peak) => (peak.1, "at the peak".into()),
        Some(Moment::Secs(s)) => (secs_at, format!("at +{s} s")),
        Some(Moment::Oom) | None => match first_oom {
            Some(i) => (Some(i), "at the first out-of-memory failure".into()),
            None if at.is_some() => (peak.1, "at the peak (the trace has no OOM)".into()),
            None => (peak.1, "at the peak".into()),
        },
    };
    Ok((stop, what, integrity))
}

/// The ledger as it was at the moment, what the moment is, and the trace's verdict.
pub(super) fn ledger_at(
    trace: &Path,
    opts: &Options,
) -> Result<(Ledger, String, Integrity), ExportError> {
    let (stop, what, integrity) = find_moment(trace, opts.at)?;
    let mut replay = Replay::new(records(trace)?);
    while stop.is_none_or(|s| replay.applied() < s) && replay.advance().is_some() {}
    Ok((replay.finish().0, what, integrity))
}

fn clean(s: &str) -> String {
    s.replace([';', '\n'], ":").replace(' ', "\u{a0}")
}

/// Folded lines of live device and host bytes by stack at the moment `opts` names, what the
/// moment is, and the trace's verdict.
pub(super) fn at_moment(
    trace: &Path,
    opts: &Options,
) -> Result<(Vec<String>, String, Integrity), ExportError> {
    let (ledger, what, integrity) = ledger_at(trace, opts)?;
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for p in ledger.processes() {
        if !opts.wants(p.pid) {
            continue;
        }
        let root = clean(&format!("{} ({})", p.comm(), p.pid));
        for a in p.live_allocations() {
            let mut parts = vec![root.clone()];
            if let Some(s) = a.stack.and_then(|id| ledger.stack(id)) {
                parts.extend(s.frames.iter().rev().map(|f| clean(&frame_line(f))));
            } else {
                parts.push("[no stack]".into());
            }
            parts.push(clean(&a.api));
            *by.entry(parts.join(";")).or_default() += a.bytes;
        }
    }
    Ok((
        by.into_iter()
            .filter(|(_, b)| *b > 0)
            .map(|(k, b)| format!("{k} {b}"))
            .collect(),
        what,
        integrity,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Sim, header};
    use crate::trace::{Frame, Record, Stack, write::TraceWriter};

    #[test]
    fn python_frames_sit_among_the_native_ones() {
        let mut sim = Sim::new(0, 1000);
        let stack = Stack {
            id: 1,
            frames: vec![
                Frame {
                    addr: 0x7f00_0000_1000,
                    file: Some("/usr/lib/libtorch_cuda.so".into()),
                    offset: Some(0x1000),
                    sym: Some("at::empty".into()),
                    ..Frame::default()
                },
                Frame {
                    file: Some("/home/me/train.py".into()),
                    sym: Some("Model.forward".into()),
                    src: Some("/home/me/train.py:88".into()),
                    python: true,
                    ..Frame::default()
                },
                Frame {
                    addr: 0x5500_0000_2000,
                    file: Some("/usr/bin/python3.12".into()),
                    offset: Some(0x2000),
                    sym: Some("main".into()),
                    ..Frame::default()
                },
            ],
            truncated: None,
        };
        let mut alloc = sim.alloc(0x7e00_0000_0000, 4096);
        if let Record::Alloc(c) = &mut alloc {
            c.stack = Some(1);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let trace = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&trace).expect("create");
        w.write(&Record::Header(Box::new(header())))
            .expect("header");
        for r in [sim.process("train"), Record::Stack(stack), alloc] {
            w.write(&r).expect("write");
        }
        w.finish(u64::MAX / 2, 0, 0).expect("finish");

        let opts = Options {
            at: Some(Moment::End),
            ..Options::default()
        };
        let (lines, _, _) = at_moment(&trace, &opts).expect("folded");
        let nb = |s: &str| s.replace(' ', "\u{a0}");
        assert_eq!(
            lines,
            [format!(
                "{};{};{};{};cuMemAlloc_v2 4096",
                nb("train (1000)"),
                nb("main (python3.12+0x2000)"),
                nb("Model.forward (/home/me/train.py:88)"),
                nb("at::empty (libtorch_cuda.so+0x1000)"),
            )]
        );
    }
}
