//! What each live byte is: weights, KV cache / long-lived buffers, dynamic, pool-held, host
//! fallback or unknown, decided from the event stream alone and revised as evidence arrives.
//!
//! The rules and their limits are documented in `docs/classification.md`. In short:
//!
//! - A process starts in its **load** phase. Its first free of device memory opens the
//!   **warm-up** (a profiling pass, the first iteration); once `STEADY_FREES` device frees
//!   have been seen, allocation and free churn is established: **steady** state. Phases are
//!   counted in events, never in wall-clock time, so a replay decides exactly as the live run.
//!   Only the process's own frees count: what a context destroy takes with it, and what the
//!   process's exit leaves, is teardown, not churn, and moves no phase (the `contexts`
//!   workload destroys a scratch context, then loads its weights).
//! - An allocation is *long-lived* when it was made in the load phase, or when it has outlived
//!   `SURVIVE_FREES` device frees since it was made. Until then an allocation made after the
//!   load phase is *dynamic*.
//! - A long-lived allocation filled from the host for at least half its bytes is *weights*;
//!   one that is not is a *KV cache / long-lived buffer*. An allocation made in the load phase
//!   is weights already when copies made while the process was still loading filled
//!   `LOAD_FILL_PCT` (1%) of it: weight buffers are seen filled only 12% or 6% through host
//!   copies, the rest by other paths, while what the host copies into a KV cache while
//!   loading is a header of a few KiB. Copies after loading count only towards the half, so
//!   inputs staged into a persistent buffer while serving do not turn it into weights.
//! - Host-resident memory is *host fallback* whatever else is known; bytes freed into a
//!   stream-ordered pool and still held from the GPU are *pool*.
//!
//! The classifier keeps bytes per class incrementally: every allocation is classified when it
//! is made, again when a copy fills it and when it crosses the survival threshold, and its
//! bytes move between the counters with it. Nothing scans the live set on a hot path.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use arrayvec::ArrayVec;

use serde::{Deserialize, Serialize};

use super::LiveAllocation;
use crate::trace::Mem;

/// Device frees after the first that establish steady-state churn.
pub const STEADY_FREES: u64 = 8;
/// Device frees an allocation made after the load phase must outlive to count as long-lived.
pub const SURVIVE_FREES: u64 = 16;
/// Share of an allocation's bytes, in percent, that host-to-device copies must have filled
/// for it to read as weights.
pub const WEIGHTS_FILL_PCT: u64 = 50;
/// Share of an allocation made in the load phase, in percent, that host-to-device copies made
/// while the process was still loading must have filled for it to read as weights. Weight
/// buffers are seen filled only 12% and 6% through host copies, the rest by other paths
/// (storage straight to the GPU, a kernel); a header or a table copied into a KV cache is a
/// few KiB in hundreds of MiB, far below 1%. `docs/classification.md` has the evidence.
pub const LOAD_FILL_PCT: u64 = 1;

/// What a byte of memory is. Serialized in snake_case: `weights`, `kv_cache`, `dynamic`,
/// `pool`, `host_fallback`, `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Allocated in the load phase (or long-lived), filled by host-to-device copies.
    Weights,
    /// Long-lived, not filled from host: KV cache, optimizer state, persistent buffers.
    KvCache,
    /// Allocated after the load phase and not (yet) long-lived: activations, workspaces.
    Dynamic,
    /// Freed into a stream-ordered pool, still held from the GPU.
    Pool,
    /// Lives in host RAM: managed, pinned, registered, host-located VMM.
    HostFallback,
    /// Nothing to decide by (an allocation of unknown size).
    Unknown,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 6] = [
        Class::Weights,
        Class::KvCache,
        Class::Dynamic,
        Class::Pool,
        Class::HostFallback,
        Class::Unknown,
    ];

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Class::Weights => "weights",
            Class::KvCache => "kv_cache",
            Class::Dynamic => "dynamic",
            Class::Pool => "pool",
            Class::HostFallback => "host_fallback",
            Class::Unknown => "unknown",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes per class. Sums to the live (device + pool-held + host) bytes it describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassBytes([u64; 6]);

impl ClassBytes {
    /// Bytes of one class.
    pub fn get(&self, c: Class) -> u64 {
        self.0[c.index()]
    }

    /// All classes together.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    pub(crate) fn add(&mut self, c: Class, bytes: u64) {
        let v = &mut self.0[c.index()];
        *v = v.saturating_add(bytes);
    }

    pub(crate) fn sub(&mut self, c: Class, bytes: u64) {
        let v = &mut self.0[c.index()];
        *v = v.saturating_sub(bytes);
    }

    pub(crate) fn set(&mut self, c: Class, bytes: u64) {
        self.0[c.index()] = bytes;
    }

    /// Adds another set of counters to this one.
    pub fn merge(&mut self, other: &ClassBytes) {
        for c in Class::ALL {
            self.add(c, other.get(c));
        }
    }

    /// Every class with its bytes, zeros included, in report order.
    pub fn to_map(&self) -> BTreeMap<Class, u64> {
        Class::ALL.iter().map(|&c| (c, self.get(c))).collect()
    }
}

