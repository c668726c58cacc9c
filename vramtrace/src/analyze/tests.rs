//! The summary of a small hand-built trace, its text and its JSON.

use super::*;
use crate::trace::{Call, Exit, Library, Lost, Probe, Process};
use crate::trace::{GpuInfo, NvmlInfo};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const START: u64 = 1_000_000_000;

fn call(proc: u32, pid: u32, api: &str, ts_s: f64) -> Call {
    Call {
        api: api.into(),
        proc,
        pid,
        tid: pid,
        ts_ns: START + (ts_s * 1e9) as u64,
        ..Default::default()
    }
}

fn header() -> Header {
    Header {
        format: "vramtrace".into(),
        version: "1.0".into(),
        tool_version: "0.1.0".into(),
        host: "gpu01".into(),
        kernel: "6.18.0".into(),
        libraries: vec![Library {
            path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            build_id: Some("abcd".into()),
            probes: vec![Probe {
                symbol: "cuMemAlloc_v2".into(),
                ..Default::default()
            }],
        }],
        start_unix_ns: 1_784_000_000_000_000_000,
        start_monotonic_ns: START,
        ..Default::default()
    }
}

/// A trainer that loads 2 GiB, runs out of memory asking for 40 GiB and exits holding it all;
/// a server (same PID, later) that is still running with a pool and pinned memory.
fn trace() -> Vec<Record> {
    let dev = |c: Call, addr: u64, bytes: u64| {
        Record::Alloc(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            mem: Some(Mem::Device),
            ..c
        })
    };
    vec![
        Record::Header(Box::new(header())),
        Record::Process(Process {
            id: 1,
            pid: 4242,
            comm: "python".into(),
            cmdline: vec!["python".into(), "train.py".into()],
            ..Default::default()
        }),
        Record::CtxCreate(Call {
            handle: Some(0xc0),
            device: Some(0),
            ..call(1, 4242, "cuCtxCreate_v2", 0.1)
        }),
        dev(call(1, 4242, "cuMemAlloc_v2", 1.0), 0x1000_0000, GIB),
        dev(call(1, 4242, "cuMemAlloc_v2", 1.5), 0x5000_0000, GIB),
        dev(call(1, 4242, "cuMemAlloc_v2", 2.0), 0x9000_0000, 512 * MIB),
        Record::Free(Call {
            addr: Some(0x9000_0000),
            ..call(1, 4242, "cuMemFree_v2", 2.5)
        }),
        Record::Failed(Call {
            ret: 2,
            bytes: Some(40 * GIB),
            mem: Some(Mem::Device),
            ..call(1, 4242, "cuMemAlloc_v2", 3.0)
        }),
        Record::Free(Call {
            addr: Some(0xdead),
            ..call(1, 4242, "cuMemFree_v2", 3.1)
        }),
        Record::Lost(Lost {
            ts_ns: START + 3_200_000_000,
            ringbuf_full: 2,
            ..Default::default()
        }),
        Record::Exit(Exit {
            proc: 1,
            pid: 4242,
            ts_ns: START + 4_000_000_000,
        }),
        Record::Process(Process {
            id: 2,
            pid: 4242,
            comm: "vllm".into(),
            ..Default::default()
        }),
        Record::Alloc(Call {
            addr: Some(0x2000_0000),
            bytes: Some(256 * MIB),
            mem: Some(Mem::DeviceAsync),
            device: Some(1),
            ..call(2, 4242, "cuMemAllocAsync", 5.0)
        }),
        Record::Free(Call {
            addr: Some(0x2000_0000),
            mem: Some(Mem::DeviceAsync),
            ..call(2, 4242, "cuMemFreeAsync", 5.5)
        }),
        Record::Alloc(Call {
            addr: Some(0x7f00_0000_0000),
            bytes: Some(64 * MIB),
            mem: Some(Mem::HostPinned),
            ..call(2, 4242, "cuMemHostAlloc", 6.0)
        }),
        Record::Footer(Footer {
            end_ts_ns: START + 10_000_000_000,
            lost_events: 2,
            ..Default::default()
        }),
    ]
}

