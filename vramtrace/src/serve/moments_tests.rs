//! The state at a moment from the kept copies is the state a replay of the whole file with
//! that cutoff gives: the same snapshot, allocations and flame graph.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use super::{Keep, Moments};
use crate::ledger::{READ_AHEAD_BATCH, Replay};
use crate::serve::{Served, api, replayed, snapshot_json};
use crate::testing::sequence;
use crate::trace::Record;
use crate::trace::read::tests::write_trace;

/// A long random sequence, with neighbours swapped here and there and a few records moved
/// far, so that the file is not in time order, as a recording that drains several CPUs writes
/// it.
fn records() -> Vec<Record> {
    let mut runner = TestRunner::deterministic();
    let mut recs = sequence(9000)
        .new_tree(&mut runner)
        .expect("a sequence")
        .current();
    while recs.len() < 6 * READ_AHEAD_BATCH {
        let more = sequence(9000)
            .new_tree(&mut runner)
            .expect("a sequence")
            .current();
        // Later in time than what is there: the clocks of a new sequence start over.
        let shift = recs.iter().filter_map(Record::ts_ns).max().unwrap_or(0);
        recs.extend(more.into_iter().map(|r| later(r, shift)));
    }
    for i in (5..recs.len() - 1).step_by(37) {
        recs.swap(i, i + 1);
    }
    // After the header's start (`write_trace`'s), where a moment can name them.
    recs = recs.into_iter().map(|r| later(r, 5_000_000_000)).collect();
    // A few written well after their time, across batches.
    for i in (100..recs.len() - 2000).step_by(900) {
        let r = recs.remove(i);
        recs.insert(i + 1500, r);
    }
    recs
}

/// `rec` moved `by` nanoseconds later, through its JSON form.
fn later(rec: Record, by: u64) -> Record {
    let mut v = serde_json::to_value(&rec).expect("a record serializes");
    if let Some(ts) = v.get_mut("ts_ns").and_then(|t| t.as_u64()) {
        v["ts_ns"] = json!(ts + by);
    }
    serde_json::from_value(v).expect("a record deserializes")
}

/// What the page reads at a moment.
fn answers(s: &Served) -> (Value, Value, Value) {
    let q =
        serde_json::from_value(json!({ "limit": api::MAX_ROWS, "sort": "age" })).expect("a query");
    (
        snapshot_json(s),
        api::allocations(s, &q).expect("allocations"),
        api::flame(s),
    )
}

fn whole_replay_to(path: &Path, secs: f64) -> Served {
    let replay = Replay::open(path).expect("the trace");
    let cutoff = crate::analyze::Moment::AfterStart(secs).ts_ns(replay.header().start_monotonic_ns);
    replayed(replay.until(Some(cutoff)), None)
}

fn startup(path: &Path, keep: Keep) -> Served {
    replayed(Replay::open(path).expect("the trace"), Some((path, keep)))
}

fn check_every_moment(path: &Path, keep: Keep) -> usize {
    let served = startup(path, keep);
    let moments = served.moments.as_ref().expect("copies kept");
    let (first, last) = served.ledger.time_span().expect("timed records");
    let mut moments_checked = 0;
    // Before the first record, across the trace, and after its end.
    for i in 0..=40u64 {
        let ts = (first + (last - first) * i / 38).saturating_sub(2000);
        let secs = ts.saturating_sub(moments.start_ns) as f64 / 1e9;
        let got = moments.at(secs).expect("the state at a moment");
        let want = whole_replay_to(path, secs);
        assert_eq!(got.records, want.records, "records at {secs}");
        let (a, b) = (answers(&got), answers(&want));
        assert!(a == b, "the answers at {secs} s differ: {a:#?}\n{b:#?}");
        moments_checked += 1;
    }
    moments_checked + moments.len()
}

/// [`records`] written to a trace file in `dir`: its bytes and path.
fn trace_file(dir: &Path) -> (Vec<u8>, PathBuf) {
    let (bytes, _) = write_trace(&records(), true);
    let path = dir.join("t.jsonl");
    std::fs::write(&path, &bytes).expect("write");
    (bytes, path)
}

#[test]
fn the_state_at_a_moment_is_the_whole_replays_to_that_moment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bytes, plain) = trace_file(dir.path());
    let gz = dir.path().join("t.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::fast(),
    );
    enc.write_all(&bytes).expect("compress");
    enc.finish().expect("compress");

    // A copy at every batch's end.
    let keep = Keep {
        every: 1,
        ..Keep::default()
    };
    let kept = startup(&plain, keep)
        .moments
        .as_ref()
        .map_or(0, |m| m.len());
    assert!(kept > 5, "{kept} copies");
    check_every_moment(&plain, keep);
    check_every_moment(&gz, keep);
    // Without copies past the first: the answer comes from the start of the file.
    check_every_moment(
        &plain,
        Keep {
            every: u64::MAX,
            ..Keep::default()
        },
    );
}

#[test]
fn copies_stay_within_the_budget_and_the_interval_doubles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, path) = trace_file(dir.path());
    let keep = Keep {
        every: 1,
        budget: u64::MAX,
        max: 3,
    };
    let served = startup(&path, keep);
    let m: &Moments = served.moments.as_ref().expect("copies kept");
    assert!(m.len() <= 3, "{} copies", m.len());
    assert!(m.every() >= 2, "the interval doubled: {}", m.every());
    check_every_moment(&path, keep);
}
