//! How fast traces are written and read. A measurement, not a check: run it with
//! `cargo test --release -p vramtrace --test trace_speed -- --ignored --nocapture`.

use std::io::BufRead;
use std::time::Instant;

use vramtrace::trace::{
    Call, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Header, Mem, Record, TraceReader, TraceWriter,
};

const PAIRS: u64 = 1_000_000;

fn call(api: &str, i: u64) -> Call {
    Call {
        api: api.into(),
        proc: 1,
        pid: 4242,
        tid: 4243 + (i % 8) as u32,
        ts_ns: 12_345_678_901_234 + i * 731,
        dur_ns: 1800 + i % 500,
        ret: 0,
        addr: Some(0x7f3a_0000_0000 + (i % 4096) * (2 << 20)),
        device: Some(0),
        stack: Some((i % 300) as u32),
        ..Call::default()
    }
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn read_and_write_speed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("speed.jsonl");
    let header = Header {
        format: FORMAT_NAME.into(),
        version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        ..Header::default()
    };

    let started = Instant::now();
    let mut w = TraceWriter::create(&path).expect("create");
    w.write(&Record::Header(Box::new(header))).expect("header");
    for i in 0..PAIRS {
        let alloc = Call {
            bytes: Some(1 << (10 + i % 14)),
            mem: Some(Mem::DeviceAsync),
            stream: Some(0x5555_0000),
            ..call("cuMemAllocAsync", i)
        };
        w.write(&Record::Alloc(alloc)).expect("alloc");
        w.write(&Record::Free(call("cuMemFreeAsync", i)))
            .expect("free");
    }
    w.finish(0, 0, 0).expect("finish");
    let wrote = started.elapsed();
    let bytes = std::fs::metadata(&path).expect("metadata").len();
    let lines = 2 * PAIRS;

    // Best of three: the figure is the reader's, not the neighbours' on a shared machine.
    let mut read = std::time::Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let mut r = TraceReader::open(&path).expect("open");
        let n = r.by_ref().count() as u64;
        read = read.min(started.elapsed());
        let s = r.summary();
        assert!(s.complete, "{:?}", s.problems);
        assert_eq!(n, lines);
    }

    // For comparison: serde's own way with an internally tagged enum, no hashing.
    let started = Instant::now();
    let mut input = std::io::BufReader::new(std::fs::File::open(&path).expect("open"));
    let mut buf = Vec::new();
    let mut parsed = 0u64;
    while input.read_until(b'\n', &mut buf).expect("read") > 0 {
        if serde_json::from_slice::<Record>(&buf).is_ok() {
            parsed += 1;
        }
        buf.clear();
    }
    let serde_way = started.elapsed();
    assert_eq!(parsed, lines + 2);

    let per_s = |d: std::time::Duration| lines as f64 / d.as_secs_f64() / 1e6;
    println!(
        "{lines} alloc/free lines, {:.0} bytes/line on average",
        bytes as f64 / lines as f64
    );
    println!("write:                   {:>6.2} M lines/s", per_s(wrote));
    println!("read (best of 3):        {:>6.2} M lines/s", per_s(read));
    println!(
        "serde Record, no hash:   {:>6.2} M lines/s",
        per_s(serde_way)
    );
}
