//! Leak suspects: allocating stacks whose live bytes keep growing and are not given back.
//!
//! Everything here is read from the Ledger's change stream: an allocation started, an
//! allocation ended (by a free, its context's destruction, a replacement at its address:
//! every end but the process's exit, which is where a leak shows), the end of the load
//! phase. The steady state of a process starts when the Ledger ends its load phase and ends
//! at its last allocation or free before its exit or the end of the trace. It is cut into
//! thirds by allocation and free events. A stack made at least [`MIN_STEADY_ALLOCS`]
//! allocations in the steady state and holds more at its end than at its start is a
//! suspect when either
//!
//! - its live bytes are higher at the end of each third than at the end of the one before
//!   (it grew all through the run), or
//! - none of its allocations was ever given back (it only grows). This rule does not depend
//!   on how threads interleave: a thread that leaks in every step of its own, run before or
//!   after the others, grows in one third and is flat in the rest, yet never frees.
//!
//! The stacks of a process that reach the driver from the same frames in the user's code
//! ([`SiteKey`]) are judged as one: their sums follow these rules.
//!
//! Memory that is held by design is told apart and listed as retention:
//!
//! - stream-ordered pools: a free returns memory to the pool (the ledger's pool-held bytes),
//!   so pool memory never counts as live in the first place;
//! - caching allocators (PyTorch's, most servers'): segments grow while the working set warms
//!   up, then stay flat, and the same stack frees some of them; a stack that frees and whose
//!   live bytes stopped growing in the last third is retention, not a leak.

use std::collections::BTreeMap;

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use super::postmortem::{StackFrames, site_key};
use crate::ledger::{Change, EndCause, Ledger, LiveAllocation, Phase};
use crate::site::SiteKey;
use crate::trace::Mem;

/// The shortest steady state a growth rate per second is given for.
pub const RATE_MIN_NS: u64 = 1_000_000_000;

/// History points kept per stack; halved when full.
const HISTORY: usize = 128;
/// Allocations a stack must make in the steady state before it can be a suspect.
const MIN_STEADY_ALLOCS: u64 = 3;

#[derive(Clone, Debug)]
struct StackStat {
    mem: Mem,
    api: String,
    allocs: u64,
    frees: u64,
    steady_allocs: u64,
    live_bytes: u64,
    live_count: u64,
    last_alloc_ts: u64,
    /// (the process's memory event ordinal, live bytes after the change), oldest first: the
    /// latest point of each span of `stride` events.
    history: Vec<(u64, u64)>,
    /// A power of two, at least 1.
    stride: u64,
}

impl StackStat {
    /// Notes the live bytes after event `ord`. The history keeps the latest point of each
    /// span of `stride` events; when it is full the spans double and merge pairwise, so it
    /// covers the whole run evenly however long it is.
    fn record(&mut self, ord: u64) {
        let point = (ord, self.live_bytes);
        loop {
            let len = self.history.len();
            // The stride is a power of two: spans compared by shifts, not divisions.
            let shift = self.stride.trailing_zeros();
            match self.history.last_mut() {
                Some(last) if last.0 >> shift == ord >> shift => {
                    *last = point;
                    return;
                }
                _ if len < HISTORY => {
                    self.history.push(point);
                    return;
                }
                _ => self.coarsen(),
            }
        }
    }

    /// Doubles the span and merges the points pairwise, each span keeping its latest.
    fn coarsen(&mut self) {
        self.stride = self.stride.checked_mul(2).unwrap_or(self.stride);
        let shift = self.stride.trailing_zeros();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(HISTORY);
        for p in self.history.drain(..) {
            match merged.last_mut() {
                Some(l) if l.0 >> shift == p.0 >> shift => *l = p,
                _ => merged.push(p),
            }
        }
        self.history = merged;
    }

