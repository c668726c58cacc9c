//! The reader's tests: bad input of every kind, the fast path against serde, round trips.

use std::io::Cursor;

use proptest::prelude::*;

use super::fast::call_key;
use super::*;
use crate::trace::record::{Frame, Library, Mem, Probe, Scope};
use crate::trace::write::TraceWriter;

pub(crate) fn header() -> Header {
    Header {
        format: FORMAT_NAME.into(),
        version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        tool_version: "0.1.0".into(),
        host: "gpu-box".into(),
        kernel: "6.8.0-45-generic".into(),
        libraries: vec![Library {
            path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            build_id: Some("5e1c2f0a".into()),
            probes: vec![Probe {
                symbol: "cuMemAlloc_v2".into(),
                symbol_offset: 0x2b_4f10,
                probe_offset: 0,
            }],
        }],
        start_unix_ns: 1_767_225_600_000_000_000,
        start_monotonic_ns: 5_000_000_000,
        scope: Scope {
            all: true,
            ..Scope::default()
        },
        nvml: None,
        policy: None,
        extra: BTreeMap::new(),
    }
}

pub(crate) fn alloc(i: u64) -> Record {
    Record::Alloc(Call {
        api: "cuMemAlloc_v2".into(),
        proc: 1,
        pid: 4242,
        tid: 4243,
        ts_ns: 5_000_000_000 + i * 1000,
        dur_ns: 2100,
        ret: 0,
        bytes: Some(1 << 20),
        addr: Some(0x7f00_0000_0000 + i * (1 << 20)),
        mem: Some(Mem::Device),
        device: Some(0),
        stack: Some(1),
        ..Call::default()
    })
}

pub(crate) fn free(i: u64) -> Record {
    Record::Free(Call {
        api: "cuMemFree_v2".into(),
        proc: 1,
        pid: 4242,
        tid: 4243,
        ts_ns: 5_000_000_500 + i * 1000,
        dur_ns: 900,
        ret: 0,
        addr: Some(0x7f00_0000_0000 + i * (1 << 20)),
        device: Some(0),
        stack: Some(1),
        ..Call::default()
    })
}

/// One record of every type but header and footer, optional fields filled.
pub(crate) fn body() -> Vec<Record> {
    let full = Call {
        api: "cuMemAllocFromPoolAsync_ptsz".into(),
        proc: 1,
        pid: 4242,
        tid: 4243,
        ts_ns: 5_000_001_000,
        dur_ns: 1200,
        ret: 0,
        bytes: Some(4096),
        addr: Some(0x7f00_0010_0000),
        mem: Some(Mem::DeviceAsync),
        handle: Some(0x55aa),
        device: Some(1),
        pool: Some(0x5600_0000),
        stream: Some(0x5700_0000),
        offset: Some(0),
        flags: Some(1),
        pitch: Some(512),
        stack: Some(1),
        unreadable: vec!["pitch".into()],
        signalled: Some(6),
        src_mem: Some(crate::trace::CopySrc::Unified),
        src: Some(0x5500_0000),
        attr: Some(4),
        value: Some(1 << 30),
        green: Some(0x5800_0000),
        share: Some("0a".repeat(64)),
        handle_type: Some(1),
        os_handle: Some(9),
        graph: Some(0x5900_0000),
        copies: Some(Box::new([crate::trace::BatchCopy {
            addr: Some(0x7f00_0020_0000),
            src_mem: crate::trace::CopySrc::Unified,
            src: Some(0x5500_1000),
            bytes: 8192,
        }])),
        count: Some(2),
        bound: Some(Box::new(crate::trace::Bound {
            handle: 0x5a00_0000,
            offset: 2 << 20,
        })),
        file: Some(0x1234_5678_9abc_def0),
        region: Some(Box::new(crate::trace::ArrayRegion {
            miptail: false,
            level: 1,
            layer: 0,
            offset: [64, 0, 0],
            extent: [64, 64, 1],
        })),
    };
    let call = |api: &str| Call {
        api: api.into(),
        ..full.clone()
    };
    vec![
        Record::Process(Process {
            id: 1,
            pid: 4242,
            start_time: Some(123_456),
            ppid: Some(1),
            comm: "python3".into(),
            cmdline: vec!["python3".into(), "train.py".into()],
            exe: Some("/usr/bin/python3.12".into()),
            container: Some("3f2a".into()),
            cuda_visible_devices: Some("1,GPU-5f2e".into()),
            pod_uid: Some("0f1e2d3c-aaaa-4bbb-8ccc-0123456789ab".into()),
            pod_name: Some("trainer-0".into()),
            pod_namespace: Some("ml".into()),
        }),
        Record::Process(Process {
            id: 2,
            pid: 4250,
            comm: "?".into(),
            ..Process::default()
        }),
        Record::Stack(Stack {
            id: 1,
            frames: vec![
                Frame {
                    addr: 0x7f12_3456_7890,
                    file: Some("/usr/lib/libtorch_cuda.so".into()),
                    build_id: Some("ab12".into()),
                    offset: Some(0x12_3456),
                    sym: Some("c10::cuda::CUDACachingAllocator::malloc".into()),
                    src: Some("CUDACachingAllocator.cpp:1234".into()),
                    unknown: None,
                    python: false,
                    inlined: false,
                },
                Frame {
                    addr: 0x7f12_3456_7890,
                    file: Some("/usr/lib/libtorch_cuda.so".into()),
                    build_id: Some("ab12".into()),
                    offset: Some(0x12_3456),
                    sym: Some("c10::cuda::CUDACachingAllocator::Native::malloc".into()),
                    src: Some("CUDACachingAllocator.cpp:3085".into()),
                    inlined: true,
                    ..Frame::default()
                },
                Frame {
                    addr: 0x1234,
                    unknown: Some("no mapping".into()),
                    ..Frame::default()
                },
                Frame {
                    addr: 0x7f00_0000_1000,
                    file: Some("/home/me/train.py".into()),
                    sym: Some("Model.forward".into()),
                    src: Some("/home/me/train.py:88".into()),
                    python: true,
                    ..Frame::default()
                },
            ],
            truncated: Some("frame pointer walk stopped".into()),
        }),
        alloc(0),
        free(0),
        Record::Failed(Call {
            ret: 2,
            ..call("cuMemAlloc_v2")
        }),
        Record::VmmCreate(call("cuMemCreate")),
        Record::VmmRelease(call("cuMemRelease")),
        Record::VmmMap(call("cuMemMap")),
        Record::VmmUnmap(call("cuMemUnmap")),
        Record::Reserve(call("cuMemAddressReserve")),
        Record::Unreserve(call("cuMemAddressFree")),
        Record::PoolCreate(call("cuMemPoolCreate")),
        Record::PoolDestroy(call("cuMemPoolDestroy")),
        Record::PoolTrim(call("cuMemPoolTrimTo")),
        Record::PoolAttr(call("cuMemPoolSetAttribute")),
        Record::Sync(call("cuStreamSynchronize_ptsz")),
        Record::GraphAllocNode(call("cuGraphAddMemAllocNode")),
        Record::GraphFreeNode(call("cuGraphAddMemFreeNode")),
        Record::GraphInstantiate(call("cuGraphInstantiateWithFlags")),
        Record::GraphLaunch(call("cuGraphLaunch_ptsz")),
        Record::GraphDestroy(call("cuGraphExecDestroy")),
        Record::GraphMemTrim(call("cuDeviceGraphMemTrim")),
        Record::GraphMemAttr(call("cuDeviceGetGraphMemAttribute")),
        Record::CtxCreate(call("cuCtxCreate_v2")),
        Record::CtxDestroy(call("cuCtxDestroy_v2")),
        Record::CtxCurrent(call("cuCtxSetCurrent")),
        Record::Copy(call("cuMemcpyHtoD_v2")),
        Record::Export(call("cuIpcGetMemHandle")),
        Record::Import(call("cuIpcOpenMemHandle_v2")),
        Record::ImportClose(call("cuIpcCloseMemHandle")),
        Record::Retain(call("cuMemRetainAllocationHandle")),
        Record::MulticastCreate(call("cuMulticastCreate")),
        Record::MulticastBind(call("cuMulticastBindMem_v2")),
        Record::MulticastUnbind(call("cuMulticastUnbind")),
        Record::ArrayMap(call("cuMemMapArrayAsync")),
        Record::ArrayUnmap(call("cuMemMapArrayAsync_ptsz")),
        Record::Unreturned(Call {
            mem: Some(Mem::Managed),
            signalled: Some(6),
            ..call("cuMemAllocManaged")
        }),
        Record::Lost(Lost {
            ts_ns: 5_000_002_000,
            ringbuf_full: 3,
            entry_map_full: 1,
            exit_dropped: 0,
            stack_failed: 2,
            return_without_entry: 1,
            ..Lost::default()
        }),
        Record::Nvml(crate::trace::record::NvmlSample {
            ts_ns: 5_000_002_500,
            gpus: vec![crate::trace::record::GpuSample {
                index: 0,
                total_bytes: Some(80 << 30),
                used_bytes: Some(3 << 30),
                free_bytes: Some(77 << 30),
                reserved_bytes: None,
                processes: vec![crate::trace::record::GpuProcess {
                    pid: 4242,
                    used_bytes: Some(2 << 30),
                }],
            }],
        }),
        Record::Exit(Exit {
            proc: 1,
            pid: 4242,
            ts_ns: 5_000_003_000,
        }),
    ]
}

