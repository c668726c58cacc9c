//! Device, pool-held and host bytes per process over time, in a bounded number of buckets
//! whatever the trace's length: when the buckets run out, neighbours merge and each covers
//! twice the time. Each bucket keeps the highest value seen in it, so peaks survive merging.
//! Beside each process's series: the lowest its device bytes fell after its load phase, and
//! when, which an OOM's explanation measures growth from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::by_proc::ByProc;
use crate::ledger::{Phase, ProcessState};

/// Buckets per series; merged pairwise when full.
const BUCKETS: usize = 256;
/// Width of a bucket to start with.
const FIRST_WIDTH_NS: u64 = 1_000_000;

/// Device, pool-held and host bytes per bucket: the three of a bucket side by side, since
/// every note touches them together.
#[derive(Clone, Debug, Default)]
struct Series(Vec<[u64; 3]>);

impl Series {
    /// Books `new` into bucket `idx`; buckets skipped on the way hold `carry`, the value
    /// before this change.
    #[inline(always)]
    fn push_to(&mut self, idx: usize, carry: [u64; 3], new: [u64; 3]) {
        if self.0.len() <= idx {
            self.0.resize(idx + 1, carry);
        }
        let b = &mut self.0[idx];
        for (v, n) in b.iter_mut().zip(new) {
            *v = (*v).max(n);
        }
    }

    fn halve(&mut self) {
        self.0 = self
            .0
            .chunks(2)
            .map(|c| {
                c.iter().fold([0; 3], |m, b| {
                    [m[0].max(b[0]), m[1].max(b[1]), m[2].max(b[2])]
                })
            })
            .collect();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// One of the three series: 0 device, 1 pool-held, 2 host bytes.
    fn column(&self, i: usize) -> Vec<u64> {
        self.0.iter().map(|b| b[i]).collect()
    }
}

#[derive(Clone, Debug, Default)]
struct Proc {
    pid: u32,
    comm: String,
    series: Series,
    /// The current values, carried into buckets that see no event.
    now: [u64; 3],
    /// Once its load phase is over: the latest time its device bytes were at their lowest
    /// since then (bytes, time).
    low: Option<(u64, u64)>,
}

/// The timeline under construction.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    start_ns: Option<u64>,
    width_ns: u64,
    /// The bucket of the last note and the times it covers, `[from, to)`: most notes fall in
    /// the same one, and need no division to find it.
    last_bucket: (u64, u64, u64),
    procs: ByProc<Proc>,
}

/// One process over time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessTimeline {
    pub proc: u32,
    pub pid: u32,
    pub comm: String,
    /// Highest live device bytes in each bucket.
    pub device_bytes: Vec<u64>,
    /// Highest pool-held bytes in each bucket.
    pub pool_held_bytes: Vec<u64>,
    /// Highest host bytes in each bucket.
    pub host_bytes: Vec<u64>,
    /// Bytes by class per bucket, once allocations are classified.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, Vec<u64>>,
    /// The bucket holding the peak of `device_bytes`.
    pub peak_bucket: Option<usize>,
}

/// Bytes over time: bucket `i` covers `[start_ns + i*bucket_ns, start_ns + (i+1)*bucket_ns)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineReport {
    pub start_ns: u64,
    pub bucket_ns: u64,
    pub processes: Vec<ProcessTimeline>,
}

impl Timeline {
    /// Notes process `p`'s live bytes at `ts`.
    pub fn note(&mut self, p: &ProcessState, ts: u64) {
        let start = *self.start_ns.get_or_insert(ts);
        if self.width_ns == 0 {
            self.width_ns = FIRST_WIDTH_NS;
        }
        let (last, from, to) = self.last_bucket;
        let idx = if ts >= from && ts < to {
            last
        } else {
            let mut idx = ts.saturating_sub(start) / self.width_ns;
            while idx >= BUCKETS as u64 {
                self.width_ns = self.width_ns.saturating_mul(2);
                for q in self.procs.values_mut() {
                    q.series.halve();
                }
                idx = ts.saturating_sub(start) / self.width_ns;
            }
            // A time before the start is in the first bucket, but not one it covers.
            let from = start.saturating_add(idx * self.width_ns);
            self.last_bucket = (idx, from, from.saturating_add(self.width_ns));
            idx
        };
        let e = self.proc_mut(p);
        if e.comm == "?" {
            p.comm().clone_into(&mut e.comm);
        }
        let u = &p.usage;
        let new = [u.device_bytes, u.pool_held_bytes, u.host_bytes];
        e.series.push_to(idx as usize, e.now, new);
        e.now = new;
        if p.classifier.phase != Phase::Load && !p.exited() {
            let low = e.low.get_or_insert((u.device_bytes, ts));
            if u.device_bytes <= low.0 {
                *low = (u.device_bytes, ts);
            }
        }
    }

    /// The timeline of process `p`, made when it is new.
    fn proc_mut(&mut self, p: &ProcessState) -> &mut Proc {
        self.procs.get_or_insert_with(p.proc, || Proc {
            pid: p.pid,
            comm: p.comm().to_owned(),
            ..Proc::default()
        })
    }

