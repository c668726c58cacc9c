//! The memory timeline of a replayed trace at a level of detail the server chooses: one pass
//! of the Ledger over the trace (the one `serve --replay` makes anyway) notes the Model's
//! bytes by class after each record into at most [`CAP`] buckets, doubling the bucket width
//! when it runs out; a request reads a window of them grouped into as many points as it
//! asks for. The page never loads the trace.

use serde::Serialize;
use serde_json::{Value, json};

use super::state::{ByClass, Model};
use crate::ledger::{Class, LiveAllocation};

/// Buckets kept at most; the width doubles past this.
pub const CAP: usize = 8192;
/// Points a request may ask for at most.
pub const MAX_POINTS: usize = 4000;

/// One bucket: the bytes by class at its end, and the highest device total within it.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    index: u64,
    by_class: ByClass,
    peak: u64,
}

/// A failure for want of memory, marked on the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Mark {
    pub ts_ns: u64,
    pub pid: Option<u32>,
    pub api: String,
    pub requested_bytes: Option<u64>,
}

/// The trace's bytes by class over time.
#[derive(Clone, Debug)]
pub struct Timeline {
    start_ns: u64,
    end_ns: u64,
    step_ns: u64,
    buckets: Vec<Bucket>,
    pub ooms: Vec<Mark>,
    pub lifetimes: Lifetimes,
}

/// Device bytes by class (every process and GPU together), with the `pool` slot holding the
/// bytes pools hold and the `host_fallback` slot the host-RAM bytes.
pub fn class_totals(model: &Model) -> ByClass {
    let mut out = ByClass::default();
    for row in model.procs.values() {
        for by in row.device.values() {
            for (o, b) in out.iter_mut().zip(by) {
                *o += b;
            }
        }
        out[slot(Class::Pool)] += row.pool_held_bytes();
        out[slot(Class::HostFallback)] += row.host_bytes;
    }
    out
}

fn slot(c: Class) -> usize {
    Class::ALL.iter().position(|&k| k == c).unwrap_or(0)
}

fn device_total(by: &ByClass) -> u64 {
    by.iter()
        .zip(Class::ALL)
        .filter(|(_, c)| !matches!(c, Class::Pool | Class::HostFallback))
        .map(|(b, _)| b)
        .sum()
}

impl Timeline {
    /// Empty, from the recording's start (the header's clock base).
    pub fn new(start_ns: u64) -> Self {
        Timeline {
            start_ns,
            end_ns: start_ns,
            step_ns: 1_000_000,
            buckets: Vec::new(),
            ooms: Vec::new(),
            lifetimes: Lifetimes::default(),
        }
    }

    /// Notes the bytes by class as they are at `ts_ns`.
    pub fn note(&mut self, ts_ns: u64, by_class: ByClass) {
        let ts = ts_ns.max(self.start_ns);
        self.end_ns = self.end_ns.max(ts);
        let index = (ts - self.start_ns) / self.step_ns;
        let peak = device_total(&by_class);
        match self.buckets.last_mut() {
            Some(b) if b.index >= index => {
                b.by_class = by_class;
                b.peak = b.peak.max(peak);
            }
            _ => self.buckets.push(Bucket {
                index,
                by_class,
                peak,
            }),
        }
        if self.buckets.len() > CAP {
            self.coarsen();
        }
    }

    /// Doubles the bucket width: each pair becomes one, with the later values and the
    /// higher peak.
    fn coarsen(&mut self) {
        self.step_ns *= 2;
        let mut out: Vec<Bucket> = Vec::with_capacity(self.buckets.len() / 2 + 1);
        for b in self.buckets.drain(..) {
            let index = b.index / 2;
            match out.last_mut() {
                Some(o) if o.index == index => {
                    o.by_class = b.by_class;
                    o.peak = o.peak.max(b.peak);
                }
                _ => out.push(Bucket { index, ..b }),
            }
        }
        self.buckets = out;
    }