fn summary() -> Report {
    let read = ReadStatus {
        integrity: Integrity::Complete,
        digest_ok: Some(true),
        ..Default::default()
    };
    summarize(trace().into_iter(), Some(&read))
}

#[test]
fn numbers_per_process() {
    let r = summary();
    assert!(r.complete);
    assert_eq!(r.digest_ok, Some(true));
    assert_eq!(
        r.lost_events, 2,
        "footer and lost records count the same events once"
    );
    assert_eq!(r.duration_ns, Some(10_000_000_000));
    let h = r.header.as_ref().expect("header");
    assert_eq!(h.host, "gpu01");
    assert_eq!(h.libraries[0].probes, 1);
    assert_eq!(r.processes.len(), 2);

    let p = &r.processes[0];
    assert_eq!(
        (p.proc, p.pid, p.comm.as_str(), p.exited),
        (1, 4242, "python", true)
    );
    assert_eq!(p.peak_device_bytes, 2 * GIB + 512 * MIB);
    assert_eq!(p.peak_ts_ns, Some(START + 2_000_000_000));
    assert_eq!(p.device_bytes_at_exit, 2 * GIB);
    assert_eq!(p.host_bytes_at_exit, 0);
    assert_eq!(p.live_allocations_at_exit, 2);
    assert_eq!(p.end_ts_ns, Some(START + 4_000_000_000));
    assert_eq!(
        p.allocs["cuMemAlloc_v2"],
        ApiTotal {
            count: 3,
            bytes: 2 * GIB + 512 * MIB
        }
    );
    assert_eq!(
        p.frees["cuMemFree_v2"],
        ApiTotal {
            count: 2,
            bytes: 512 * MIB
        }
    );
    assert_eq!(p.failed["cuMemAlloc_v2"].rets[&2], 1);
    assert_eq!(p.failed["cuMemAlloc_v2"].bytes, 40 * GIB);
    assert_eq!(p.failed_total, 1);
    assert_eq!(p.anomalies["free_unknown_address"].count, 1);
    assert_eq!(p.devices.len(), 1);
    assert_eq!(p.devices[0].device, Some(0));
    assert_eq!(p.devices[0].device_bytes_at_exit, 2 * GIB);

    let q = &r.processes[1];
    assert_eq!(
        (q.proc, q.pid, q.comm.as_str(), q.exited),
        (2, 4242, "vllm", false)
    );
    assert_eq!(q.peak_device_bytes, 256 * MIB);
    assert_eq!(q.device_bytes_at_exit, 0);
    assert_eq!(q.pool_held_bytes_at_exit, 256 * MIB);
    assert_eq!(q.host_bytes_at_exit, 64 * MIB);
    assert_eq!(q.devices[0].device, Some(1));
    assert!(q.anomalies.is_empty());

    assert_eq!(r.machine.peak_device_bytes, 2 * GIB + 512 * MIB);
}

#[test]
fn without_read_status_footer_means_complete() {
    let r = summarize(trace().into_iter(), None);
    assert!(r.complete);
    assert_eq!(r.digest_ok, None);
    let mut cut = trace();
    cut.truncate(8);
    let r = summarize(cut.into_iter(), None);
    assert!(!r.complete);
    assert_eq!(r.lost_events, 0);
    assert!(!r.processes[0].exited);
    assert_eq!(r.processes[0].device_bytes_at_exit, 2 * GIB);
}

