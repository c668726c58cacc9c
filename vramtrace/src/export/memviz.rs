//! A snapshot that PyTorch's memory viewer (pytorch.org/memory_viz, `torch/utils/viz/
//! MemoryViz.js`) opens: the viewer reads only pickles (its drop handler unpickles the file),
//! in the layout of `torch.cuda.memory._snapshot()`:
//!
//! ```text
//! {"segments": [{"device", "address", "total_size", "stream", "segment_type", "frames",
//!                "blocks": [{"size", "requested_size", "state", "frames"}]}],
//!  "device_traces": [[{"action", "addr", "size", "stream", "frames", "time_us"}], ...]}
//! ```
//!
//! The driver has no caching allocator between the process and the GPU, so each traced
//! allocation is a segment holding one block: `segment_alloc` + `alloc` when it is made,
//! `free_requested` + `free_completed` + `segment_free` when it is freed, or when its process
//! exits or its context is destroyed with it still live. An out-of-memory
//! failure is an `oom` entry. `segments` are the allocations live at the end of the trace.
//! Device memory only (device, stream-ordered, managed); VMM handles and arrays have no
//! single address a block could have, and are left out.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::pickle::Pickle;
use super::{ExportError, Exported, Options, io, records};
use crate::ledger::{Change, Ledger, LiveAllocation, Replay};
use crate::trace::{Frame, Mem};

fn frames(p: &mut Pickle, ledger: &Ledger, stack: Option<u32>) {
    p.list();
    if let Some(s) = stack.and_then(|id| ledger.stack(id)) {
        for f in &s.frames {
            frame(p, f);
        }
    }
    p.end_list();
}

fn frame(p: &mut Pickle, f: &Frame) {
    let (file, line) = match f.src.as_deref().and_then(|s| s.rsplit_once(':')) {
        Some((file, line)) => (file.to_owned(), line.parse::<u64>().unwrap_or(0)),
        None => (f.file.clone().unwrap_or_else(|| "??".into()), 0),
    };
    let name = f.sym.clone().unwrap_or_else(|| match f.offset {
        Some(off) => format!("+{off:#x}"),
        None => format!("{:#x}", f.addr),
    });
    p.dict();
    p.kv_str("filename", &file);
    p.kv_uint("line", line);
    p.kv_str("name", &name);
    p.end_dict();
}

fn shown(a: &LiveAllocation) -> bool {
    matches!(a.mem, Mem::Device | Mem::DeviceAsync | Mem::Managed) && a.addr.is_some()
}

fn entry(p: &mut Pickle, ledger: &Ledger, action: &str, a: &LiveAllocation, ts_us: u64) {
    p.dict();
    p.kv_str("action", action);
    p.kv_uint("addr", a.addr.unwrap_or(0));
    p.kv_uint("size", a.bytes);
    p.kv_uint("stream", 0);
    p.kv_uint("time_us", ts_us);
    p.str("frames");
    frames(p, ledger, a.stack);
    p.end_dict();
}

/// The three events of a block and its segment going away.
fn freed(p: &mut Pickle, ledger: &Ledger, a: &LiveAllocation, ts_us: u64) {
    for action in ["free_requested", "free_completed", "segment_free"] {
        entry(p, ledger, action, a, ts_us);
    }
}