    /// Seconds from the start to the last record noted.
    pub fn duration_s(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }

    /// The window `[from, to]` (seconds after the start; the whole trace by default) in at
    /// most `points` points: each the bytes by class at its end and the highest device
    /// total within it. A point without a record in it carries the one before.
    pub fn window(&self, from: Option<f64>, to: Option<f64>, points: usize) -> Value {
        let dur = self.duration_s();
        let from = from.unwrap_or(0.0).clamp(0.0, dur);
        let to = to.unwrap_or(dur).clamp(from, dur.max(from));
        let points = points.clamp(1, MAX_POINTS);
        let from_ns = self.start_ns + (from * 1e9) as u64;
        let to_ns = self.start_ns + (to * 1e9) as u64;
        let width = ((to_ns - from_ns) / points as u64).max(1);
        let ts_of = |b: &Bucket| self.start_ns + b.index * self.step_ns;
        // The state at the window's start: the last bucket before it.
        let first = self.buckets.partition_point(|b| ts_of(b) < from_ns);
        let mut carry = first
            .checked_sub(1)
            .and_then(|i| self.buckets.get(i))
            .map(|b| b.by_class)
            .unwrap_or_default();
        let mut out: Vec<Value> = Vec::with_capacity(points);
        let mut i = first;
        for p in 0..points {
            let end = if p + 1 == points {
                to_ns
            } else {
                from_ns + width * (p as u64 + 1)
            };
            let mut peak = device_total(&carry);
            while let Some(b) = self.buckets.get(i) {
                if ts_of(b) > end {
                    break;
                }
                carry = b.by_class;
                peak = peak.max(b.peak);
                i += 1;
            }
            let t = (end - self.start_ns) as f64 / 1e9;
            let mut row = vec![json!(t)];
            row.extend(carry.iter().map(|b| json!(b)));
            row.push(json!(peak));
            out.push(Value::Array(row));
        }
        let ooms: Vec<Value> = self
            .ooms
            .iter()
            .map(|m| {
                json!({
                    "t": (m.ts_ns.saturating_sub(self.start_ns)) as f64 / 1e9,
                    "pid": m.pid, "api": m.api, "requested_bytes": m.requested_bytes,
                })
            })
            .collect();
        json!({
            "from": from,
            "to": to,
            "duration_s": dur,
            "resolution_s": self.step_ns as f64 / 1e9,
            "columns": std::iter::once("t")
                .chain(Class::ALL.iter().map(|c| c.name()))
                .chain(std::iter::once("peak_device_bytes"))
                .collect::<Vec<_>>(),
            "points": out,
            "ooms": ooms,
        })
    }
}

/// Lifetimes kept at most; past this the smallest half goes and the floor rises.
pub const MAX_LIFETIMES: usize = 1 << 20;

/// One device allocation from its start to its end (the Ledger's `Ended`), or still live at
/// the end of the trace.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub bytes: u64,
    pub proc: u32,
    pub stack: Option<u32>,
    pub class: Class,
}

/// The allocations' lifetimes for the page's lifetime view: the largest [`MAX_LIFETIMES`],
/// with the size under which allocations were left out said.
#[derive(Clone, Debug, Default)]
pub struct Lifetimes {
    all: Vec<Lifetime>,
    /// Allocations smaller than this are not kept.
    pub floor: u64,
}

impl Lifetimes {
    fn push(&mut self, l: Lifetime) {
        if l.bytes < self.floor {
            return;
        }
        self.all.push(l);
        if self.all.len() > MAX_LIFETIMES {
            let mut sizes: Vec<u64> = self.all.iter().map(|l| l.bytes).collect();
            let mid = sizes.len() / 2;
            let (_, median, _) = sizes.select_nth_unstable(mid);
            self.floor = (*median).max(self.floor + 1);
            let floor = self.floor;
            self.all.retain(|l| l.bytes >= floor);
        }
    }