#[test]
fn header_and_footer_from_read_status() {
    let recs = trace()
        .into_iter()
        .filter(|r| !matches!(r, Record::Header(_) | Record::Footer(_)));
    let read = ReadStatus {
        integrity: Integrity::Altered,
        digest_ok: Some(false),
        problems: vec![(7, "expected value".into())],
        integrity_notes: vec![(30, "the footer's SHA-256 is 00".into())],
        header: Some(header()),
        footer: None,
    };
    let r = summarize(recs, Some(&read));
    assert_eq!(r.header.as_ref().map(|h| h.kernel.as_str()), Some("6.18.0"));
    assert_eq!(r.problems[0].line, 7);
    let text = render_text(&r);
    assert!(!text.contains("CUT SHORT"), "{text}");
    assert!(text.contains("!!! TRACE ALTERED"), "{text}");
    assert!(text.contains("line 30: the footer's SHA-256"), "{text}");
    assert!(text.contains("!!! 1 UNREADABLE LINES SKIPPED"), "{text}");
    assert!(text.contains("line 7: expected value"), "{text}");
    assert!(!text.contains("trace complete"), "{text}");
}

#[test]
fn text_has_the_key_lines() {
    let text = render_text(&summary());
    for want in [
        "trace of gpu01 (kernel 6.18.0), recorded by vramtrace 0.1.0",
        "lasted 10.000 s",
        "!!! 2 EVENTS LOST",
        "pid 4242 (python) exited at +4.000 s",
        "cmdline: python train.py",
        "peak device bytes:       2.5 GiB (2684354560 bytes) at +2.000 s",
        "held at exit:            device 2.0 GiB (2147483648 bytes)",
        "cuMemAlloc_v2: 1 x CUDA_ERROR_OUT_OF_MEMORY (2); 40.0 GiB (42949672960 bytes)",
        "free_unknown_address: 1",
        "pid 4242 (vllm) still running at end of trace",
        "held at end of trace:",
        "pool-held 256.0 MiB (268435456 bytes)",
        "peak host memory:        64.0 MiB",
        // Every byte allocated is accounted for: ended by cause, or held.
        "every byte:              allocated 2.5 GiB (2684354560 bytes) in 3 = ended 512.0 MiB \
         (536870912 bytes) (free 512.0 MiB in 1) + held at exit 2.0 GiB (2147483648 bytes)",
        "every byte:              allocated 320.0 MiB (335544320 bytes) in 2 = ended 256.0 MiB \
         (268435456 bytes) (pool_free 256.0 MiB in 1) + held at end 64.0 MiB (67108864 bytes)",
        "of what went back to pools (stream-ordered, graph), 256.0 MiB (268435456 bytes) is still held",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(
        !text.contains("trace complete"),
        "lost events: not clean\n{text}"
    );

    // The API table lines up: every row as wide as the header row.
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("api "))
        .take(3)
        .collect();
    assert_eq!(table.len(), 3, "{text}");
    assert!(
        table[1].trim_start().starts_with("cuCtxCreate_v2") || table[1].contains("cuMemAlloc_v2")
    );
    assert!(
        table.iter().all(|l| l.len() == table[0].len()),
        "{table:#?}"
    );
}

#[test]
fn clean_trace_says_so() {
    let mut recs = trace();
    recs.retain(|r| !matches!(r, Record::Lost(_)));
    if let Some(Record::Footer(f)) = recs.last_mut() {
        f.lost_events = 0;
    }
    let read = ReadStatus {
        integrity: Integrity::Complete,
        digest_ok: Some(true),
        ..Default::default()
    };
    let text = render_text(&summarize(recs.into_iter(), Some(&read)));
    assert!(
        text.contains("trace complete, digest verified, no events lost"),
        "{text}"
    );
    assert!(!text.contains("!!!"), "{text}");
}