/// Writes a trace of `records` and returns its bytes and footer.
pub(crate) fn write_trace(records: &[Record], finish: bool) -> (Vec<u8>, Option<Footer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl");
    let mut w = TraceWriter::create(&path).expect("create");
    w.write(&Record::Header(Box::new(header())))
        .expect("header");
    for rec in records {
        w.write(rec).expect("write");
    }
    let footer = if finish {
        Some(w.finish(6_000_000_000, 4, 2).expect("finish"))
    } else {
        drop(w);
        None
    };
    (std::fs::read(&path).expect("read back"), footer)
}

/// A trace of `recs` with `junk` inserted somewhere and `appended` after its footer.
fn spoiled_trace(
    recs: &[Record],
    junk: Option<(prop::sample::Index, Vec<u8>)>,
    appended: Option<Vec<u8>>,
) -> Vec<u8> {
    let (mut bytes, _) = write_trace(recs, true);
    if let Some((at, junk)) = junk {
        let at = at.index(bytes.len());
        bytes.splice(at..at, junk);
    }
    if let Some(tail) = appended {
        bytes.extend(tail);
    }
    bytes
}

fn read_all(bytes: &[u8]) -> (Vec<(u64, Record)>, ReadSummary) {
    let mut r = TraceReader::new(Cursor::new(bytes)).expect("header");
    let recs = std::iter::from_fn(|| r.next_record()).collect();
    (recs, r.summary())
}

fn open_err(bytes: &[u8]) -> String {
    match TraceReader::new(bytes) {
        Ok(_) => panic!("opened {:?}", String::from_utf8_lossy(bytes)),
        Err(e) => e.to_string(),
    }
}

fn header_line(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(Record::Header(Box::new(header()))).expect("to_value");
    edit(&mut v);
    let mut line = serde_json::to_vec(&v).expect("to_vec");
    line.push(b'\n');
    line
}

fn kinds(problems: &[Problem]) -> Vec<(u64, ProblemKind)> {
    problems.iter().map(|p| (p.line, p.kind)).collect()
}

#[test]
fn record_types_are_every_kind() {
    let mut all = body();
    all.insert(0, Record::Header(Box::new(header())));
    all.push(Record::Footer(Footer::default()));
    let seen: std::collections::BTreeSet<&str> = all.iter().map(Record::kind).collect();
    let listed = std::collections::BTreeSet::from(RECORD_TYPES);
    assert_eq!(seen, listed, "the test records have every type");
    assert_eq!(listed.len(), RECORD_TYPES.len(), "no duplicates");
    for r in &all {
        assert_eq!(RECORD_TYPES[r.type_index()], r.kind());
        // The tag each type is declared with is the one serde writes and reads.
        let json = serde_json::to_value(r).expect("serializes");
        assert_eq!(json["type"], r.kind(), "{r:?}");
        let tag = r.kind().as_bytes();
        assert_eq!(
            Record::call_kind(tag).is_some(),
            r.call().is_some(),
            "{tag:?}"
        );
        let empty = Record::empty_call(tag);
        assert_eq!(empty.as_ref().map(Record::kind), r.call().map(|_| r.kind()));
    }
}

/// The keys `fast_call` reads, at their indices from `call_key`.
const CALL_KEYS: [&[u8]; 18] = [
    b"api", b"proc", b"pid", b"tid", b"ts_ns", b"ret", b"dur_ns", b"bytes", b"addr", b"mem",
    b"handle", b"device", b"pool", b"stream", b"offset", b"flags", b"pitch", b"stack",
];

#[test]
fn numbers_of_every_length_parse() {
    for len in 1..=21usize {
        for first in *b"19" {
            let mut digits = vec![first; 1];
            digits.extend(std::iter::repeat_n(b'7', len - 1));
            let text = String::from_utf8(digits).expect("ascii");
            let want: Option<u64> = text.parse().ok();
            for end in [",", "}"] {
                let line = format!("{text}{end}");
                let mut cur = super::fast::Cursor {
                    bytes: line.as_bytes(),
                    at: 0,
                };
                assert_eq!(cur.unsigned(), want, "{line}");
                if want.is_some() {
                    assert_eq!(cur.at, len);
                }
            }
            let mut cur = super::fast::Cursor {
                bytes: text.as_bytes(),
                at: 0,
            };
            assert_eq!(cur.unsigned(), None, "no end: {text}");
        }
    }
    for bad in ["0123,", "-1,", ",", "12a,", "18446744073709551616,"] {
        let mut cur = super::fast::Cursor {
            bytes: bad.as_bytes(),
            at: 0,
        };
        assert_eq!(cur.unsigned(), None, "{bad}");
    }
    let mut cur = super::fast::Cursor {
        bytes: b"18446744073709551615}",
        at: 0,
    };
    assert_eq!(cur.unsigned(), Some(u64::MAX));
}

