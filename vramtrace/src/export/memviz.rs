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
//! One snapshot per process: the page knows no processes, and two of them may be given the
//! same virtual address.
//! Device memory only (device, stream-ordered, managed); VMM handles and arrays have no
//! single address a block could have, and are left out.

use std::collections::BTreeMap;
use std::path::Path;

use super::pickle::Pickle;
use super::{ExportError, Options, records};
use crate::ledger::{Change, Ledger, LiveAllocation, Replay};
use crate::trace::read::Integrity;
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

/// One frame as PyTorch's snapshots write it: `{"filename", "line", "name"}`. A Python frame
/// is its `.py` file, line and function, as PyTorch's own; a native one its source line
/// where debug information had it, else its object file.
fn frame(p: &mut Pickle, f: &Frame) {
    let (file, line, name) = frame_fields(f);
    p.dict();
    p.kv_str("filename", &file);
    p.kv_uint("line", line);
    p.kv_str("name", &name);
    p.end_dict();
}

/// `(filename, line, name)` of a frame.
fn frame_fields(f: &Frame) -> (String, u64, String) {
    let (file, line) = match f.source() {
        Some((file, line)) => (file.to_owned(), line.map_or(0, u64::from)),
        None => (f.file.clone().unwrap_or_else(|| "??".into()), 0),
    };
    let name = match (&f.sym, f.offset) {
        (Some(sym), _) => sym.clone(),
        (None, _) if f.python => "<python>".into(),
        (None, Some(off)) => format!("+{off:#x}"),
        (None, None) => format!("{:#x}", f.addr),
    };
    (file, line, name)
}