#[test]
fn json_field_names() {
    let r = summary();
    let json = serde_json::to_string_pretty(&r).expect("serializes");
    let v: serde_json::Value = serde_json::from_str(&json).expect("parses");
    let procs = v["processes"].as_array().expect("processes list");
    assert_eq!(procs.len(), 2);
    let p = &procs[0];
    for key in [
        "pid",
        "comm",
        "peak_device_bytes",
        "device_bytes_at_exit",
        "host_bytes_at_exit",
        "pool_held_bytes_at_exit",
        "exited",
        "allocs",
        "frees",
        "failed",
        "failed_total",
        "anomalies",
        "devices",
    ] {
        assert!(p.get(key).is_some(), "no {key} in {p}");
    }
    assert_eq!(p["pid"], 4242);
    assert_eq!(p["comm"], "python");
    assert_eq!(p["peak_device_bytes"], 2 * GIB + 512 * MIB);
    assert_eq!(p["failed"]["cuMemAlloc_v2"]["rets"]["2"], 1);
    assert_eq!(procs[1]["host_bytes_at_exit"], 64 * MIB);
    for key in [
        "complete",
        "digest_ok",
        "problems",
        "header",
        "lost_events",
        "duration_ns",
    ] {
        assert!(v.get(key).is_some(), "no {key} at top level");
    }
    let back: Report = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back, r);
}

#[test]
fn error_names_and_units() {
    assert_eq!(cuda_error_name(2), "CUDA_ERROR_OUT_OF_MEMORY");
    assert_eq!(cuda_error_name(0), "CUDA_SUCCESS");
    assert_eq!(cuda_error_name(999), "CUDA_ERROR_UNKNOWN");
    assert_eq!(cuda_error_name(12345), "unrecognized CUresult");
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(3 * GIB / 2), "1.5 GiB");
    assert_eq!(human_bytes(100 * MIB), "100.0 MiB");
    assert_eq!(render::utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(
        render::utc(951_827_696_000_000_000),
        "2000-02-29 12:34:56 UTC"
    );
}

/// NVML in the header and one recorded sample: the top-level block, the per-GPU machine
/// figures with what else was on the GPU, and the per-process coverage.
#[test]
fn nvml_block_and_coverage() {
    let mut h = header();
    h.nvml = Some(NvmlInfo {
        available: true,
        driver_version: Some("535.247.01".into()),
        nvml_version: Some("12.535.247.01".into()),
        gpus: vec![GpuInfo {
            index: 0,
            uuid: Some("GPU-aaaa".into()),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            pci_bus_id: Some("00000000:01:00.0".into()),
            total_bytes: Some(80 * GIB),
        }],
        ..NvmlInfo::default()
    });
    let sample: Record = serde_json::from_str(
        r#"{"type":"nvml","ts_ns":1500000000,"gpus":[{"index":0,"total_bytes":85899345920,"used_bytes":4294967296,"free_bytes":81604378624,"processes":[{"pid":4242,"used_bytes":3221225472},{"pid":999}]}]}"#,
    )
    .expect("nvml line");
    let records = vec![
        Record::Header(Box::new(h)),
        Record::Process(Process {
            id: 1,
            pid: 4242,
            comm: "python".into(),
            ..Default::default()
        }),
        Record::Alloc(Call {
            addr: Some(0x1000_0000),
            bytes: Some(2 * GIB),
            mem: Some(Mem::Device),
            device: Some(0),
            ..call(1, 4242, "cuMemAlloc_v2", 0.2)
        }),
        sample,
    ];
    let r = summarize(records.into_iter(), None);
    let n = r.nvml.as_ref().expect("nvml block");
    assert!(n.info.available);
    assert_eq!(n.samples, 1);
    assert_eq!(n.info.gpus.len(), 1);
    let d = &r.processes[0].nvml[0];
    assert_eq!(
        (d.device, d.nvml_index, d.traced_bytes, d.nvml_bytes),
        (Some(0), Some(0), 2 * GIB, Some(3 * GIB))
    );
    assert_eq!(d.difference_bytes, Some(GIB as i64));
    let g = &r.machine.nvml_gpus[0];
    assert_eq!((g.used_bytes, g.traced_bytes), (Some(4 * GIB), 2 * GIB));
    assert_eq!(g.untraced_processes.len(), 1);

    let json = serde_json::to_value(&r).expect("serializes");
    assert_eq!(json["nvml"]["available"], true);
    assert_eq!(
        json["processes"][0]["nvml"][0]["coverage"].as_f64(),
        Some(2.0 / 3.0)
    );
    // NVML could not say how much pid 999 uses: absent, not 0.
    let untraced = &json["machine"]["nvml_gpus"][0]["untraced_processes"][0];
    assert_eq!(untraced["pid"], 999);
    assert!(untraced.get("bytes").is_none());

    let text = render_text(&r);
    assert!(
        text.contains("NVML: driver 535.247.01, 1 sample(s)"),
        "{text}"
    );
    assert!(
        text.contains("NVML GPU 0 (NVIDIA H100 80GB HBM3): used 4.0 GiB"),
        "{text}"
    );
    assert!(text.contains("untraced pid 999: unknown"), "{text}");
    assert!(text.contains("67% covered, not traced 1.0 GiB"), "{text}");
}