    fn live_at(&self, ord: u64) -> u64 {
        self.history
            .iter()
            .rev()
            .find(|(o, _)| *o <= ord)
            .map_or(0, |(_, b)| *b)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ProcSpan {
    /// When the Ledger ended the process's load phase: the steady state starts here.
    load_end: Option<u64>,
    exit: Option<u64>,
    /// The last allocation or free before the exit: the steady state ends here, so that an
    /// idle tail (teardown, a final evaluation) does not make a growing stack look flat.
    last_activity: Option<u64>,
    /// Allocations and frees so far: the steady state is cut into thirds by these, not by
    /// time, so that a pause (a stall, an evaluation) does not make a leak look flat.
    events: u64,
    /// `events` when the load phase ended.
    load_end_event: u64,
}

impl ProcSpan {
    /// One more allocation or free at `ts`; returns its ordinal.
    fn active(&mut self, ts: u64) -> u64 {
        self.last_activity = Some(self.last_activity.map_or(ts, |l| l.max(ts)));
        self.events += 1;
        self.events
    }
}

/// A stack of a finding, and what it made.
type Member<'a> = (Option<u32>, &'a StackStat);

/// Per-stack live bytes over time, from the allocations and frees the ledger booked.
#[derive(Clone, Debug, Default)]
pub struct LeakTracker {
    stacks: HashMap<(u32, Option<u32>), StackStat>,
    procs: HashMap<u32, ProcSpan>,
}

/// A stack whose live bytes grew through the steady state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakSuspect {
    pub proc: u32,
    pub pid: u32,
    pub comm: String,
    pub stack: StackFrames,
    pub api: String,
    pub mem: String,
    /// Live bytes at the end (exit or end of trace).
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub allocs: u64,
    pub frees: u64,
    /// Live bytes at the start of the steady state and at the end of each third.
    pub live_at_thirds: [u64; 4],
    /// Growth through the steady state: bytes, and over how long.
    #[serde(default)]
    pub growth_bytes: u64,
    #[serde(default)]
    pub growth_over_ns: u64,
    /// The same per second, when the steady state lasted at least [`RATE_MIN_NS`]: a rate
    /// from a few milliseconds would be extrapolation, not a measurement.
    #[serde(default)]
    pub growth_bytes_per_s: Option<f64>,
    /// Why it is a suspect: `grew_every_third` or `never_freed` (see the module's rules).
    #[serde(default)]
    pub rule: String,
}

/// Memory held by design: not a leak.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub proc: u32,
    pub pid: u32,
    pub comm: String,
    /// `pool` (freed into a stream-ordered pool) or `caching` (grew, then flat).
    pub kind: String,
    pub bytes: u64,
    /// The stack, for `caching`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackFrames>,
}

/// Leak suspects and retention.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakReport {
    pub suspects: Vec<LeakSuspect>,
    pub retention: Vec<Retention>,
}

impl LeakTracker {
    /// One change the Ledger made.
    pub fn observe(&mut self, ch: &Change) {
        match ch {
            Change::Started { proc, alloc } => self.on_alloc(*proc, alloc),
            Change::Ended {
                proc,
                alloc,
                cause,
                ts_ns,
            } if *cause != EndCause::ProcessExit => self.on_free(*proc, alloc, *ts_ns),
            Change::Phase { proc, phase, ts_ns } if *phase != Phase::Load => {
                let span = self.procs.entry(*proc).or_default();
                if span.load_end.is_none() {
                    span.load_end = Some(*ts_ns);
                    span.load_end_event = span.events;
                }
            }
            Change::Exited { proc, ts_ns } => self.on_exit(*proc, *ts_ns),
            _ => {}
        }
    }