#[test]
fn digit_runs_read_as_str_parse_reads_them() {
    // Every length of run, at every distance from the end of the line, ended by every byte:
    // the unchecked first 19 digits and the checked rest give what `str::parse` gives.
    let reference = |bytes: &[u8]| -> Option<(u64, usize)> {
        let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let text = std::str::from_utf8(&bytes[..len]).expect("ascii");
        match len {
            0 => Some((0, 0)),
            _ => text.parse().ok().map(|n| (n, len)),
        }
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..=22usize {
        for tail in 0..=9usize {
            for end in 0..=255u8 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut bytes: Vec<u8> = (0..len)
                    .map(|i| b'0' + ((seed >> (i % 16 * 4)) % 10) as u8)
                    .collect();
                if tail > 0 {
                    bytes.push(end);
                    bytes.extend(std::iter::repeat_n(b'}', tail - 1));
                }
                assert_eq!(
                    super::fast::digits(&bytes),
                    reference(&bytes),
                    "{}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
}

#[test]
fn call_keys_are_told_apart() {
    for (i, key) in CALL_KEYS.iter().enumerate() {
        let quoted = [b"\"", *key, b"\":1,"].concat();
        assert_eq!(
            call_key(&quoted),
            Some((i, key.len() + 3)),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
    for other in [
        &b"\"apo\":"[..],
        b"\"prod\":",
        b"\"dur_nz\":",
        b"\"devic\":",
        b"\"pid\" :",
        b"\"pid\"",
        b"\"",
        b"",
        b"\"a\":",
        b"\"unreadable\":",
        b"\"api\\u0000\":",
        b"api\":",
    ] {
        assert_eq!(call_key(other), None, "{}", String::from_utf8_lossy(other));
    }
}

#[test]
fn the_fast_path_agrees_with_serde() {
    let mut all = body();
    all.insert(0, Record::Header(Box::new(header())));
    all.push(Record::Footer(Footer {
        counts: BTreeMap::from([("alloc".into(), 3)]),
        ..Footer::default()
    }));
    for rec in all {
        let line = serde_json::to_vec(&rec).expect("to_vec");
        assert!(
            leading_tag(&line).is_some(),
            "the writer's lines take the fast path"
        );
        let Ok(Parsed::Record(fast)) = parse_line(&line, &mut Names::default()) else {
            panic!("{rec:?} did not parse");
        };
        let slow: Record = serde_json::from_slice(&line).expect("serde");
        assert_eq!(fast, slow);
        assert_eq!(fast, rec);
        // `type` elsewhere than first takes serde's way, to the same record.
        let mut obj = serde_json::to_value(&rec).expect("to_value");
        let ty = obj.as_object_mut().and_then(|o| o.remove("type"));
        obj["type"] = ty.expect("a type");
        let moved = serde_json::to_vec(&obj).expect("to_vec");
        assert!(leading_tag(&moved).is_none());
        assert!(
            matches!(parse_line(&moved, &mut Names::default()), Ok(Parsed::Record(r)) if r == rec)
        );
    }
}

#[test]
fn fast_call_takes_what_the_writer_writes() {
    for rec in body() {
        let Some(call) = rec.call() else { continue };
        let line = serde_json::to_vec(&rec).expect("to_vec");
        let expected = call.unreadable.is_empty().then(|| call.clone());
        assert_eq!(
            fast_call(&line, &mut Names::default()),
            expected,
            "{}",
            String::from_utf8_lossy(&line)
        );
    }
    let edge = Call {
        ret: i32::MIN,
        device: Some(-1),
        ts_ns: u64::MAX,
        bytes: Some(0),
        ..Call::default()
    };
    let line = serde_json::to_vec(&Record::Alloc(edge.clone())).expect("to_vec");
    assert_eq!(fast_call(&line, &mut Names::default()), Some(edge));
}

#[test]
fn fast_call_reads_keys_out_of_the_writers_order() {
    // The keys every call has are read one after the other when they come in the writer's
    // order; any other order, or `dur_ns` absent (it defaults), is read key by key, to the
    // same call serde reads.
    let line = String::from_utf8(serde_json::to_vec(&alloc(3)).expect("to_vec")).expect("utf-8");
    let pid = line.find(",\"pid\":").expect("pid");
    let tid = line.find(",\"tid\":").expect("tid");
    let dur = line.find(",\"dur_ns\":").expect("dur_ns");
    let ret = line.find(",\"ret\":").expect("ret");
    let swapped = format!("{}{}{}", &line[..pid], &line[tid..ret], &line[pid..tid]) + &line[ret..];
    let without_dur = format!("{}{}", &line[..dur], &line[ret..]);
    for changed in [swapped, without_dur] {
        let want = match serde_json::from_str::<Record>(&changed).expect("serde") {
            Record::Alloc(call) => call,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fast_call(changed.as_bytes(), &mut Names::default()),
            Some(want),
            "{changed}"
        );
    }
}

#[test]
fn fast_call_leaves_the_rest_to_serde() {
    let line = String::from_utf8(serde_json::to_vec(&alloc(3)).expect("to_vec")).expect("utf-8");
    for (from, to) in [
        ("\"ret\":0", "\"ret\":-0"),
        ("\"ret\":0", "\"ret\": 0"),
        ("\"ret\":0", "\"ret\":0.0"),
        ("\"ret\":0", "\"ret\":00"),
        ("\"ret\":0", "\"ret\":0,\"ret\":0"),
        ("\"ret\":0", "\"ret\":0,\"later\":1"),
        ("\"ret\":0,", ""),
        ("\"pid\":4242", "\"pid\":4294967296"),
        ("\"pid\":4242", "\"pid\":-1"),
        ("\"stack\":1", "\"stack\":null"),
        ("cuMemAlloc_v2", "cuMem\\u0041lloc"),
        ("\"mem\":\"device\"", "\"mem\":\"vram\""),
    ] {
        assert!(line.contains(from), "{from}");
        let changed = line.replacen(from, to, 1);
        assert_eq!(
            fast_call(changed.as_bytes(), &mut Names::default()),
            None,
            "{changed}"
        );
    }
    assert_eq!(
        fast_call(format!("{line} \n").as_bytes(), &mut Names::default()),
        None
    );
    assert!(fast_call(format!("{line}\n").as_bytes(), &mut Names::default()).is_some());
}

#[test]
fn round_trip() {
    let recs = body();
    let (bytes, footer) = write_trace(&recs, true);
    let (read, s) = read_all(&bytes);
    let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
    assert_eq!(read, recs);
    assert!(s.complete, "{:?}", s.problems);
    assert_eq!(s.integrity, Integrity::Complete);
    assert_eq!(s.digest_ok, Some(true));
    assert_eq!(s.problems, []);
    assert_eq!(s.header, header());
    assert_eq!(s.footer, footer);
    assert_eq!(s.lines, recs.len() as u64 + 2);
    assert_eq!(s.bytes, bytes.len() as u64);
}

#[test]
fn line_numbers_count_from_the_header() {
    let (bytes, _) = write_trace(&[alloc(0), free(0)], true);
    let (read, _) = read_all(&bytes);
    let lines: Vec<u64> = read.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [2, 3]);
}

#[test]
fn open_reads_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl");
    let (bytes, _) = write_trace(&[alloc(0)], true);
    std::fs::write(&path, bytes).expect("write");
    let mut r = TraceReader::open(&path).expect("open");
    assert_eq!(r.by_ref().count(), 1);
    assert!(r.summary().complete);
    let missing = TraceReader::open(&dir.path().join("nope")).err();
    assert!(matches!(missing, Some(ReadError::Open { .. })));
}

/// `bytes` as gzip writes them.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(bytes).expect("compress");
    z.finish().expect("compress")
}

/// What [`TraceReader::open`] reads from a file of `bytes`: the records and the summary.
fn open_all(bytes: &[u8]) -> (Vec<(u64, Record)>, ReadSummary) {
    let dir = tempfile::tempdir().expect("tempdir");
    // No `.gz`: the content says it is gzip, not the name.
    let path = dir.path().join("t.jsonl");
    std::fs::write(&path, bytes).expect("write");
    let mut r = TraceReader::open(&path).expect("open");
    let records = std::iter::from_fn(|| r.next_record()).collect();
    (records, r.summary())
}

/// Allocations and frees enough for the compressed trace to span several deflate blocks.
fn long_body() -> Vec<Record> {
    let mut records = body();
    records.extend((0..4000).map(|i| if i % 2 == 0 { alloc(i) } else { free(i - 1) }));
    records
}

#[test]
fn a_gzip_trace_reads_as_the_plain_one() {
    for finish in [true, false] {
        let (plain, _) = write_trace(&long_body(), finish);
        let want = open_all(&plain);
        assert_eq!(open_all(&gzip(&plain)), want, "finish: {finish}");
        // Members compressed one after another (`cat a.gz b.gz`, pigz) are one trace.
        let half = plain.len() / 2;
        let mut members = gzip(&plain[..half]);
        members.extend(gzip(&plain[half..]));
        assert_eq!(open_all(&members), want, "two members, finish: {finish}");
    }
    let (plain, _) = write_trace(&long_body(), true);
    assert_eq!(open_all(&gzip(&plain)).1.integrity, Integrity::Complete);
}

#[test]
fn a_gzip_trace_cut_short_reads_to_where_it_ends() {
    let (plain, _) = write_trace(&long_body(), true);
    let (all, _) = open_all(&plain);
    let z = gzip(&plain);
    let (read, summary) = open_all(&z[..z.len() / 2]);
    assert_eq!(summary.integrity, Integrity::CutShort);
    assert_eq!(
        kinds(&summary.problems).last().map(|k| k.1),
        Some(ProblemKind::Io)
    );
    assert!(!read.is_empty() && read.len() < all.len() && read[..] == all[..read.len()]);
    // Cut in gzip's own trailer (CRC-32 and length, RFC 1952 2.3.1): every line is there and
    // the footer's digest vouches for them, but the damaged file is said.
    let (read, summary) = open_all(&z[..z.len() - 4]);
    assert_eq!(read, all);
    assert_eq!(summary.integrity, Integrity::Complete);
    assert_eq!(
        kinds(&summary.problems).last().map(|k| k.1),
        Some(ProblemKind::Io)
    );
    // Cut anywhere, even in the gzip header or the trace header: an error or a cut, no panic.
    for cut in (0..z.len()).step_by(z.len() / 16 + 1).chain(0..24) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.jsonl.gz");
        std::fs::write(&path, &z[..cut]).expect("write");
        if let Ok(mut r) = TraceReader::open(&path) {
            r.by_ref().for_each(drop);
            assert_ne!(r.summary().integrity, Integrity::Complete, "cut at {cut}");
        }
    }
}

#[test]
fn empty_file_is_refused() {
    assert!(matches!(TraceReader::new(&b""[..]), Err(ReadError::Empty)));
    assert_eq!(
        open_err(b""),
        "the file is empty: not a vramtrace trace",
        "the message names what the file is not"
    );
}

#[test]
fn a_first_line_that_is_not_a_header_is_refused() {
    for bad in [
        &b"hello world\n"[..],
        b"\n",
        b"[1,2]\n",
        b"{\"format\":\"vramtrace\"}\n",
        b"{\"type\":\"alloc\",\"api\":\"x\"}\n",
        b"\xff\xfe\n",
    ] {
        let msg = open_err(bad);
        assert!(msg.starts_with("not a vramtrace trace"), "{msg}");
    }
}

#[test]
fn a_header_cut_short_is_refused() {
    let line = header_line(|_| {});
    let cut = &line[..line.len() - 1];
    assert!(matches!(
        TraceReader::new(cut),
        Err(ReadError::TruncatedHeader)
    ));
}

#[test]
fn another_format_is_refused() {
    let line = header_line(|v| v["format"] = "perf".into());
    assert_eq!(
        open_err(&line),
        "not a vramtrace trace: its header says format \"perf\", not \"vramtrace\""
    );
}

#[test]
fn a_newer_major_version_is_refused() {
    // Also when the rest of the header has changed beyond recognition.
    let line = header_line(|v| {
        v["version"] = "2.0".into();
        v.as_object_mut().map(|o| o.remove("libraries"));
    });
    assert_eq!(
        open_err(&line),
        "trace format version 2.0 is newer than this vramtrace (reads 1.x); upgrade vramtrace"
    );
    let line = header_line(|v| v["version"] = "0.9".into());
    assert!(matches!(
        TraceReader::new(&line[..]),
        Err(ReadError::OlderMajor { .. })
    ));
}

#[test]
fn a_bad_version_is_refused() {
    for version in [
        serde_json::json!("1"),
        serde_json::json!("one.two"),
        serde_json::json!(1.0),
    ] {
        let line = header_line(|v| v["version"] = version.clone());
        assert!(
            matches!(
                TraceReader::new(&line[..]),
                Err(ReadError::BadVersion { .. })
            ),
            "{version}"
        );
    }
}

#[test]
fn a_malformed_header_is_refused() {
    let line = header_line(|v| v["start_unix_ns"] = "yesterday".into());
    let msg = open_err(&line);
    assert!(msg.starts_with("the trace header is malformed"), "{msg}");
}

#[test]
fn a_newer_minor_version_is_read_and_its_additions_skipped() {
    let mut bytes = header_line(|v| {
        v["version"] = format!("{FORMAT_MAJOR}.{}", FORMAT_MINOR + 1).into();
        v["gpus"] = serde_json::json!([{"name": "H100"}]);
    });
    let mut alloc_line = serde_json::to_value(alloc(0)).expect("to_value");
    alloc_line["numa_node"] = 1.into();
    bytes.extend(serde_json::to_vec(&alloc_line).expect("to_vec"));
    bytes.extend(b"\n{\"type\":\"kernel_launch\",\"ts_ns\":5}\n");
    bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
    bytes.push(b'\n');
    let (read, s) = read_all(&bytes);
    let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
    assert_eq!(read, [alloc(0), free(0)]);
    assert_eq!(s.problems, []);
    assert_eq!(
        s.skipped_types,
        BTreeMap::from([("kernel_launch".into(), 1)])
    );
    assert!(!s.complete, "no footer");
}

#[test]
fn an_unknown_type_in_a_known_version_is_a_problem() {
    let mut bytes = header_line(|_| {});
    bytes.extend(b"{\"type\":\"kernel_launch\",\"ts_ns\":5}\n");
    let (read, s) = read_all(&bytes);
    assert!(read.is_empty());
    assert_eq!(kinds(&s.problems), [(2, ProblemKind::UnknownType)]);
}

/// A trace of `recs` written with a header of version `version`, and its footer.
fn write_versioned(recs: &[Record], version: &str) -> (Vec<u8>, Footer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl");
    let mut w = TraceWriter::create(&path).expect("create");
    w.write(&Record::Header(Box::new(Header {
        version: version.into(),
        ..header()
    })))
    .expect("header");
    for rec in recs {
        w.write(rec).expect("write");
    }
    let footer = w.finish(6_000_000_000, 0, 0).expect("finish");
    (std::fs::read(&path).expect("read back"), footer)
}

#[test]
fn the_header_version_chooses_the_digest_and_both_verify() {
    let recs: Vec<Record> = (0..10).flat_map(|i| [alloc(i), free(i)]).collect();
    let (old, old_footer) = write_versioned(&recs, "1.8");
    let (new, new_footer) = write_versioned(&recs, &format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"));
    assert!(old_footer.sha256.is_some() && old_footer.blake3.is_none());
    assert!(new_footer.blake3.is_some() && new_footer.sha256.is_none());
    for bytes in [&old, &new] {
        let (read, s) = read_all(bytes);
        assert_eq!(read.len(), recs.len());
        assert_eq!(s.digest_ok, Some(true));
        assert_eq!(s.integrity, Integrity::Complete, "{:?}", s.problems);
    }
}

#[test]
fn a_footer_sealed_by_the_other_algorithm_is_not_complete() {
    let recs: Vec<Record> = (0..4).flat_map(|i| [alloc(i), free(i)]).collect();
    let (bytes, _) = write_versioned(&recs, "1.8");
    // The same lines, now said to be 1.9, with the right SHA-256 of them in the footer: a 1.9
    // trace is sealed by BLAKE3, so this footer does not vouch for its lines.
    let text = String::from_utf8(bytes).expect("utf-8");
    let relabelled = text.replacen("\"version\":\"1.8\"", "\"version\":\"1.9\"", 1);
    let (body, _) = relabelled.trim_end().rsplit_once('\n').expect("a footer");
    let body = format!("{body}\n");
    let mut footer: Footer =
        serde_json::from_str(relabelled.trim_end().rsplit_once('\n').unwrap().1).expect("footer");
    footer.sha256 = Some(crate::trace::digest::hex_digest(
        crate::trace::digest::Algorithm::Sha256,
        body.as_bytes(),
    ));
    let mut bytes = body.into_bytes();
    serde_json::to_writer(&mut bytes, &Record::Footer(footer)).expect("footer line");
    bytes.push(b'\n');
    let (read, s) = read_all(&bytes);
    assert_eq!(read.len(), recs.len(), "every line still reads");
    assert_eq!(s.digest_ok, Some(false));
    assert_eq!(s.integrity, Integrity::Altered);
    assert_eq!(
        kinds(&s.problems),
        [(recs.len() as u64 + 2, ProblemKind::DigestMismatch)]
    );
    assert!(
        s.problems[0].message.contains("no BLAKE3 digest"),
        "{}",
        s.problems[0].message
    );
}

#[test]
fn a_flipped_byte_fails_the_digest() {
    let recs: Vec<Record> = (0..10).flat_map(|i| [alloc(i), free(i)]).collect();
    let (mut bytes, _) = write_trace(&recs, true);
    // A digit of the 6th line's address: still a valid record, now a wrong one.
    let line_start = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(4)
        .map(|(i, _)| i + 1)
        .expect("6 lines");
    let at = line_start
        + bytes[line_start..]
            .windows(7)
            .position(|w| w == b"\"addr\":")
            .expect("an addr")
        + 8;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    let (read, s) = read_all(&bytes);
    assert_eq!(read.len(), recs.len(), "every line still reads");
    assert_ne!(read[4].1, recs[4]);
    assert_eq!(s.digest_ok, Some(false));
    assert!(!s.complete);
    assert_eq!(s.integrity, Integrity::Altered, "altered, not cut short");
    assert_eq!(
        kinds(&s.problems),
        [(recs.len() as u64 + 2, ProblemKind::DigestMismatch)]
    );
}

#[test]
fn a_trace_without_footer_reads_to_its_last_line() {
    let recs: Vec<Record> = (0..5).flat_map(|i| [alloc(i), free(i)]).collect();
    let (bytes, footer) = write_trace(&recs, false);
    assert_eq!(footer, None);
    let (read, s) = read_all(&bytes);
    let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
    assert_eq!(read, recs);
    assert!(!s.complete);
    assert_eq!(s.integrity, Integrity::CutShort);
    assert_eq!(s.footer, None);
    assert_eq!(s.digest_ok, None);
    assert_eq!(s.problems, []);
}

#[test]
fn a_cut_last_line_is_truncated_even_if_it_parses() {
    let (mut bytes, _) = write_trace(&[alloc(0), free(0)], false);
    assert_eq!(bytes.pop(), Some(b'\n'));
    let (read, s) = read_all(&bytes);
    let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
    assert_eq!(read, [alloc(0)]);
    assert_eq!(kinds(&s.problems), [(3, ProblemKind::Truncated)]);
    assert_eq!(s.integrity, Integrity::CutShort);
    assert_eq!(s.lines, 3);
    assert_eq!(s.bytes, bytes.len() as u64);
}

#[test]
fn a_garbage_line_is_reported_and_skipped() {
    let (bytes, _) = write_trace(&[alloc(0), free(0), alloc(1), free(1)], true);
    let mut lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    lines.insert(3, b"\x00\x01 not json at all\n");
    lines.insert(4, b"{\"type\":\"alloc\",\"api\":7}\n");
    lines.insert(5, b"{\"no\":\"type\"}\n");
    let bytes = lines.concat();
    let (read, s) = read_all(&bytes);
    let read: Vec<(u64, Record)> = read;
    assert_eq!(
        read,
        [(2, alloc(0)), (3, free(0)), (7, alloc(1)), (8, free(1))]
    );
    assert_eq!(
        kinds(&s.problems),
        [
            (4, ProblemKind::NotJson),
            (5, ProblemKind::BadRecord),
            (6, ProblemKind::BadRecord),
            (9, ProblemKind::DigestMismatch),
        ]
    );
    assert!(
        s.problems[1].message.contains("`alloc`"),
        "{}",
        s.problems[1]
    );
    assert!(s.problems[0].to_string().starts_with("line 4: not JSON"));
    assert!(!s.complete);
}

#[test]
fn counts_that_disagree_are_a_problem() {
    let (bytes, _) = write_trace(&[alloc(0), free(0)], true);
    let text = String::from_utf8(bytes).expect("utf-8");
    let text = text.replace("\"alloc\":1", "\"alloc\":2");
    let (_, s) = read_all(text.as_bytes());
    assert_eq!(s.digest_ok, Some(true), "the footer is not hashed");
    assert_eq!(kinds(&s.problems), [(4, ProblemKind::CountMismatch)]);
    assert!(
        s.problems[0]
            .message
            .contains("alloc: footer says 2, read 1")
    );
    assert!(!s.complete);
    assert_eq!(s.integrity, Integrity::Altered);
}

#[test]
fn lines_after_the_footer_are_a_problem() {
    let (mut bytes, _) = write_trace(&[alloc(0)], true);
    bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
    bytes.extend(b"\npartial");
    let (read, s) = read_all(&bytes);
    assert_eq!(read.len(), 1);
    assert_eq!(s.digest_ok, Some(true));
    assert_eq!(
        kinds(&s.problems),
        [(4, ProblemKind::AfterFooter), (5, ProblemKind::AfterFooter)]
    );
    assert!(!s.complete);
    assert_eq!(s.integrity, Integrity::Appended, "appended, not cut short");
}

#[test]
fn a_changed_footer_with_lines_after_it_is_altered() {
    let (mut bytes, _) = write_trace(&[alloc(0)], true);
    let text = String::from_utf8(bytes).expect("utf-8");
    let text = text.replace("\"alloc\":1", "\"alloc\":3");
    bytes = text.into_bytes();
    bytes.extend(b"{\"type\":\"tail\"}\n");
    let (_, s) = read_all(&bytes);
    assert_eq!(s.integrity, Integrity::Altered, "the worse verdict wins");
}

#[test]
fn a_second_header_is_a_problem() {
    let (bytes, _) = write_trace(&[alloc(0)], false);
    let mut bytes = [bytes, header_line(|_| {})].concat();
    bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
    bytes.push(b'\n');
    let (read, s) = read_all(&bytes);
    assert_eq!(read, [(2, alloc(0)), (4, free(0))]);
    assert_eq!(kinds(&s.problems), [(3, ProblemKind::UnexpectedHeader)]);
}

#[test]
fn an_overlong_line_is_skipped() {
    let mut bytes = header_line(|_| {});
    bytes.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
    bytes.push(b'\n');
    bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
    bytes.push(b'\n');
    let (read, s) = read_all(&bytes);
    assert_eq!(read, [(3, free(0))]);
    assert_eq!(kinds(&s.problems), [(2, ProblemKind::TooLong)]);
    assert_eq!(s.bytes, bytes.len() as u64);
}

#[test]
fn an_overlong_line_reads_the_same_whole_or_through_a_small_buffer() {
    let (mut bytes, _) = write_trace(&[alloc(0)], true);
    bytes.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
    bytes.push(b'\n');
    let mut whole = TraceReader::new(bytes.as_slice()).expect("header");
    let mut small =
        TraceReader::new(BufReader::with_capacity(4096, bytes.as_slice())).expect("header");
    assert_eq!(whole.by_ref().count(), 1);
    assert_eq!(small.by_ref().count(), 1);
    let s = whole.summary();
    assert_eq!(s, small.summary());
    // After the footer: too long, and the trace was appended to.
    assert_eq!(kinds(&s.problems), [(4, ProblemKind::TooLong)]);
    assert!(!s.complete);
}

#[test]
fn a_read_error_ends_the_trace_with_a_problem() {
    struct FailAfter(Cursor<Vec<u8>>);
    impl Read for FailAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::other("disk on fire")),
                n => Ok(n),
            }
        }
    }
    let (bytes, _) = write_trace(&[alloc(0)], false);
    let r = BufReader::new(FailAfter(Cursor::new(bytes)));
    let mut r = TraceReader::new(r).expect("header");
    assert_eq!(r.by_ref().count(), 1);
    assert_eq!(r.next(), None, "fused");
    let s = r.summary();
    assert_eq!(kinds(&s.problems), [(3, ProblemKind::Io)]);
    assert!(s.problems[0].message.contains("disk on fire"));
}