#[test]
fn nvml_unavailable_is_said_once() {
    let mut h = header();
    h.nvml = Some(NvmlInfo {
        available: false,
        reason: Some("NVML could not initialize: Driver Not Loaded".into()),
        ..NvmlInfo::default()
    });
    let r = summarize(std::iter::once(Record::Header(Box::new(h))), None);
    let json = serde_json::to_value(&r).expect("serializes");
    assert_eq!(json["nvml"]["available"], false);
    assert_eq!(
        json["nvml"]["reason"],
        "NVML could not initialize: Driver Not Loaded"
    );
    assert!(json["machine"].get("nvml_gpus").is_none());
    let text = render_text(&r);
    assert!(
        text.contains("NVML: not available (NVML could not initialize: Driver Not Loaded)"),
        "{text}"
    );
    // A trace that does not say: no block at all.
    let r = summarize(std::iter::once(Record::Header(Box::new(header()))), None);
    assert!(r.nvml.is_none());
    assert!(!render_text(&r).contains("NVML"));
}

/// Analyzes `bytes` as a trace file.
fn analyze_bytes(bytes: &[u8]) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl");
    std::fs::write(&path, bytes).expect("write");
    analyze_file(&path).expect("analyze")
}

/// A finished trace of two allocations and their frees, as the writer writes it.
fn finished_trace() -> Vec<u8> {
    use crate::trace::read::tests::{alloc, free, write_trace};
    write_trace(&[alloc(0), free(0), alloc(1), free(1)], true).0
}

/// The one integrity line `analyze` prints, and the unreadable-lines line if any.
fn verdict_lines(r: &Report) -> Vec<String> {
    render_text(r)
        .lines()
        .filter(|l| l.starts_with("!!! TRACE") || l.contains("UNREADABLE"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_whole_trace_is_complete() {
    let r = analyze_bytes(&finished_trace());
    assert_eq!(r.integrity, Integrity::Complete);
    assert!(r.complete);
    // The footer tells of lost events, so no "trace complete" line; no verdict line either.
    assert_eq!(verdict_lines(&r), Vec::<String>::new());
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["integrity"], "complete");
    assert_eq!(json["complete"], true);
}

#[test]
fn a_trace_without_footer_is_cut_short() {
    let bytes = finished_trace();
    let last = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("lines");
    let r = analyze_bytes(&bytes[..=last]);
    assert_eq!(r.integrity, Integrity::CutShort);
    assert!(!r.complete);
    let lines = verdict_lines(&r);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("!!! TRACE CUT SHORT"), "{lines:?}");
    assert_eq!(
        serde_json::to_value(&r).expect("json")["integrity"],
        "cut_short"
    );
}

#[test]
fn a_changed_line_is_altered_not_cut_short_nor_unreadable() {
    let text = String::from_utf8(finished_trace()).expect("utf-8");
    // The second allocation's size: the line still reads, as another number.
    let changed = text.replacen("\"bytes\":", "\"bytes\":9", 1);
    assert_ne!(changed, text);
    let r = analyze_bytes(changed.as_bytes());
    assert_eq!(r.integrity, Integrity::Altered);
    assert_eq!(r.problems, [], "a line that reads is not unreadable");
    let lines = verdict_lines(&r);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("!!! TRACE ALTERED"), "{lines:?}");
    assert!(render_text(&r).contains("BLAKE3"));
    assert_eq!(
        serde_json::to_value(&r).expect("json")["integrity"],
        "altered"
    );
}

