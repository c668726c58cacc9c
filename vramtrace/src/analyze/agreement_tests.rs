//! Every consumer of the Ledger agrees with it on the same random sequences: the leak
//! tracker's live bytes per stack, each OOM explanation, the timeline's current values, and
//! the Perfetto, memory-viz and folded exports.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;

use super::postmortem::Collector;
use crate::export::{Format, Moment, Options, export_file};
use crate::ledger::{Change, Ledger, Oom};
use crate::testing::{header, sequence};
use crate::trace::write::TraceWriter;
use crate::trace::{Mem, Record};

/// The Ledger and the postmortem collector after `recs`, with the Ledger's OOMs in order.
fn replay(recs: &[Record]) -> (Ledger, Collector, Vec<(u32, Oom)>) {
    let mut ledger = Ledger::new();
    let mut post = Collector::new(usize::MAX);
    let mut ooms = Vec::new();
    for rec in recs {
        ledger.apply(rec);
        for ch in ledger.changes() {
            if let Change::Oom { proc, oom } = ch {
                ooms.push((*proc, (**oom).clone()));
            }
        }
        post.observe(&ledger, rec);
    }
    (ledger, post, ooms)
}

fn write(dir: &Path, recs: &[Record]) -> std::path::PathBuf {
    let path = dir.join("t.jsonl");
    let mut w = TraceWriter::create(&path).expect("create");
    w.write(&Record::Header(Box::new(header())))
        .expect("header");
    for rec in recs {
        w.write(rec).expect("write");
    }
    w.finish(u64::MAX / 2, 0, 0).expect("finish");
    path
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn leaks_oom_explanations_and_timeline_agree_with_the_ledger(recs in sequence(200)) {
        let (ledger, post, ooms) = replay(&recs);

        // The leak tracker's live bytes per stack are the Ledger's, for every process still
        // running (an exited one keeps what it held at its exit, which is where a leak shows).
        let tracked = post.leaks.live_by_stack();
        let mut want: HashMap<(u32, Option<u32>), u64> = HashMap::new();
        for p in ledger.processes().filter(|p| !p.exited()) {
            for a in p.live_allocations() {
                *want.entry((p.proc, a.stack)).or_default() += a.bytes;
            }
        }
        for p in ledger.processes().filter(|p| !p.exited()) {
            let got: BTreeMap<_, _> = tracked
                .iter()
                .filter(|((q, _), b)| *q == p.proc && **b > 0)
                .collect();
            let wanted: BTreeMap<_, _> = want
                .iter()
                .filter(|((q, _), b)| *q == p.proc && **b > 0)
                .collect();
            prop_assert_eq!(got, wanted);
        }

        // The timeline's current values are the Ledger's usage.
        for p in ledger.processes() {
            let u = &p.usage;
            if let Some(now) = post.timeline.now(p.proc) {
                prop_assert_eq!(now, (u.device_bytes, u.pool_held_bytes, u.host_bytes));
            }
        }

        // One explanation per Ledger OOM, about the same device with the same figures.
        let pm = post.finish(&ledger);
        prop_assert_eq!(pm.ooms.len(), ooms.len());
        for (e, (proc, oom)) in pm.ooms.iter().zip(&ooms) {
            prop_assert_eq!(e.proc, *proc);
            prop_assert_eq!(e.ts_ns, oom.ts_ns);
            prop_assert_eq!(e.device, oom.device);
            prop_assert_eq!(e.nvml_index, oom.nvml_index);
            prop_assert_eq!(e.held_device_bytes + e.held_pool_bytes, oom.device_bytes);
            prop_assert_eq!(
                e.by_class.values().sum::<u64>(),
                oom.live_by_class.values().sum::<u64>()
            );
            prop_assert_eq!(&e.others, &oom.others);
        }
    }

    #[test]
    fn every_byte_a_process_allocated_is_ended_or_held(recs in sequence(200)) {
        let report = super::summarize(recs.into_iter(), None);
        for p in &report.processes {
            let ended: u64 = p
                .ended
                .iter()
                .filter(|(cause, _)| *cause != "process_exit")
                .map(|(_, e)| e.bytes)
                .sum();
            prop_assert_eq!(
                p.started.bytes,
                ended + p.device_bytes_at_exit + p.host_bytes_at_exit,
                "process {}: {:?}", p.proc, p.ended
            );
            if p.exited {
                let at_exit = p.ended.get("process_exit").map_or(0, |e| e.bytes);
                prop_assert_eq!(at_exit, p.device_bytes_at_exit + p.host_bytes_at_exit);
            }
        }
        let text = super::render_text(&report);
        prop_assert!(!text.contains("not accounted for"), "{}", text);
    }

    #[test]
    fn exports_agree_with_the_ledger(recs in sequence(120)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let trace = write(dir.path(), &recs);
        let (ledger, _, _) = replay(&recs);
        let live: Vec<_> = ledger
            .processes()
            .filter(|p| !p.exited())
            .flat_map(|p| p.live_allocations())
            .collect();
        let started = {
            let mut l = Ledger::new();
            recs.iter()
                .map(|r| {
                    l.apply(r)
                        .iter()
                        .filter(|c| matches!(c, Change::Started { .. }))
                        .count()
                })
                .sum::<usize>()
        };

        // Perfetto: every allocation the Ledger started is one slice, begun and ended once;
        // those still live end with the trace.
        let out = dir.path().join("p.json");
        export_file(&trace, Format::Perfetto, &out, &Options::default()).expect("perfetto");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).expect("read")).expect("json");
        let mut slices: HashMap<String, (u32, u32)> = HashMap::new();
        let mut at_end = 0;
        for ev in json["traceEvents"].as_array().expect("events") {
            let id = ev["id"].as_str().map(str::to_owned);
            match (ev["ph"].as_str(), id) {
                (Some("b"), Some(id)) => slices.entry(id).or_default().0 += 1,
                (Some("e"), Some(id)) => {
                    slices.entry(id).or_default().1 += 1;
                    at_end += usize::from(ev["args"]["ended_by"] == "end_of_trace");
                }
                _ => {}
            }
        }
        prop_assert_eq!(slices.len(), started);
        prop_assert!(slices.values().all(|&(b, e)| b == 1 && e == 1), "{slices:?}");
        prop_assert_eq!(at_end, live.len());

        // memory-viz: the segments are the live device allocations at an address.
        let out = dir.path().join("m.pickle");
        let note = export_file(&trace, Format::MemoryViz, &out, &Options::default())
            .expect("memviz")
            .note;
        let shown = live
            .iter()
            .filter(|a| {
                matches!(
                    a.mem,
                    Mem::Device | Mem::DeviceAsync | Mem::Managed | Mem::Graph
                ) && a.addr.is_some()
            })
            .count();
        let want = format!("{shown} allocations live at the end");
        prop_assert!(note.contains(&want), "{note}");

        // Folded stacks at the end: every live byte, once.
        let out = dir.path().join("f.txt");
        let opts = Options {
            at: Some(Moment::End),
            ..Options::default()
        };
        let bytes: u64 = live.iter().map(|a| a.bytes).sum();
        let live_zero = live.iter().filter(|a| a.bytes == 0).count();
        match export_file(&trace, Format::Folded, &out, &opts) {
            Ok(_) => {
                let text = std::fs::read_to_string(&out).expect("read");
                let total: u64 = text
                    .lines()
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                    .sum();
                prop_assert_eq!(total, bytes);
            }
            Err(crate::export::ExportError::Empty) => {
                prop_assert_eq!(live.len(), live_zero);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}
