//! Chrome trace-event JSON, which ui.perfetto.dev and chrome://tracing open: a counter track
//! per process (device, pool-held and host bytes), instant events for out-of-memory failures
//! and host-memory allocations, and each allocation's lifetime as an async slice.
//!
//! Written as the trace is read: memory stays bounded by the ledger's live allocations.
//! Times are microseconds since the start of the recording.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::{ExportError, Exported, Options, io, records};
use crate::analyze::human_bytes;
use crate::ledger::{Change, LiveAllocation, Replay};
use crate::trace::Record;

struct Out<'a, W: Write> {
    w: &'a mut W,
    first: bool,
    start: u64,
    events: u64,
}

impl<W: Write> Out<'_, W> {
    fn us(&self, ts: u64) -> f64 {
        ts.saturating_sub(self.start) as f64 / 1000.0
    }

    fn event(&mut self, v: &serde_json::Value) -> Result<(), ExportError> {
        if !self.first {
            self.w.write_all(b",\n").map_err(io)?;
        }
        self.first = false;
        self.events += 1;
        serde_json::to_writer(&mut *self.w, v).map_err(|e| io(e.into()))
    }
}

fn slice_name(a: &LiveAllocation) -> String {
    format!("{} {}", a.api, human_bytes(a.bytes))
}

/// An allocation's slice id: its process and its number there, unique whatever address is
/// reused.
fn slice_id(proc: u32, a: &LiveAllocation) -> String {
    format!("{proc}:{}", a.seq())
}

pub(super) fn write<W: Write>(
    trace: &Path,
    w: &mut W,
    opts: &Options,
) -> Result<Exported, ExportError> {
    let mut replay = Replay::new(records(trace)?);
    let start = replay.header().start_monotonic_ns;
    w.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
        .map_err(io)?;
    let mut o = Out {
        w,
        first: true,
        start,
        events: 0,
    };
    let mut last: HashMap<u32, (u64, u64, u64)> = HashMap::new();
    let mut ooms = 0u64;
    let mut end = start;
    while let Some(rec) = replay.advance() {
        let ledger = replay.ledger();
        if let Record::Process(p) = &rec
            && opts.wants(p.pid)
        {
            o.event(&json!({"ph":"M","name":"process_name","pid":p.pid,
                "args":{"name":format!("{} ({})", p.comm, p.pid)}}))?;
        }
        let pid_of = |proc: u32| ledger.process(proc).map_or(0, |p| p.pid);
        // Each allocation's slice begins and ends where the Ledger says it did: a free, a
        // reused address, a released VMM handle, an exit, a destroyed context.
        for ch in ledger.changes() {
            let Some(proc) = ch.proc() else { continue };
            let pid = pid_of(proc);
            if !opts.wants(pid) {
                continue;
            }
            match ch {
                Change::Started { alloc: a, .. } => {
                    o.event(&json!({"ph":"b","cat":"allocation","name":slice_name(a),
                        "id":slice_id(proc, a),"pid":pid,"tid":a.tid,"ts":o.us(a.ts_ns),
                        "args":{"bytes":a.bytes,"addr":a.addr,"handle":a.handle,"mem":a.mem,
                                "device":a.device,"class":a.class,"stack":a.stack}}))?;
                }
                Change::Ended {
                    alloc: a,
                    cause,
                    ts_ns,
                    ..
                } => {
                    o.event(&json!({"ph":"e","cat":"allocation","name":slice_name(a),
                        "id":slice_id(proc, a),"pid":pid,"tid":a.tid,"ts":o.us(*ts_ns),
                        "args":{"ended_by":cause.name()}}))?;
                }
                Change::HostFinding { finding: f, .. } => {
                    o.event(&json!({"ph":"i","s":"t",
                        "name":format!("host memory: {} {}", f.api, human_bytes(f.bytes)),
                        "pid":pid,"tid":f.tid,"ts":o.us(f.ts_ns),
                        "args":{"mem":f.mem,"bytes":f.bytes,"stack":f.stack}}))?;
                }
                Change::Oom { oom, .. } => {
                    ooms += 1;
                    o.event(
                        &json!({"ph":"i","s":"p","name":format!("OOM: {} {}", oom.api,
                        oom.requested_bytes.map_or_else(|| "?".to_owned(), human_bytes)),
                        "pid":pid,"tid":oom.tid,"ts":o.us(oom.ts_ns),
                        "args":{"request_bytes":oom.requested_bytes,"device":oom.device,
                                "nvml_index":oom.nvml_index,"held_bytes":oom.device_bytes,
                                "stack":oom.stack}}),
                    )?;
                }
                _ => {}
            }
        }
        let Some(proc) = rec.proc() else {
            continue;
        };
        let Some(p) = ledger.process(proc) else {
            continue;
        };
        if !opts.wants(p.pid) {
            continue;
        }
        let ts = p.last_ts_ns.unwrap_or(start);
        end = end.max(ts);
        let now = (
            p.usage.device_bytes,
            p.usage.pool_held_bytes,
            p.usage.host_bytes,
        );
        if last.get(&proc) != Some(&now) {
            last.insert(proc, now);
            o.event(
                &json!({"ph":"C","name":"GPU memory (bytes)","pid":p.pid,"ts":o.us(ts),
                "args":{"device":now.0,"pool_held":now.1,"host":now.2}}),
            )?;
        }
    }
    // Allocations never freed end with the trace.
    for p in replay.ledger().processes() {
        if !opts.wants(p.pid) || p.exited() {
            continue;
        }
        for a in p.live_allocations() {
            o.event(&json!({"ph":"e","cat":"allocation","name":slice_name(a),
                "id":slice_id(p.proc, a),"pid":p.pid,"tid":a.tid,"ts":o.us(end),
                "args":{"ended_by":"end_of_trace"}}))?;
        }
    }
    let n = o.events;
    o.w.write_all(b"\n]}\n").map_err(io)?;
    Ok(Exported {
        note: format!(
            "wrote {n} trace events ({ooms} OOM) for ui.perfetto.dev or chrome://tracing"
        ),
        integrity: replay.integrity(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Sim, header};
    use crate::trace::{Call, Mem, Record, TraceWriter};

    #[test]
    fn the_oom_instant_says_its_device_and_nvml_index() {
        let mut s = Sim::new(0, 1000);
        let dir = tempfile::tempdir().expect("tempdir");
        let trace = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&trace).expect("create");
        w.write(&Record::Header(Box::new(header())))
            .expect("header");
        w.write(&s.process("a")).expect("process");
        w.write(&Record::Failed(Call {
            ret: 2,
            bytes: Some(1 << 40),
            mem: Some(Mem::Device),
            device: Some(1),
            ..s.call("cuMemAlloc_v2")
        }))
        .expect("failed");
        w.finish(u64::MAX / 2, 0, 0).expect("finish");

        let mut out = Vec::new();
        write(&trace, &mut out, &Options::default()).expect("export");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        let events = v["traceEvents"].as_array().expect("traceEvents");
        let oom: Vec<_> = events
            .iter()
            .filter(|e| e["ph"] == "i" && e["name"].as_str().is_some_and(|n| n.starts_with("OOM")))
            .collect();
        assert_eq!(oom.len(), 1, "{v:#}");
        let args = &oom[0]["args"];
        assert_eq!(args["device"].as_i64(), Some(1), "{args:#}");
        // No NVML list in the trace: the ordinal is taken for the NVML index.
        assert!(args.get("nvml_index").is_some(), "{args:#}");
    }
}