// --- the documentation ---

const SCHEMA: &str = include_str!("../../../../docs/trace-format.schema.json");
const FORMAT_DOC: &str = include_str!("../../../../docs/trace-format.md");

/// The schema's definitions of the line types, as (types, definition).
fn schema_defs(schema: &serde_json::Value) -> Vec<(Vec<String>, &serde_json::Value)> {
    let refs = schema["oneOf"].as_array().expect("oneOf");
    refs.iter()
        .map(|r| {
            let name = r["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .expect("a local $ref");
            let def = &schema["$defs"][name];
            let ty = &def["properties"]["type"];
            let types = match (ty["const"].as_str(), ty["enum"].as_array()) {
                (Some(t), _) => vec![t.to_owned()],
                (None, Some(ts)) => ts
                    .iter()
                    .map(|t| t.as_str().expect("a string").to_owned())
                    .collect(),
                _ => panic!("$defs/{name} has no type const or enum"),
            };
            (types, def)
        })
        .collect()
}

#[test]
fn the_schema_names_every_record_type() {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("valid JSON");
    let mut types: Vec<String> = schema_defs(&schema)
        .into_iter()
        .flat_map(|(types, _)| types)
        .collect();
    types.sort();
    let mut expected: Vec<String> = RECORD_TYPES.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(types, expected);
}

#[test]
fn the_schema_declares_every_field_written() {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("valid JSON");
    let defs = schema_defs(&schema);
    let mut all = body();
    all.insert(0, Record::Header(Box::new(header())));
    all.push(Record::Footer(Footer {
        violations: 1,
        ..Footer::default()
    }));
    for rec in all {
        let line = serde_json::to_value(&rec).expect("to_value");
        let kind = rec.kind();
        let (_, def) = defs
            .iter()
            .find(|(types, _)| types.iter().any(|t| t == kind))
            .expect("a definition");
        let props = def["properties"].as_object().expect("properties");
        let obj = line.as_object().expect("an object");
        for key in obj.keys() {
            assert!(props.contains_key(key), "{kind}.{key} is not in the schema");
        }
        for req in def["required"].as_array().expect("required") {
            let req = req.as_str().expect("a string");
            assert!(obj.contains_key(req), "{kind} lacks required {req}");
        }
        // A stack's frames against the frame's own definition.
        for frame in obj
            .get("frames")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
        {
            let props = schema["$defs"]["frame"]["properties"]
                .as_object()
                .expect("the frame's properties");
            for key in frame.as_object().expect("a frame object").keys() {
                assert!(props.contains_key(key), "frame.{key} is not in the schema");
            }
        }
    }
}

#[test]
fn the_documented_example_is_a_complete_trace() {
    let example = FORMAT_DOC
        .split("```jsonl\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```jsonl block");
    let (read, s) = read_all(example.as_bytes());
    assert!(s.complete, "{:?}", s.problems);
    assert_eq!(s.problems, []);
    assert_eq!(read.len() + 2, example.lines().count());
}

// --- property tests ---

fn text() -> impl Strategy<Value = String> {
    // Quotes, backslashes, control and non-ASCII characters exercise the escaping.
    "[a-zA-Z0-9_ ./\"\\\\\n\té漢]{0,12}"
}

fn mem() -> impl Strategy<Value = Mem> {
    prop::sample::select(vec![
        Mem::Device,
        Mem::DeviceAsync,
        Mem::Array,
        Mem::VmmDevice,
        Mem::VmmHost,
        Mem::Managed,
        Mem::HostPinned,
        Mem::HostRegistered,
        Mem::Graph,
    ])
}

fn call() -> impl Strategy<Value = Call> {
    use prop::option::of;
    (
        (
            prop::sample::select(vec!["cuMemAlloc_v2", "cuMemFree_v2", "cuMemMap", "x\"y"]),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<i32>(),
        ),
        (
            of(any::<u64>()),
            of(any::<u64>()),
            of(mem()),
            of(any::<u64>()),
            of(any::<i32>()),
            of(any::<u64>()),
            of(any::<u64>()),
        ),
        (
            of(any::<u64>()),
            of(any::<u64>()),
            of(any::<u64>()),
            of(any::<u32>()),
            prop::collection::vec(text(), 0..3),
        ),
    )
        .prop_map(
            |(
                (api, proc, pid, tid, ts_ns, dur_ns, ret),
                (bytes, addr, mem, handle, device, pool, stream),
                (offset, flags, pitch, stack, unreadable),
            )| Call {
                api: api.into(),
                proc,
                pid,
                tid,
                ts_ns,
                dur_ns,
                ret,
                bytes,
                addr,
                mem,
                handle,
                device,
                pool,
                stream,
                offset,
                flags,
                pitch,
                stack,
                unreadable,
                signalled: None,
                // Drawn from the fields above rather than by strategies of their own: a
                // larger strategy overflows the test thread's stack in debug builds.
                src_mem: flags.and_then(|f| {
                    use crate::trace::CopySrc::*;
                    [None, Some(Host), Some(Device), Some(Array), Some(Unified)][f as usize % 5]
                }),
                src: flags.and(offset),
                attr: flags.map(|f| f as u32 % 9),
                value: flags.and(pitch),
                green: pool.and(handle),
                share: stream.map(|s| format!("{s:0128x}")),
                handle_type: flags.map(|f| f as u32 % 9),
                os_handle: stack.map(u64::from),
                graph: stream.and(handle),
                copies: addr.and(pitch).map(|p| {
                    Box::new([crate::trace::BatchCopy {
                        addr: Some(p),
                        src_mem: crate::trace::CopySrc::Host,
                        src: offset,
                        bytes: p / 2,
                    }]) as Box<[_]>
                }),
                count: pitch.and(bytes),
                bound: handle.and(offset).map(|o| {
                    Box::new(crate::trace::Bound {
                        handle: o ^ 0x55,
                        offset: o,
                    })
                }),
                file: pool.and(stream),
                region: pitch.map(|p| {
                    Box::new(crate::trace::ArrayRegion {
                        miptail: p % 2 == 1,
                        level: p as u32 % 4,
                        layer: 0,
                        offset: [p, 0, 0],
                        extent: [p / 2, 1, 1],
                    })
                }),
            },
        )
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        3 => call().prop_map(Record::Alloc),
        3 => call().prop_map(Record::Free),
        1 => call().prop_map(Record::Failed),
        1 => call().prop_map(Record::VmmMap),
        1 => call().prop_map(Record::PoolTrim),
        1 => call().prop_map(Record::Copy),
        1 => (any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(proc, pid, ts_ns)| Record::Exit(Exit { proc, pid, ts_ns })),
        1 => (any::<u32>(), any::<u32>(), text(), prop::option::of(text()))
            .prop_map(|(id, pid, comm, exe)| Record::Process(Process {
                id,
                pid,
                comm,
                exe,
                ..Process::default()
            })),
        1 => (
            any::<u32>(),
            prop::collection::vec((any::<u64>(), prop::option::of(text())), 0..4),
            prop::option::of(text()),
        )
            .prop_map(|(id, frames, truncated)| Record::Stack(Stack {
                id,
                frames: frames
                    .into_iter()
                    .map(|(addr, sym)| Frame {
                        addr,
                        sym,
                        ..Frame::default()
                    })
                    .collect(),
                truncated,
            })),
        1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(ts_ns, a, b)| {
            Record::Lost(Lost {
                ts_ns,
                ringbuf_full: a,
                stack_failed: b,
                ..Lost::default()
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fast_call_never_disagrees_with_serde(
        rec in record(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(b"0123456789-.,:}{\"\\ enulx".to_vec())),
            0..3,
        ),
    ) {
        let mut line = serde_json::to_vec(&rec).expect("to_vec");
        for (at, byte) in edits {
            let at = at.index(line.len());
            line[at] = byte;
        }
        if let Some(fast) = fast_call(&line, &mut Names::default()) {
            let slow = serde_json::from_slice::<Call>(&line);
            prop_assert!(slow.is_ok(), "{}: {:?}", String::from_utf8_lossy(&line), slow);
            prop_assert_eq!(Ok(fast), slow.map_err(|e| e.to_string()));
        }
    }

    #[test]
    fn reading_in_the_writers_order_never_disagrees_with_serde(
        rec in record(),
        plain in any::<bool>(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(b"0123456789-.,:}{\"\\ enulx".to_vec())),
            0..3,
        ),
    ) {
        let mut rec = rec;
        if let Some(c) = rec.call_mut().filter(|_| plain) {
            // Only the fields that are read in order: the line most calls have.
            *c = Call {
                api: c.api.clone(),
                proc: c.proc,
                pid: c.pid,
                tid: c.tid,
                ts_ns: c.ts_ns,
                dur_ns: c.dur_ns,
                ret: c.ret,
                bytes: c.bytes,
                addr: c.addr,
                mem: c.mem,
                handle: c.handle,
                device: c.device,
                pool: c.pool,
                stream: c.stream,
                offset: c.offset,
                flags: c.flags,
                pitch: c.pitch,
                stack: c.stack,
                src_mem: c.src_mem,
                src: c.src,
                ..Call::default()
            };
        }
        let mut line = serde_json::to_vec(&rec).expect("to_vec");
        line.push(b'\n');
        for (at, byte) in edits {
            let at = at.index(line.len());
            line[at] = byte;
        }
        let Some((api, rest)) = leading_tag(&line).and_then(|tag| leading_api(&line, tag)) else {
            return Ok(());
        };
        let mut names = Names::default();
        let Some(api) = names.get(api) else {
            return Ok(());
        };
        let mut fast = Call { api, ..Call::default() };
        if let Some(len) = super::fast::fill_in_order(rest, &mut fast) {
            prop_assert_eq!(len, rest.len(), "the rest of the line, its newline included");
            let slow = serde_json::from_slice::<Call>(&line);
            prop_assert!(slow.is_ok(), "{}: {:?}", String::from_utf8_lossy(&line), slow);
            prop_assert_eq!(Ok(fast), slow.map_err(|e| e.to_string()));
        }
    }

    #[test]
    fn any_records_read_back_the_same(recs in prop::collection::vec(record(), 0..40)) {
        let (bytes, _) = write_trace(&recs, true);
        let (read, s) = read_all(&bytes);
        let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
        prop_assert_eq!(read, recs);
        prop_assert!(s.complete, "{:?}", s.problems);
    }

    #[test]
    fn the_buffer_size_changes_nothing(
        recs in prop::collection::vec(record(), 0..30),
        cap in 1usize..400,
        junk in prop::option::of((any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..40))),
        appended in prop::option::of(prop::collection::vec(any::<u8>(), 1..40)),
    ) {
        // Lines straddle the reader's buffer at every place: what is read, what is wrong
        // and the digest must be what reading the whole input at once gives.
        let bytes = spoiled_trace(&recs, junk, appended);
        let Ok(mut whole) = TraceReader::new(bytes.as_slice()) else {
            prop_assert!(TraceReader::new(BufReader::with_capacity(cap, bytes.as_slice())).is_err());
            return Ok(());
        };
        let mut small = TraceReader::new(BufReader::with_capacity(cap, bytes.as_slice()))
            .expect("the same header");
        let a: Vec<_> = std::iter::from_fn(|| whole.next_record()).collect();
        let b: Vec<_> = std::iter::from_fn(|| small.next_record()).collect();
        prop_assert_eq!(a, b);
        prop_assert_eq!(format!("{:?}", whole.summary()), format!("{:?}", small.summary()));
    }

    #[test]
    fn reading_in_batches_reads_what_reading_one_by_one_does(
        recs in prop::collection::vec(record(), 0..30),
        cap in 1usize..400,
        batch in 1usize..40,
        junk in prop::option::of((any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..40))),
        appended in prop::option::of(prop::collection::vec(any::<u8>(), 1..40)),
    ) {
        // `read_into` parses call lines where they lie in the buffer, up to their newline:
        // cut by the buffer's end, altered or followed by junk, they must read as
        // `next_record` reads them, with the same problems, counts and digest.
        let bytes = spoiled_trace(&recs, junk, appended);
        let Ok(mut one) = TraceReader::new(bytes.as_slice()) else {
            return Ok(());
        };
        let mut batched = TraceReader::new(BufReader::with_capacity(cap, bytes.as_slice()))
            .expect("the same header");
        let a: Vec<Record> = std::iter::from_fn(|| one.next_record()).map(|(_, r)| r).collect();
        let mut b = Vec::new();
        loop {
            let before = b.len();
            batched.read_into(&mut b, before + batch);
            if b.len() == before {
                break;
            }
        }
        prop_assert_eq!(a, b);
        prop_assert_eq!(format!("{:?}", one.summary()), format!("{:?}", batched.summary()));
        prop_assert_eq!(one.read_position(), batched.read_position());
    }

    #[test]
    fn a_corrupted_line_costs_only_that_line(
        recs in prop::collection::vec(record(), 1..20),
        which in any::<prop::sample::Index>(),
        junk in prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 1..64),
    ) {
        prop_assume!(junk.iter().any(|b| !b.is_ascii_whitespace()));
        let (bytes, _) = write_trace(&recs, true);
        let which = which.index(recs.len());
        // Line 1 is the header; record k is on line k + 2.
        let bad_line = which as u64 + 2;
        let mut lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
        let replaced = [junk.as_slice(), b"\n"].concat();
        lines[which + 1] = &replaced;
        let corrupted = lines.concat();
        let (read, s) = read_all(&corrupted);
        let expected: Vec<(u64, Record)> = recs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (i as u64 + 2, r))
            .filter(|(line, _)| *line != bad_line)
            .collect();
        prop_assert_eq!(read, expected);
        // Besides the bad line, only the footer may disagree (its counts and digest).
        let footer = recs.len() as u64 + 2;
        let lines_of: Vec<u64> = kinds(&s.problems)
            .into_iter()
            .map(|(l, _)| l)
            .filter(|l| *l != footer)
            .collect();
        prop_assert_eq!(lines_of, vec![bad_line]);
        prop_assert!(!s.complete || s.digest_ok == Some(false));
    }

    #[test]
    fn a_trace_cut_anywhere_reads_to_its_last_complete_line(
        recs in prop::collection::vec(record(), 0..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let (bytes, _) = write_trace(&recs, true);
        let cut = cut.index(bytes.len() + 1);
        let cut_bytes = &bytes[..cut];
        // Ends of lines, newline included: the header, each record, the footer.
        let ends: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        prop_assert_eq!(ends.len(), recs.len() + 2);
        if cut < ends[0] {
            let opened = TraceReader::new(cut_bytes);
            prop_assert!(matches!(
                opened,
                Err(ReadError::Empty | ReadError::TruncatedHeader)
            ));
            return Ok(());
        }
        let (read, s) = read_all(cut_bytes);
        let whole = ends.iter().filter(|e| **e <= cut).count();
        let expected: Vec<(u64, Record)> = recs
            .iter()
            .take(whole - 1)
            .cloned()
            .enumerate()
            .map(|(i, r)| (i as u64 + 2, r))
            .collect();
        prop_assert_eq!(read, expected);
        prop_assert_eq!(s.complete, cut == bytes.len());
        prop_assert_eq!(s.bytes, cut as u64);
        if ends.contains(&cut) {
            prop_assert_eq!(s.problems, vec![]);
        } else {
            prop_assert_eq!(kinds(&s.problems), vec![(whole as u64 + 1, ProblemKind::Truncated)]);
        }
    }
}