/// A process's phase, as the event stream shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// From the first allocation to the process's first free of device memory.
    #[default]
    Load,
    /// After the first device free, until churn is established.
    Warmup,
    /// At least [`STEADY_FREES`] device frees seen.
    Steady,
}

/// What decided a class: at most three facts, kept inline (one per allocation).
pub type Evidences = ArrayVec<Evidence, 3>;

/// One piece of evidence behind an allocation's class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Made in the given phase.
    Made(Phase),
    /// Percent of its bytes filled by host-to-device copies (capped at 100; 0 is under 1%).
    FilledFromHost(u64),
    /// No host-to-device copy landed in it.
    NotFilled,
    /// Percent of its bytes filled by copies made while the process was loading (0 is under
    /// 1%); given when copies after loading filled more.
    FilledWhileLoading(u64),
    /// Made in the load phase, filled from host only after it.
    NotFilledWhileLoading,
    /// Outlived this many device frees since it was made.
    Outlived(u64),
    /// Made after the load phase and outlived only this many device frees so far.
    Young(u64),
    /// Lives in host RAM, by the memory kind.
    InHostRam(Mem),
    /// Its size is not known.
    UnknownSize,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::Made(Phase::Load) => f.write_str("allocated in load phase"),
            Evidence::Made(Phase::Warmup) => f.write_str("allocated in warm-up"),
            Evidence::Made(Phase::Steady) => f.write_str("allocated in steady state"),
            Evidence::FilledFromHost(0) => f.write_str("filled from host: under 1%"),
            Evidence::FilledFromHost(p) => write!(f, "filled from host: {p}%"),
            Evidence::NotFilled => f.write_str("not filled from host"),
            Evidence::FilledWhileLoading(0) => f.write_str("filled while loading: under 1%"),
            Evidence::FilledWhileLoading(p) => write!(f, "filled while loading: {p}%"),
            Evidence::NotFilledWhileLoading => f.write_str("not filled while loading"),
            Evidence::Outlived(n) => write!(f, "outlived {n} frees"),
            Evidence::Young(n) => write!(f, "outlived only {n} frees"),
            Evidence::InHostRam(m) => write!(f, "lives in host RAM ({})", m.name()),
            Evidence::UnknownSize => f.write_str("size unknown"),
        }
    }
}

/// Where a live allocation sits in its process, so the classifier can name it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum AllocRef {
    Addr(u64),
    Array(u64),
    Vmm(u64),
}

/// The per-process classifier state.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    /// The process's phase now.
    pub phase: Phase,
    /// Device frees seen: allocations the process gave back, by any entry point (not those
    /// its destroyed contexts took with them).
    pub frees: u64,
    /// When the load phase ended (the first device free).
    pub load_end_ts_ns: Option<u64>,
    /// When steady state began.
    pub steady_ts_ns: Option<u64>,
    /// Live bytes of allocations per class (pool-held bytes are not allocations: see
    /// `ProcessState::classes`).
    pub(crate) live: ClassBytes,
    seq: u64,
    /// Allocations made after the load phase, not yet long-lived, by the free count at which
    /// they become long-lived.
    /// In the order they were made, which is also the order of that free count (it only
    /// grows): the due ones are at the front.
    young: VecDeque<(u64, u64, AllocRef)>,
}

impl Classifier {
    /// Decides a class from what is known of `a`, and writes the evidence for it into `a`
    /// (where it is kept, not through a copy on the stack); the same facts always give the
    /// same class and evidence, live or on replay.
    fn decide(&self, a: &mut LiveAllocation) -> Class {
        let ev = &mut a.evidence;
        ev.clear();
        if a.mem.is_host() {
            ev.push(Evidence::InHostRam(a.mem));
            return Class::HostFallback;
        }
        if a.size_unknown {
            ev.push(Evidence::UnknownSize);
            return Class::Unknown;
        }
        ev.push(Evidence::Made(a.made_in));
        let age = self.frees.saturating_sub(a.frees_before);
        let outlived = age >= SURVIVE_FREES;
        if a.made_in != Phase::Load {
            ev.push(if outlived {
                Evidence::Outlived(age)
            } else {
                Evidence::Young(age)
            });
        }
        ev.push(if a.bytes > 0 && a.filled_from_host > 0 {
            Evidence::FilledFromHost(percent(a.filled_from_host, a.bytes))
        } else {
            Evidence::NotFilled
        });
        let filled = reaches(a.filled_from_host, a.bytes, WEIGHTS_FILL_PCT);
        let mut loaded = false;
        if a.made_in == Phase::Load {
            loaded = reaches(a.filled_while_loading, a.bytes, LOAD_FILL_PCT);
            if a.filled_while_loading < a.filled_from_host {
                ev.push(if a.filled_while_loading > 0 {
                    Evidence::FilledWhileLoading(percent(a.filled_while_loading, a.bytes))
                } else {
                    Evidence::NotFilledWhileLoading
                });
            }
        }
        match a.made_in {
            // Made and filled while loading, even partly: the rest of a weight buffer may come
            // by paths that are not host copies.
            Phase::Load if filled || loaded => Class::Weights,
            Phase::Load => Class::KvCache,
            // Loading may free a temporary or two before it is done: what the warm-up fills
            // from host is still weights.
            Phase::Warmup if filled => Class::Weights,
            _ if !outlived => Class::Dynamic,
            _ if filled => Class::Weights,
            _ => Class::KvCache,
        }
    }