#[test]
fn lines_after_the_footer_are_appended_not_cut_short() {
    let mut bytes = finished_trace();
    bytes.extend(b"{\"type\":\"exit\",\"ts_ns\":1,\"pid\":1}\n");
    let r = analyze_bytes(&bytes);
    assert_eq!(r.integrity, Integrity::Appended);
    assert_eq!(r.problems, []);
    let lines = verdict_lines(&r);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("!!! TRACE APPENDED TO"), "{lines:?}");
    assert_eq!(
        serde_json::to_value(&r).expect("json")["integrity"],
        "appended"
    );
}

/// Analyzes `bytes` as a trace file with `filters`.
fn analyze_bytes_with(bytes: &[u8], filters: &Filters) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl");
    std::fs::write(&path, bytes).expect("write");
    analyze_file_with(&path, filters).expect("analyze")
}

#[test]
fn at_a_moment_the_report_is_the_state_then() {
    use crate::trace::read::tests::{alloc, free, write_trace};
    let pid = 4242;
    let mut records = vec![Record::Process(Process {
        id: 1,
        pid,
        ..Default::default()
    })];
    // 30 allocations, the first 10 freed before the moment and the rest after it.
    let late_free = |i: u64| match free(i) {
        Record::Free(c) => Record::Free(Call {
            ts_ns: 5_000_100_000 + i * 1000,
            ..c
        }),
        _ => unreachable!("free() makes a free"),
    };
    records.extend((0..30).map(alloc));
    records.extend((0..30).map(late_free));
    records.push(Record::Exit(Exit {
        proc: 1,
        pid,
        ts_ns: 5_000_900_000,
    }));
    let (bytes, _) = write_trace(&records, true);
    let moment = late_free(9).ts_ns().expect("timed");
    let header_start = crate::trace::read::tests::header().start_monotonic_ns;
    let by_secs = Moment::AfterStart((moment - header_start) as f64 / 1e9);
    for at in [Moment::Monotonic(moment), by_secs] {
        let filters = Filters {
            at: Some(at),
            top: 1_000_000,
            ..Filters::default()
        };
        let r = analyze_bytes_with(&bytes, &filters);
        assert_eq!(r.at_ns, Some(moment), "{at:?}");
        assert_eq!(r.integrity, Integrity::Complete, "the whole file was read");
        assert_eq!(r.duration_ns, Some(moment - header_start));
        let p = &r.processes[0];
        assert!(!p.exited, "the process exits after the moment");
        assert_eq!(p.live_allocations_at_exit, 20);
        assert_eq!(
            p.largest_at_exit.len(),
            20,
            "--top lists every live allocation"
        );
        assert_eq!(p.device_bytes_at_exit, 20 << 20);
        let text = render_text(&r);
        assert!(
            text.contains(&format!("state at +0.000 s (ts {moment} ns)")),
            "{text}"
        );
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["at_ns"], moment);
    }
    let end = analyze_bytes_with(&bytes, &Filters::default());
    assert_eq!(end.at_ns, None);
    assert_eq!(
        serde_json::to_value(&end).expect("json")["at_ns"],
        serde_json::Value::Null
    );
    assert_eq!(end.processes[0].live_allocations_at_exit, 0);
    assert!(!render_text(&end).contains("state at"));
}