    /// An allocation the Ledger ended at `end_ns`.
    pub fn ended(&mut self, proc: u32, a: &LiveAllocation, end_ns: u64) {
        if a.mem.is_host() {
            return;
        }
        self.push(Lifetime {
            start_ns: a.ts_ns,
            end_ns: Some(end_ns),
            bytes: a.bytes,
            proc,
            stack: a.stack,
            class: a.class,
        });
    }

    /// An allocation still live at the end of the trace.
    pub fn live(&mut self, proc: u32, a: &LiveAllocation) {
        if a.mem.is_host() {
            return;
        }
        self.push(Lifetime {
            start_ns: a.ts_ns,
            end_ns: None,
            bytes: a.bytes,
            proc,
            stack: a.stack,
            class: a.class,
        });
    }

    /// The `max` largest that were live at some time in `[from_ns, to_ns]`, in the order
    /// they were made.
    pub fn window(&self, from_ns: u64, to_ns: u64, max: usize) -> (usize, Vec<Lifetime>) {
        let mut hit: Vec<Lifetime> = self
            .all
            .iter()
            .filter(|l| l.start_ns <= to_ns && l.end_ns.is_none_or(|e| e >= from_ns))
            .copied()
            .collect();
        let total = hit.len();
        if hit.len() > max {
            hit.select_nth_unstable_by(max, |a, b| b.bytes.cmp(&a.bytes));
            hit.truncate(max);
        }
        hit.sort_by_key(|l| (l.start_ns, l.end_ns));
        (total, hit)
    }
}

impl Timeline {
    /// The lifetimes view of `[from, to]` seconds: at most `max` allocations, the largest.
    pub fn lifetimes_window(&self, from: Option<f64>, to: Option<f64>, max: usize) -> Value {
        let dur = self.duration_s();
        let from = from.unwrap_or(0.0).clamp(0.0, dur);
        let to = to.unwrap_or(dur).clamp(from, dur.max(from));
        let secs = |ns: u64| ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let (total, rows) = self.lifetimes.window(
            self.start_ns + (from * 1e9) as u64,
            self.start_ns + (to * 1e9) as u64,
            max.clamp(1, MAX_POINTS),
        );
        let rows: Vec<Value> = rows
            .iter()
            .map(|l| {
                json!([
                    secs(l.start_ns),
                    l.end_ns.map(secs),
                    l.bytes,
                    l.class.name(),
                    l.proc,
                    l.stack
                ])
            })
            .collect();
        json!({
            "from": from,
            "to": to,
            "columns": ["start", "end", "bytes", "class", "proc", "stack"],
            "in_window": total,
            "smaller_left_out_below_bytes": self.lifetimes.floor,
            "rows": rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(w: u64) -> ByClass {
        let mut b = ByClass::default();
        b[0] = w;
        b
    }

    #[test]
    fn buckets_stay_bounded_and_keep_the_peak() {
        let mut t = Timeline::new(0);
        for i in 0..100_000u64 {
            let v = if i == 77_777 { 1 << 40 } else { i };
            t.note(i * 1_000_000, by(v));
        }
        assert!(t.buckets.len() <= CAP);
        let w = t.window(None, None, 100);
        let pts = w["points"].as_array().expect("points");
        assert_eq!(pts.len(), 100);
        let peaks: Vec<u64> = pts
            .iter()
            .map(|p| p[Class::ALL.len() + 1].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(peaks.iter().max(), Some(&(1 << 40)));
        // The last point is the state at the end.
        assert_eq!(pts[99][1], 99_999);
    }

    #[test]
    fn a_window_starts_from_the_state_before_it() {
        let mut t = Timeline::new(0);
        t.note(0, by(5));
        t.note(10_000_000_000, by(7));
        let w = t.window(Some(2.0), Some(3.0), 4);
        assert_eq!(w["points"][0][1], 5);
        assert_eq!(w["points"][3][1], 5);
    }
}
