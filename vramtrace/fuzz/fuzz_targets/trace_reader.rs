//! Arbitrary bytes as a trace file: the reader and the replay must never panic, whatever the
//! header, the lines, the footer or where the input ends. The first byte picks a buffer size:
//! read through a buffer that small, lines straddle it everywhere, and what is read, what is
//! wrong and the digest must be what reading the whole input at once gives.
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use vramtrace::analyze::Replay;
use vramtrace::trace::TraceReader;

fuzz_target!(|data: &[u8]| {
    let Some((&cap, data)) = data.split_first() else {
        return;
    };
    let whole = TraceReader::new(data);
    let small = TraceReader::new(BufReader::with_capacity(usize::from(cap) + 1, data));
    let (mut whole, mut small) = match (whole, small) {
        (Ok(w), Ok(s)) => (w, s),
        (Err(_), Err(_)) => return,
        (w, s) => panic!(
            "opening depends on the buffer: whole {:?}, small {:?}",
            w.err(),
            s.err()
        ),
    };
    let mut replay = Replay::default();
    while let Some((line, rec)) = whole.next_record() {
        assert_eq!(small.next_record(), Some((line, rec.clone())));
        replay.apply(rec);
    }
    assert_eq!(small.next_record(), None);
    assert_eq!(whole.summary(), small.summary());
    let _ = replay.report(None);
});