#[test]
fn names_are_told_apart_by_every_byte() {
    // Lengths around the key's two words, names that differ only in the middle, the ends, or
    // past sixteen bytes, where the key alone does not decide.
    let all = [
        "",
        "a",
        "cuMemAlloc",
        "cuMemAlloc_v2",
        "cuMemAlloc_v3",
        "cuMemAllocAsync",
        "cuMemXllocAsync",
        "cuMemAllocFromPoolAsync",
        "cuMemAllocFromPoolAsynd",
        "cuMemAllocFromQoolAsync",
        "cuMemAllocPitch_v2",
        "cuMemAllocHost_v2",
        "cuMemAllocManaged",
        "abcdefgh",
        "abcdefghi",
        "abcdefghijklmnop",
        "abcdefghijklmnoq",
        "xbcdefghijklmnop",
    ];
    let mut names = Names::default();
    for _ in 0..2 {
        for name in all {
            assert_eq!(
                names.get(name.as_bytes()).map(|n| n.to_string()),
                Some(name.into())
            );
        }
    }
    assert_eq!(names.0.len(), all.len());
    assert!(names.get(b"\xff\xfe").is_none(), "not UTF-8: no name");
    // A string value that starts with a known name and its closing quote is that name; one
    // of more than 15 bytes is read as a string instead.
    for name in all {
        let value = format!("\"{name}\",\"proc\":1,\"pid\":2,\"tid\":3}}\n");
        let found = names.known_at(value.as_bytes());
        if name.len() <= 15 {
            let (i, len) = found.expect("a known name");
            assert_eq!((names.0[i].1.as_str(), len), (name, name.len() + 2));
            assert_eq!(names.index(name.as_bytes()), Some(i));
        } else {
            assert!(found.is_none(), "{name}");
        }
    }
    for unknown in ["cuMemAlloc_v", "cuMemAlloc_v2x", "cuMemAllocAsynd", "b"] {
        let value = format!("\"{unknown}\",\"proc\":1,\"pid\":2,\"tid\":3}}\n");
        assert!(names.known_at(value.as_bytes()).is_none(), "{unknown}");
    }
}
