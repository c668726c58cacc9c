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

use super::{ExportError, Options, apply_ending, io, records};
use crate::analyze::human_bytes;
use crate::ledger::{Ledger, LiveAllocation};
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

fn slice_id(proc: u32, a: &LiveAllocation) -> String {
    format!("{proc}:{:x}:{}", a.addr.unwrap_or(0), a.ts_ns)
}

pub(super) fn write<W: Write>(
    trace: &Path,
    w: &mut W,
    opts: &Options,
) -> Result<String, ExportError> {
    let reader = records(trace)?;
    let start = reader.header().start_monotonic_ns;
    w.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
        .map_err(io)?;
    let mut o = Out {
        w,
        first: true,
        start,
        events: 0,
    };
    let mut ledger = Ledger::new();
    let mut last: HashMap<u32, (u64, u64, u64)> = HashMap::new();
    let mut ooms = 0u64;
    let mut end = start;
    for rec in reader {
        if rec.pid().is_some_and(|p| !opts.wants(p)) {
            ledger.apply(&rec);
            continue;
        }
        match &rec {
            Record::Process(p) => {
                o.event(&json!({"ph":"M","name":"process_name","pid":p.pid,
                    "args":{"name":format!("{} ({})", p.comm, p.pid)}}))?;
            }
            Record::Failed(c) if c.ret == 2 => {
                ooms += 1;
                o.event(&json!({"ph":"i","s":"p","name":format!("OOM: {} {}", c.api,
                    c.bytes.map_or_else(|| "?".to_owned(), human_bytes)),
                    "pid":c.pid,"tid":c.tid,"ts":o.us(c.ts_ns),
                    "args":{"request_bytes":c.bytes,"device":c.device,"stack":c.stack}}))?;
            }
            _ => {}
        }
        // Each allocation's slice ends where it did: a free, a reused address, an exit, a
        // destroyed context.
        let ts = rec.ts_ns().unwrap_or(start);
        for a in apply_ending(&mut ledger, &rec) {
            o.event(&json!({"ph":"e","cat":"allocation","name":slice_name(&a),
                "id":slice_id(rec.proc().unwrap_or(0), &a),"pid":rec.pid(),"tid":a.tid,
                "ts":o.us(ts)}))?;
        }
        if let Record::Alloc(c) = &rec
            && let Some(a) = c.addr.and_then(|x| ledger.process(c.proc)?.live_at(x))
        {
            o.event(&json!({"ph":"b","cat":"allocation","name":slice_name(a),
                "id":slice_id(c.proc, a),"pid":c.pid,"tid":c.tid,"ts":o.us(c.ts_ns),
                "args":{"bytes":a.bytes,"addr":a.addr,"mem":a.mem,"device":a.device,
                        "stack":a.stack}}))?;
            if a.mem.is_host() {
                o.event(
                    &json!({"ph":"i","s":"t","name":format!("host memory: {}", slice_name(a)),
                    "pid":c.pid,"tid":c.tid,"ts":o.us(c.ts_ns),
                    "args":{"mem":a.mem,"bytes":a.bytes}}),
                )?;
            }
        }
        let Some(proc) = rec.proc() else {
            continue;
        };
        let Some(p) = ledger.process(proc) else {
            continue;
        };
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
    for p in ledger.processes() {
        if !opts.wants(p.pid) || p.exited() {
            continue;
        }
        for a in p.live_allocations().filter(|a| a.addr.is_some()) {
            o.event(&json!({"ph":"e","cat":"allocation","name":slice_name(a),
                "id":slice_id(p.proc, a),"pid":p.pid,"tid":a.tid,"ts":o.us(end)}))?;
        }
    }
    let n = o.events;
    o.w.write_all(b"\n]}\n").map_err(io)?;
    Ok(format!(
        "wrote {n} trace events ({ooms} OOM) for ui.perfetto.dev or chrome://tracing"
    ))
}