    /// An allocation the ledger just booked.
    fn on_alloc(&mut self, proc: u32, a: &LiveAllocation) {
        let span = self.procs.entry(proc).or_default();
        if span.exit.is_some() {
            return;
        }
        let ord = span.active(a.ts_ns);
        let steady = span.load_end.is_some_and(|f| a.ts_ns >= f);
        let s = self
            .stacks
            .entry((proc, a.stack))
            .or_insert_with(|| StackStat {
                mem: a.mem,
                api: a.api.to_string(),
                allocs: 0,
                frees: 0,
                steady_allocs: 0,
                live_bytes: 0,
                live_count: 0,
                last_alloc_ts: a.ts_ns,
                history: Vec::new(),
                stride: 1,
            });
        s.allocs += 1;
        s.steady_allocs += u64::from(steady);
        s.live_bytes = s.live_bytes.saturating_add(a.bytes);
        s.live_count += 1;
        s.last_alloc_ts = s.last_alloc_ts.max(a.ts_ns);
        s.record(ord);
    }

    /// An allocation that ended, by any cause but the process's exit.
    fn on_free(&mut self, proc: u32, a: &LiveAllocation, ts: u64) {
        let span = self.procs.entry(proc).or_default();
        if span.exit.is_some() {
            return;
        }
        let ord = span.active(ts);
        if let Some(s) = self.stacks.get_mut(&(proc, a.stack)) {
            s.frees += 1;
            s.live_bytes = s.live_bytes.saturating_sub(a.bytes);
            s.live_count = s.live_count.saturating_sub(1);
            s.record(ord);
        }
    }

    /// The process exited: what its stacks hold now is what they held at the end.
    fn on_exit(&mut self, proc: u32, ts: u64) {
        self.procs.entry(proc).or_default().exit.get_or_insert(ts);
    }

    /// Live bytes per (process, stack) as the tracker counts them.
    #[cfg(test)]
    pub(crate) fn live_by_stack(&self) -> HashMap<(u32, Option<u32>), u64> {
        self.stacks
            .iter()
            .map(|(k, s)| (*k, s.live_bytes))
            .collect()
    }