fn shown(a: &LiveAllocation) -> bool {
    matches!(
        a.mem,
        Mem::Device | Mem::DeviceAsync | Mem::Managed | Mem::Graph
    ) && a.addr.is_some()
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

/// One process's snapshot while the trace is replayed: its device traces, one pickled list
/// body per device ordinal (unknown devices on 0).
#[derive(Default)]
struct Building {
    traces: BTreeMap<usize, Pickle>,
}

impl Building {
    fn trace(&mut self, device: Option<i32>) -> &mut Pickle {
        self.traces.entry(dev(device)).or_default()
    }
}

/// The snapshots of a trace, one per process: the page has no notion of a process, and two
/// processes' allocations at the same address in one device trace make it pair one's free
/// with the other's alloc.
pub(super) struct Snapshots {
    /// Each process's pickle by PID, in PID order; one unnamed one when no process had device
    /// memory to show.
    pub files: Vec<(Option<u32>, Vec<u8>)>,
    /// Allocation and OOM events written, all files together.
    pub events: u64,
    /// Allocations live at the end, all files together.
    pub live: u64,
    /// The reader's verdict on the trace.
    pub integrity: Integrity,
}

fn dev(d: Option<i32>) -> usize {
    d.and_then(|d| usize::try_from(d).ok()).unwrap_or(0)
}

pub(super) fn snapshots(trace: &Path, opts: &Options) -> Result<Snapshots, ExportError> {
    let mut replay = Replay::new(records(trace)?);
    let start = replay.header().start_monotonic_ns;
    let us = |ts: u64| ts.saturating_sub(start) / 1000;
    let mut by_pid: BTreeMap<u32, Building> = BTreeMap::new();
    let mut events = 0u64;
    while replay.advance().is_some() {
        let ledger = replay.ledger();
        for ch in ledger.changes() {
            let Some(pid) = ch
                .proc()
                .and_then(|proc| ledger.process(proc))
                .map(|p| p.pid)
                .filter(|&pid| opts.wants(pid))
            else {
                continue;
            };
            match ch {
                Change::Oom { oom, .. } => {
                    let p = by_pid.entry(pid).or_default().trace(oom.device);
                    p.dict();
                    p.kv_str("action", "oom");
                    p.kv_uint("addr", 0);
                    p.kv_uint("size", oom.requested_bytes.unwrap_or(0));
                    p.kv_uint("stream", 0);
                    p.kv_uint("time_us", us(oom.ts_ns));
                    // NVML's free bytes on the failing GPU, as the Ledger mapped it. Unknown is
                    // left out rather than written as 0: the page reads the key only to print
                    // it, and 0 would say the GPU was full.
                    if let Some(free) = oom.nvml.as_ref().and_then(|g| g.free_bytes) {
                        p.kv_uint("device_free", free);
                    }
                    p.str("frames");
                    frames(p, ledger, oom.stack);
                    p.end_dict();
                    events += 1;
                }
                // Every block that ends leaves its segment, whatever ended it (a free, a
                // reused address, an exit, a destroyed context): else the page's
                // allocator-state view finds blocks in no segment.
                Change::Ended {
                    alloc: a, ts_ns, ..
                } if shown(a) => {
                    let p = by_pid.entry(pid).or_default().trace(a.device);
                    freed(p, ledger, a, us(*ts_ns));
                    events += 1;
                }
                Change::Started { alloc: a, .. } if shown(a) => {
                    let p = by_pid.entry(pid).or_default().trace(a.device);
                    for action in ["segment_alloc", "alloc"] {
                        entry(p, ledger, action, a, us(a.ts_ns));
                    }
                    events += 1;
                }
                _ => {}
            }
        }
    }
    let ledger = replay.ledger();
    for proc in ledger.processes() {
        if opts.wants(proc.pid) && proc.live_allocations().any(shown) {
            by_pid.entry(proc.pid).or_default();
        }
    }

    let mut live = 0u64;
    let mut files: Vec<(Option<u32>, Vec<u8>)> = by_pid
        .iter()
        .map(|(&pid, b)| {
            let (bytes, n) = snapshot(ledger, Some(pid), b);
            live += n;
            (Some(pid), bytes)
        })
        .collect();
    if files.is_empty() {
        files.push((None, snapshot(ledger, None, &Building::default()).0));
    }
    Ok(Snapshots {
        files,
        events,
        live,
        integrity: replay.integrity(),
    })
}

/// The pickle of one process's snapshot (`None`: no process), and how many segments it holds.
fn snapshot(ledger: &Ledger, pid: Option<u32>, b: &Building) -> (Vec<u8>, u64) {
    let mut p = Pickle::new();
    p.dict();
    p.str("segments");
    p.list();
    let mut live = 0u64;
    for proc in ledger.processes().filter(|p| Some(p.pid) == pid) {
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
    let devices = b.traces.keys().copied().max().map_or(0, |m| m + 1);
    for d in 0..devices {
        p.list();
        if let Some(t) = b.traces.get(&d) {
            p.buf.extend_from_slice(&t.buf);
        }
        p.end_list();
    }
    p.end_list();
    p.end_dict();
    (p.finish(), live)
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
        let mut snaps = snapshots(&path, &Options::default()).expect("export");
        assert_eq!(snaps.files.len(), 1, "one process, one file");
        snaps.files.remove(0).1
    }

    /// Runs the page's check on `file`; panics with what it said unless it passed.
    fn page_check(file: &Path) -> String {
        let check = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/memviz_check.py"
            ))
            .arg(file)
            .output()
            .expect("python3 runs");
        let said = String::from_utf8_lossy(&check.stdout).into_owned()
            + &String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "{}: {said}", file.display());
        said
    }

    #[test]
    fn each_process_gets_a_snapshot_the_page_reads() {
        use crate::testing::{Sim, header};
        use crate::trace::{Call, write::TraceWriter};
        // Two processes on the same GPU, given the same virtual address with other sizes (each
        // has its own address space); one of them runs out of memory with NVML unknown.
        let (mut a, mut b) = (Sim::new(0, 1000), Sim::new(1, 1001));
        let addr = 0x7f00_0000_0000;
        let mut recs = vec![a.process("a"), b.process("b")];
        recs.push(a.alloc(addr, 1 << 20));
        recs.push(b.alloc(addr, 3 << 20));
        recs.push(a.free(addr));
        recs.push(Record::Failed(Call {
            ret: 2,
            bytes: Some(1 << 40),
            mem: Some(Mem::Device),
            ..b.call("cuMemAlloc_v2")
        }));
        recs.push(b.free(addr));
        recs.push(b.alloc(addr + (8 << 20), 2 << 20));

        let dir = tempfile::tempdir().expect("tempdir");
        let trace = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&trace).expect("create");
        w.write(&Record::Header(Box::new(header())))
            .expect("header");
        for r in &recs {
            w.write(r).expect("write");
        }
        w.finish(u64::MAX / 2, 0, 0).expect("finish");

        let out = dir.path().join("snap.pickle");
        let note = super::super::export_file(
            &trace,
            super::super::Format::MemoryViz,
            &out,
            &Options::default(),
        )
        .expect("export")
        .note;
        let files = [
            dir.path().join("snap.1000.pickle"),
            dir.path().join("snap.1001.pickle"),
        ];
        for f in &files {
            assert!(note.contains(&f.display().to_string()), "{note}");
            let said = page_check(f);
            assert!(said.contains("1 devices"), "{said}");
        }
        assert!(!out.exists(), "no merged file beside the per-process ones");
        assert!(note.contains("1 allocations live at the end"), "{note}");

        let b = std::fs::read(&files[1]).expect("read");
        assert_eq!(count(&b, "oom"), 1);
        // NVML's free bytes were not known: the key is left out, not written as 0.
        assert_eq!(count(&b, "device_free"), 0);

        // One PID asked for: one file, at OUT.
        let one = dir.path().join("one.pickle");
        let opts = Options {
            pids: vec![1000],
            ..Options::default()
        };
        let note = super::super::export_file(&trace, super::super::Format::MemoryViz, &one, &opts)
            .expect("export")
            .note;
        assert!(note.contains(&one.display().to_string()), "{note}");
        page_check(&one);
    }

    #[test]
    fn frames_are_named_as_pytorch_names_them() {
        let python = Frame {
            file: Some("/home/me/train.py".into()),
            sym: Some("Model.forward".into()),
            src: Some("/home/me/train.py:88".into()),
            python: true,
            ..Frame::default()
        };
        assert_eq!(
            frame_fields(&python),
            ("/home/me/train.py".into(), 88, "Model.forward".into())
        );
        let native = Frame {
            addr: 0x7f00_0000_1234,
            file: Some("/usr/lib/libtorch_cuda.so".into()),
            offset: Some(0x1234),
            sym: Some("at::empty".into()),
            src: Some("/build/aten/Empty.cpp:12".into()),
            ..Frame::default()
        };
        assert_eq!(
            frame_fields(&native),
            ("/build/aten/Empty.cpp".into(), 12, "at::empty".into())
        );
        let bare = Frame {
            sym: None,
            src: None,
            ..native
        };
        assert_eq!(
            frame_fields(&bare),
            ("/usr/lib/libtorch_cuda.so".into(), 0, "+0x1234".into())
        );
    }

    #[test]
    fn per_process_names_go_before_the_extension() {
        use super::super::per_process;
        assert_eq!(
            per_process(Path::new("d/snap.pickle"), 7),
            Path::new("d/snap.7.pickle")
        );
        assert_eq!(per_process(Path::new("snap"), 7), Path::new("snap.7"));
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