    /// Once process `proc`'s load phase is over: the latest time its device bytes were at
    /// their lowest since then (bytes, time).
    pub fn low(&self, proc: u32) -> Option<(u64, u64)> {
        self.procs.get(proc)?.low
    }

    /// A process's device, pool-held and host bytes as last noted.
    #[cfg(test)]
    pub(crate) fn now(&self, proc: u32) -> Option<(u64, u64, u64)> {
        self.procs.get(proc).map(|p| (p.now[0], p.now[1], p.now[2]))
    }

    /// The timeline, every series as long as the longest.
    pub fn report(self) -> TimelineReport {
        let len = self
            .procs
            .iter()
            .map(|(_, p)| p.series.len())
            .max()
            .unwrap_or(0);
        let processes = self
            .procs
            .into_iter()
            .map(|(proc, mut p)| {
                if p.series.len() < len {
                    p.series.push_to(len - 1, p.now, p.now);
                }
                let device = p.series.column(0);
                let peak = device
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i)))
                    .filter(|(_, v)| **v > 0)
                    .map(|(i, _)| i);
                ProcessTimeline {
                    proc,
                    pid: p.pid,
                    comm: p.comm,
                    device_bytes: device,
                    pool_held_bytes: p.series.column(1),
                    host_bytes: p.series.column(2),
                    classes: BTreeMap::new(),
                    peak_bucket: peak,
                }
            })
            .collect();
        TimelineReport {
            start_ns: self.start_ns.unwrap_or(0),
            bucket_ns: self.width_ns,
            processes,
        }
    }
}

impl TimelineReport {
    /// Keeps the buckets that overlap `[from, to]` (trace clock, ns).
    pub fn clip(&mut self, from: Option<u64>, to: Option<u64>) {
        if self.bucket_ns == 0 {
            return;
        }
        let first = from.map_or(0, |f| {
            (f.saturating_sub(self.start_ns) / self.bucket_ns) as usize
        });
        // The first bucket kept is where the clipped timeline starts.
        self.start_ns = self
            .start_ns
            .saturating_add((first as u64).saturating_mul(self.bucket_ns));
        let last = to.map(|t| (t.saturating_sub(self.start_ns) / self.bucket_ns) as usize);
        for p in &mut self.processes {
            for v in [
                &mut p.device_bytes,
                &mut p.pool_held_bytes,
                &mut p.host_bytes,
            ] {
                let end = last.map_or(v.len(), |l| (l + 1).min(v.len()));
                *v = v
                    .get(first.min(end)..end)
                    .map(<[u64]>::to_vec)
                    .unwrap_or_default();
            }
            p.peak_bucket = p
                .device_bytes
                .iter()
                .enumerate()
                .max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i)))
                .filter(|(_, v)| **v > 0)
                .map(|(i, _)| i);
        }
        self.start_ns += first as u64 * self.bucket_ns;
    }
}

/// A text sparkline of `values` squeezed into `width` cells (the maximum of each group), with
/// the peak cell marked by the caller's index.
pub fn sparkline(values: &[u64], width: usize) -> (String, Option<usize>) {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return (String::new(), None);
    }
    let per = buckets_per_column(values.len(), width);
    let cells: Vec<u64> = values
        .chunks(per)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    let max = cells.iter().copied().max().unwrap_or(0);
    let peak = cells.iter().position(|&v| v == max && max > 0);
    let s = cells
        .iter()
        .map(|&v| {
            if max == 0 || v == 0 {
                ' '
            } else {
                let i = ((v as u128 * 7).div_ceil(max as u128)) as usize;
                BARS[i.min(7)]
            }
        })
        .collect();
    (s, peak)
}

/// How many buckets of a series of `len` one column of a [`sparkline`] `width` wide covers.
pub fn buckets_per_column(len: usize, width: usize) -> usize {
    len.div_ceil(width.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_the_maximum() {
        let (s, peak) = sparkline(&[0, 1, 2, 4, 8, 4], 6);
        assert_eq!(s.chars().count(), 6);
        assert_eq!(s.chars().nth(4), Some('█'));
        assert_eq!(peak, Some(4));
        assert_eq!(sparkline(&[], 10).0, "");
    }

    #[test]
    fn buckets_stay_bounded_and_keep_the_peak() {
        let mut t = Timeline::default();
        let mut p = ProcessState::default();
        p.proc = 1;
        for i in 0..100_000u64 {
            p.usage.device_bytes = if i == 77_777 { 1 << 40 } else { i % 100 };
            t.note(&p, i * 1_000_000);
        }
        let r = t.report();
        assert!(r.processes[0].device_bytes.len() <= BUCKETS);
        assert_eq!(r.processes[0].device_bytes.iter().max(), Some(&(1 << 40)));
        let peak = r.processes[0].peak_bucket.unwrap();
        let at = r.start_ns + peak as u64 * r.bucket_ns;
        assert!(at <= 77_777_000_000 && 77_777_000_000 < at + r.bucket_ns);
    }
}
