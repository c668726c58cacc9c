//! Arbitrary bytes as a trace file: the reader and the replay must never panic, whatever the
//! header, the lines, the footer or where the input ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vramtrace::analyze::Replay;
use vramtrace::trace::TraceReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = TraceReader::new(data) else {
        return;
    };
    let mut replay = Replay::default();
    for rec in reader.by_ref() {
        replay.apply(rec);
    }
    let summary = reader.summary();
    let _ = replay.report(None);
    let _ = summary.complete;
});