#[test]
fn a_window_narrows_the_process_section_too() {
    use crate::trace::read::tests::{alloc, free, write_trace};
    let pid = 4242;
    let shifted = |r: Record, ts_ns: u64| match r {
        Record::Alloc(c) => Record::Alloc(Call { ts_ns, ..c }),
        Record::Free(c) => Record::Free(Call { ts_ns, ..c }),
        other => other,
    };
    let t0 = 5_000_000_000;
    let mut records = vec![Record::Process(Process {
        id: 1,
        pid,
        ..Default::default()
    })];
    // 10 MiB allocated, then freed; later 3 MiB allocated and kept.
    records.extend((0..10).map(alloc));
    records.extend((0..10).map(|i| shifted(free(i), t0 + 100_000 + i * 1000)));
    records.extend((20..23).map(|i| shifted(alloc(i), t0 + 200_000 + i * 1000)));
    records.push(Record::Exit(Exit {
        proc: 1,
        pid,
        ts_ns: t0 + 900_000,
    }));
    let (bytes, _) = write_trace(&records, true);
    let start = crate::trace::read::tests::header().start_monotonic_ns;
    let secs = |ts: u64| (ts - start) as f64 / 1e9;

    // After the frees: only the late allocations, their own peak, held at the window's end.
    let late = Filters {
        from_s: Some(secs(t0 + 150_000)),
        to_s: Some(secs(t0 + 300_000)),
        ..Filters::default()
    };
    let r = analyze_bytes_with(&bytes, &late);
    let p = &r.processes[0];
    assert_eq!(p.allocs["cuMemAlloc_v2"].count, 3);
    assert_eq!(p.allocs["cuMemAlloc_v2"].bytes, 3 << 20);
    assert!(p.frees.is_empty(), "{:?}", p.frees);
    assert_eq!(
        p.peak_device_bytes,
        3 << 20,
        "not the 10 MiB before the window"
    );
    assert_eq!(p.peak_ts_ns, Some(t0 + 200_000 + 22 * 1000));
    assert_eq!(p.devices[0].peak_device_bytes, 3 << 20);
    assert_eq!(r.machine.peak_device_bytes, 3 << 20);
    assert!(!p.exited, "it exits after the window");
    assert_eq!(p.device_bytes_at_exit, 3 << 20);
    assert_eq!(r.filters.from_s, late.from_s);
    let text = render_text(&r);
    assert!(text.contains("filtered: from +"), "{text}");
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["filters"]["to_s"], serde_json::json!(late.to_s));

    // Around the frees: the frees, and the peak is what was held when the window opened.
    let frees = Filters {
        from_s: Some(secs(t0 + 50_000)),
        to_s: Some(secs(t0 + 150_000)),
        ..Filters::default()
    };
    let r = analyze_bytes_with(&bytes, &frees);
    let p = &r.processes[0];
    assert!(p.allocs.is_empty(), "{:?}", p.allocs);
    assert_eq!(p.frees["cuMemFree_v2"].count, 10);
    assert_eq!(p.peak_device_bytes, 10 << 20);
    assert_eq!(
        p.peak_ts_ns,
        Some(t0 + 50_000),
        "held when the window opened"
    );
    assert_eq!(p.device_bytes_at_exit, 0);

    // A window after the process exited shows no process.
    let after = Filters {
        from_s: Some(secs(t0 + 950_000)),
        ..Filters::default()
    };
    assert!(analyze_bytes_with(&bytes, &after).processes.is_empty());
}

#[test]
fn filters_that_match_nothing_say_what_the_trace_holds() {
    use crate::trace::read::tests::{alloc, write_trace};
    let mut records = vec![Record::Process(Process {
        id: 1,
        pid: 4242,
        comm: "python3".into(),
        ..Default::default()
    })];
    records.extend((0..3).map(alloc));
    let (bytes, _) = write_trace(&records, true);
    let r = analyze_bytes_with(
        &bytes,
        &Filters {
            pids: vec![1],
            gpu: Some(3),
            ..Filters::default()
        },
    );
    assert_eq!(
        r.filters.unmatched,
        [
            "pid 1 is not in this trace; it has 4242 (python3)",
            "GPU 3 is not in this trace; it has GPU 0"
        ]
    );
    assert!(r.processes.is_empty());
    let on_0 = analyze_bytes_with(
        &bytes,
        &Filters {
            gpu: Some(0),
            ..Filters::default()
        },
    );
    assert!(on_0.filters.unmatched.is_empty());
    assert_eq!(on_0.processes.len(), 1);
}