    /// The suspects and retention, with `frames` to describe a stack. The stacks of a
    /// process that share a site ([`SiteKey`]: the same frames in the user's code) are one
    /// finding, judged on their sums and cited by the stack that holds the most.
    pub fn report(
        self,
        ledger: &Ledger,
        frames: impl Fn(Option<u32>) -> StackFrames,
    ) -> LeakReport {
        let mut out = LeakReport::default();
        let mut keys: Vec<_> = self.stacks.keys().copied().collect();
        keys.sort();
        let mut groups: BTreeMap<(u32, SiteKey), Vec<Member<'_>>> = BTreeMap::new();
        for key in keys {
            let (proc, stack) = key;
            // Stream-ordered memory goes back to its pool, which is retention of its own.
            let Some(s) = self.stacks.get(&key).filter(|s| s.mem != Mem::DeviceAsync) else {
                continue;
            };
            groups
                .entry((proc, site_key(ledger, stack)))
                .or_default()
                .push((stack, s));
        }
        for ((proc, _), members) in groups {
            let span = self.procs.get(&proc).copied().unwrap_or_default();
            let Some(p) = ledger.process(proc) else {
                continue;
            };
            let Some(start) = span.load_end else {
                continue;
            };
            // The member that holds the most (the first of equals) cites the group.
            let Some(&(cited, most)) = members.iter().rev().max_by_key(|(_, s)| s.live_bytes)
            else {
                continue;
            };
            let sum = |f: fn(&StackStat) -> u64| members.iter().map(|(_, s)| f(s)).sum::<u64>();
            let live_bytes = sum(|s| s.live_bytes);
            let frees = sum(|s| s.frees);
            let steady_allocs = sum(|s| s.steady_allocs);
            let last_alloc_ts = members
                .iter()
                .map(|(_, s)| s.last_alloc_ts)
                .max()
                .unwrap_or(0);
            let end = span
                .last_activity
                .or(span.exit)
                .or(p.last_ts_ns)
                .unwrap_or(start);
            if end <= start || live_bytes == 0 {
                continue;
            }
            let describe = || {
                let mut st = frames(cited);
                st.merged = members
                    .iter()
                    .filter_map(|(id, _)| *id)
                    .filter(|id| Some(*id) != cited)
                    .collect();
                st
            };
            let d = end - start;
            let (o0, n) = (span.load_end_event, span.events - span.load_end_event);
            let b = [o0, o0 + n / 3, o0 + 2 * n / 3, span.events]
                .map(|o| members.iter().map(|(_, s)| s.live_at(o)).sum::<u64>());
            let grew_every_third = b[1] < b[2] && b[2] < b[3] && b[0] < b[1];
            let never_freed = frees == 0 && b[3] > b[0];
            if (grew_every_third || never_freed) && steady_allocs >= MIN_STEADY_ALLOCS {
                out.suspects.push(LeakSuspect {
                    proc,
                    pid: p.pid,
                    comm: p.comm().to_owned(),
                    stack: describe(),
                    api: most.api.clone(),
                    mem: most.mem.name().to_owned(),
                    live_bytes,
                    live_allocations: sum(|s| s.live_count),
                    allocs: sum(|s| s.allocs),
                    frees,
                    live_at_thirds: b,
                    growth_bytes: b[3].saturating_sub(b[0]),
                    growth_over_ns: d,
                    growth_bytes_per_s: (d >= RATE_MIN_NS)
                        .then(|| b[3].saturating_sub(b[0]) as f64 / (d as f64 / 1e9)),
                    rule: if grew_every_third {
                        "grew_every_third"
                    } else {
                        "never_freed"
                    }
                    .to_owned(),
                });
            } else if steady_allocs > 0 && frees > 0 && last_alloc_ts >= start && b[2] == b[3] {
                out.retention.push(Retention {
                    proc,
                    pid: p.pid,
                    comm: p.comm().to_owned(),
                    kind: "caching".into(),
                    bytes: live_bytes,
                    stack: Some(describe()),
                });
            }
        }
        for p in ledger.processes() {
            let pool = p
                .exit
                .as_ref()
                .map_or(p.usage.pool_held_bytes, |e| e.pool_held_bytes);
            if pool > 0 {
                out.retention.push(Retention {
                    proc: p.proc,
                    pid: p.pid,
                    comm: p.comm().to_owned(),
                    kind: "pool".into(),
                    bytes: pool,
                    stack: None,
                });
            }
        }
        out.suspects
            .sort_by(|a, b| b.live_bytes.cmp(&a.live_bytes).then(a.proc.cmp(&b.proc)));
        out.retention
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.proc.cmp(&b.proc)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat() -> StackStat {
        StackStat {
            mem: Mem::Device,
            api: "cuMemAlloc_v2".into(),
            allocs: 0,
            frees: 0,
            steady_allocs: 0,
            live_bytes: 0,
            live_count: 0,
            last_alloc_ts: 0,
            history: Vec::new(),
            stride: 1,
        }
    }

    #[test]
    fn a_thinned_history_still_tells_the_live_bytes_of_long_ago() {
        // Alloc and free pairs, one in 250 never freed: the live bytes at any moment are the
        // leaked ones so far, give or take the one in flight.
        let mut s = stat();
        let mut ord = 0;
        let mut leaked = Vec::new();
        for n in 1..=7_000u64 {
            ord += 1;
            s.live_bytes += 10;
            s.record(ord);
            if n % 250 == 0 {
                leaked.push((ord, s.live_bytes));
                continue;
            }
            ord += 1;
            s.live_bytes -= 10;
            s.record(ord);
        }
        assert!(s.history.len() <= HISTORY);
        for (at, bytes) in leaked {
            // Within a span of the history's stride: the point kept is the latest of it.
            let seen = s.live_at(at + s.stride);
            assert!(
                seen + 10 >= bytes && seen <= bytes + 10,
                "at {at}: {seen}, not {bytes}"
            );
        }
    }
}