pub(super) fn write<W: Write>(
    trace: &Path,
    w: &mut W,
    opts: &Options,
) -> Result<Exported, ExportError> {
    let mut replay = Replay::new(records(trace)?);
    let start = replay.header().start_monotonic_ns;
    let us = |ts: u64| ts.saturating_sub(start) / 1000;
    // One pickled list body per device ordinal (unknown devices on 0).
    let mut traces: BTreeMap<usize, Pickle> = BTreeMap::new();
    let mut n = 0u64;
    let dev = |d: Option<i32>| d.and_then(|d| usize::try_from(d).ok()).unwrap_or(0);
    while replay.advance().is_some() {
        let ledger = replay.ledger();
        for ch in ledger.changes() {
            let Some(proc) = ch.proc() else { continue };
            if !ledger.process(proc).is_some_and(|p| opts.wants(p.pid)) {
                continue;
            }
            match ch {
                Change::Oom { oom, .. } => {
                    let p = traces.entry(dev(oom.device)).or_default();
                    p.dict();
                    p.kv_str("action", "oom");
                    p.kv_uint("addr", 0);
                    p.kv_uint("size", oom.requested_bytes.unwrap_or(0));
                    p.kv_uint("stream", 0);
                    p.kv_uint("time_us", us(oom.ts_ns));
                    // NVML's free bytes on the failing GPU, as the Ledger mapped it.
                    p.kv_uint(
                        "device_free",
                        oom.nvml.as_ref().and_then(|g| g.free_bytes).unwrap_or(0),
                    );
                    p.str("frames");
                    frames(p, ledger, oom.stack);
                    p.end_dict();
                    n += 1;
                }
                // Every block that ends leaves its segment, whatever ended it (a free, a
                // reused address, an exit, a destroyed context): else the page's
                // allocator-state view finds blocks in no segment.
                Change::Ended {
                    alloc: a, ts_ns, ..
                } if shown(a) => {
                    freed(
                        traces.entry(dev(a.device)).or_default(),
                        ledger,
                        a,
                        us(*ts_ns),
                    );
                    n += 1;
                }
                Change::Started { alloc: a, .. } if shown(a) => {
                    let p = traces.entry(dev(a.device)).or_default();
                    for action in ["segment_alloc", "alloc"] {
                        entry(p, ledger, action, a, us(a.ts_ns));
                    }
                    n += 1;
                }
                _ => {}
            }
        }
    }
    let ledger = replay.ledger();

    let mut p = Pickle::new();
    p.dict();
    p.str("segments");
    p.list();
    let mut live = 0u64;
    for proc in ledger.processes() {
        if !opts.wants(proc.pid) {
            continue;
        }
        for a in proc.live_allocations().filter(|a| shown(a)) {
            live += 1;
            p.dict();
            p.kv_uint("device", dev(a.device) as u64);
            p.kv_uint("address", a.addr.unwrap_or(0));
            for k in [
                "total_size",
                "allocated_size",
                "active_size",
                "requested_size",
            ] {
                p.kv_uint(k, a.bytes);
            }
            p.kv_uint("stream", 0);
            p.kv_str("segment_type", "large");
            p.str("is_expandable");
            p.bool(false);
            p.str("frames");
            frames(&mut p, ledger, a.stack);
            p.str("blocks");
            p.list();
            p.dict();
            p.kv_uint("size", a.bytes);
            p.kv_uint("requested_size", a.bytes);
            p.kv_str("state", "active_allocated");
            p.str("frames");
            frames(&mut p, ledger, a.stack);
            p.end_dict();
            p.end_list();
            p.end_dict();
        }
    }
    p.end_list();
    p.str("device_traces");
    p.list();
    let devices = traces.keys().copied().max().map_or(0, |m| m + 1);
    for d in 0..devices {
        p.list();
        if let Some(t) = traces.get(&d) {
            p.buf.extend_from_slice(&t.buf);
        }
        p.end_list();
    }
    p.end_list();
    p.end_dict();
    w.write_all(&p.finish()).map_err(io)?;
    Ok(Exported {
        note: format!(
            "wrote a PyTorch memory snapshot ({n} allocation events, {live} allocations live at \
             the end) for pytorch.org/memory_viz: drag the file onto the page"
        ),
        integrity: replay.integrity(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::read::tests::{alloc, free, write_trace};
    use crate::trace::{Exit, Record};

    /// How many times `needle` is in `haystack` (the pickle writes every string out).
    fn count(haystack: &[u8], needle: &str) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle.as_bytes())
            .count()
    }

    fn export(records: &[Record]) -> Vec<u8> {
        let (bytes, _) = write_trace(records, true);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, bytes).expect("write trace");
        let mut out = Vec::new();
        write(&path, &mut out, &Options::default()).expect("export");
        out
    }

    #[test]
    fn what_an_exit_releases_is_freed_in_the_snapshot() {
        // Three allocations, one freed; the process exits holding two.
        let out = export(&[
            alloc(0),
            alloc(1),
            alloc(2),
            free(1),
            Record::Exit(Exit {
                proc: 1,
                pid: 4242,
                ts_ns: 6_000_000_000,
            }),
        ]);
        assert_eq!(count(&out, "segment_alloc"), 3);
        // The free, and the two the exit let go of: every block leaves its segment, so the
        // viewer's walk back from the (empty) final segments finds each block in one.
        assert_eq!(count(&out, "free_completed"), 3);
        assert_eq!(count(&out, "segment_free"), 3);
    }

    #[test]
    fn what_is_live_at_the_end_stays_in_the_segments() {
        let out = export(&[alloc(0), alloc(1), free(0)]);
        assert_eq!(count(&out, "free_completed"), 1);
        // One live segment, with its one active block.
        assert_eq!(count(&out, "active_allocated"), 1);
    }
}