    /// A new live allocation: stamps it, classifies it, counts its bytes.
    pub(crate) fn on_new(&mut self, a: &mut LiveAllocation, at: AllocRef) {
        self.seq += 1;
        a.seq = self.seq;
        a.made_in = self.phase;
        a.frees_before = self.frees;
        a.class = self.decide(a);
        self.live.add(a.class, a.bytes);
        if a.made_in != Phase::Load && !a.mem.is_host() {
            self.young
                .push_back((self.frees.saturating_add(SURVIVE_FREES), a.seq, at));
        }
    }

    /// A host-to-device copy put `bytes` into `a`: counted (apart, while the process is
    /// loading), and the allocation decided again. True when its class changed.
    pub(crate) fn on_fill(&mut self, a: &mut LiveAllocation, bytes: u64) -> bool {
        a.filled_from_host = a.filled_from_host.saturating_add(bytes);
        if self.phase == Phase::Load {
            a.filled_while_loading = a.filled_while_loading.saturating_add(bytes);
        }
        self.reclassify(a)
    }

    /// Decides again and moves the allocation's bytes to its new class. True when it changed.
    pub(crate) fn reclassify(&mut self, a: &mut LiveAllocation) -> bool {
        let class = self.decide(a);
        if a.class == class {
            return false;
        }
        self.live.sub(a.class, a.bytes);
        self.live.add(class, a.bytes);
        a.class = class;
        true
    }

    /// The process gave a live allocation back: a free, a VMM handle released and unmapped,
    /// an array destroyed, an address allocated over a live one (a free that was not seen).
    /// That is churn: a device free counts towards the phases and ages what is still live.
    pub(crate) fn on_gone(&mut self, a: &LiveAllocation, ts_ns: u64) {
        self.live.sub(a.class, a.bytes);
        if a.mem.is_host() {
            return;
        }
        self.frees += 1;
        if self.phase == Phase::Load {
            self.phase = Phase::Warmup;
            self.load_end_ts_ns = Some(ts_ns);
        }
        if self.phase == Phase::Warmup && self.frees >= STEADY_FREES {
            self.phase = Phase::Steady;
            self.steady_ts_ns = Some(ts_ns);
        }
    }

    /// A live allocation went with its context (`cuCtxDestroy*`, the primary context's last
    /// release). That is teardown, not churn: its bytes leave the counters, but it is not
    /// counted as a device free, so it neither ends the load phase nor ages anything. A
    /// framework that destroys a scratch context while loading (a probe of the device, a
    /// second context for a check) is still loading.
    pub(crate) fn on_ctx_gone(&mut self, a: &LiveAllocation) {
        self.live.sub(a.class, a.bytes);
    }

    /// The next allocation that just became long-lived, with its sequence number: the caller
    /// looks it up (it may be gone, or its address reused) and reclassifies it.
    pub(crate) fn next_due(&mut self) -> Option<(AllocRef, u64)> {
        let &(at_frees, seq, at) = self.young.front()?;
        if at_frees > self.frees {
            return None;
        }
        self.young.pop_front();
        Some((at, seq))
    }

    /// The process ended: nothing is live any more.
    pub(crate) fn clear_live(&mut self) {
        self.live = ClassBytes::default();
        self.young.clear();
    }
}

/// `part` as a percentage of `whole`, rounded down, at most 100; 0 for an empty `whole`.
fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    (u128::from(part) * 100 / u128::from(whole)).min(100) as u64
}

/// Whether `part` is at least `pct` percent of a non-empty `whole`, exactly.
fn reaches(part: u64, whole: u64, pct: u64) -> bool {
    whole > 0 && part > 0 && u128::from(part) * 100 >= u128::from(whole) * u128::from(pct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_snake_case_in_json() {
        for c in Class::ALL {
            let json = serde_json::to_string(&c).expect("serializes");
            assert_eq!(json, format!("\"{}\"", c.name()));
        }
        let m = ClassBytes::default().to_map();
        let json = serde_json::to_string(&m).expect("map serializes");
        assert!(json.contains("\"kv_cache\":0"), "{json}");
        let back: BTreeMap<Class, u64> = serde_json::from_str(&json).expect("map reads back");
        assert_eq!(back, m);
    }

    #[test]
    fn evidence_reads_as_short_phrases() {
        assert_eq!(
            Evidence::FilledFromHost(100).to_string(),
            "filled from host: 100%"
        );
        assert_eq!(
            Evidence::Made(Phase::Load).to_string(),
            "allocated in load phase"
        );
        assert_eq!(
            Evidence::InHostRam(Mem::Managed).to_string(),
            "lives in host RAM (managed)"
        );
    }
}
