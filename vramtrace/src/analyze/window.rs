//! What each process did inside `analyze --from/--to` and on `--gpu`: its calls counted from
//! the window's start, its peaks reached inside it. The Ledger's cumulative counts are taken
//! once, just before the first record of the window is applied, and subtracted at the end;
//! the peaks start from what the process held at that moment and follow the Ledger's usage
//! after every record in the window. The end of a window is a moment (the replay stops
//! applying records there), so what is held "at exit" is held at the window's end.

use std::collections::BTreeMap;

use super::{ApiTotal, FailedTotal, ProcessReport};
use crate::ledger::{ApiCount, FailedCount, Ledger, ProcessState, Usage};
use crate::trace::Record;

/// A process's cumulative counts at the window's start.
#[derive(Clone, Debug, Default)]
struct Counts {
    allocs: BTreeMap<String, ApiCount>,
    frees: BTreeMap<String, ApiCount>,
    failed: BTreeMap<String, FailedCount>,
}

/// Peaks inside the window: the whole process's, and per device.
#[derive(Clone, Debug, Default)]
struct Peaks {
    all: Usage,
    devices: BTreeMap<Option<i32>, Usage>,
}

/// Follows a replay to report a window of it.
#[derive(Debug, Default)]
pub(crate) struct Window {
    from: Option<u64>,
    /// Counts per process record id at the window's start; `None` until it is reached.
    baseline: Option<BTreeMap<u32, Counts>>,
    peaks: BTreeMap<u32, Peaks>,
    /// All processes together.
    machine: Usage,
}

impl Window {
    /// A window starting at `from` (CLOCK_MONOTONIC ns); `None`: from the start, where the
    /// Ledger's own counts and peaks already are the window's.
    pub(crate) fn new(from: Option<u64>) -> Self {
        Window {
            from,
            baseline: from.is_none().then(BTreeMap::new),
            peaks: BTreeMap::new(),
            machine: Usage::default(),
        }
    }

    /// Before `rec` is applied: the first record at or after the start takes the baseline.
    pub(crate) fn before(&mut self, ledger: &Ledger, rec: &Record) {
        let (Some(from), None) = (self.from, &self.baseline) else {
            return;
        };
        if rec.ts_ns().is_none_or(|t| t < from) {
            return;
        }
        self.take_baseline(ledger, from);
    }

    fn take_baseline(&mut self, ledger: &Ledger, from: u64) {
        let mut base = BTreeMap::new();
        for p in ledger.processes().filter(|p| !p.exited()) {
            base.insert(
                p.proc,
                Counts {
                    allocs: p.allocs.to_map(),
                    frees: p.frees.to_map(),
                    failed: p.failed.clone(),
                },
            );
            let peaks = Peaks {
                all: Usage::starting_at(&p.usage, from),
                devices: p
                    .devices
                    .iter()
                    .map(|(&d, u)| (d, Usage::starting_at(u, from)))
                    .collect(),
            };
            self.peaks.insert(p.proc, peaks);
        }
        self.machine = Usage::starting_at(&ledger.totals().usage, from);
        self.baseline = Some(base);
    }

    /// After `rec` was applied: inside the window, the process's peaks follow its usage.
    pub(crate) fn after(&mut self, ledger: &Ledger, rec: &Record) {
        if self.from.is_none() || self.baseline.is_none() {
            return;
        }
        let Some(p) = rec.proc().and_then(|id| ledger.process(id)) else {
            return;
        };
        let ts = rec.ts_ns().unwrap_or(0);
        self.machine.follow(&ledger.totals().usage, ts);
        let peaks = self.peaks.entry(p.proc).or_default();
        peaks.all.follow(&p.usage, ts);
        for (&d, u) in &p.devices {
            peaks.devices.entry(d).or_default().follow(u, ts);
        }
    }

    /// Whether `p` belongs in a report of the window: it was alive in it.
    pub(crate) fn saw(&self, p: &ProcessState) -> bool {
        match (self.from, &self.baseline) {
            (None, _) => true,
            // The window starts after the last record: nothing was alive in it.
            (Some(_), None) => false,
            (Some(from), Some(base)) => {
                base.contains_key(&p.proc) || p.first_ts_ns.is_some_and(|t| t >= from)
            }
        }
    }

    /// Narrows the machine's peaks to the window.
    pub(crate) fn narrow_machine(&self, m: &mut super::MachineReport) {
        if self.from.is_none() || self.baseline.is_none() {
            return;
        }
        m.peak_device_bytes = self.machine.peak_device_bytes;
        m.peak_ts_ns = self.machine.peak_device_ts_ns;
        m.peak_device_and_pool_bytes = self.machine.peak_device_and_pool_bytes;
    }

    /// Narrows `r`, a process's report, to the window: calls counted from its start,
    /// peaks reached inside it.
    pub(crate) fn narrow(&self, r: &mut ProcessReport) {
        let Some(from) = self.from else {
            return;
        };
        let empty = Counts::default();
        let base = self
            .baseline
            .as_ref()
            .and_then(|b| b.get(&r.proc))
            .unwrap_or(&empty);
        since(&mut r.allocs, &base.allocs);
        since(&mut r.frees, &base.frees);
        for (api, f) in &base.failed {
            if let Some(now) = r.failed.get_mut(api) {
                now.count = now.count.saturating_sub(f.count);
                now.bytes = now.bytes.saturating_sub(f.bytes);
                for (ret, n) in &f.rets {
                    if let Some(m) = now.rets.get_mut(ret) {
                        *m = m.saturating_sub(*n);
                    }
                }
                now.rets.retain(|_, n| *n > 0);
            }
        }
        r.failed.retain(|_, f| f.count > 0);
        r.failed_total = r.failed.values().map(|f: &FailedTotal| f.count).sum();
        if let Some(peaks) = self.peaks.get(&r.proc) {
            r.peak_device_bytes = peaks.all.peak_device_bytes;
            r.peak_ts_ns = peaks.all.peak_device_ts_ns;
            r.peak_device_and_pool_bytes = peaks.all.peak_device_and_pool_bytes;
            r.peak_host_bytes = peaks.all.peak_host_bytes;
            for d in &mut r.devices {
                if let Some(u) = peaks.devices.get(&d.device) {
                    d.peak_device_bytes = u.peak_device_bytes;
                    d.peak_ts_ns = u.peak_device_ts_ns;
                }
            }
        }
        r.ooms.retain(|o| o.oom.ts_ns >= from);
        r.host_fallback.retain(|h| h.finding.ts_ns >= from);
    }
}

/// `now` minus `base`, per entry point; entry points with no calls left are dropped.
fn since(now: &mut BTreeMap<String, ApiTotal>, base: &BTreeMap<String, ApiCount>) {
    for (api, b) in base {
        if let Some(t) = now.get_mut(api) {
            t.count = t.count.saturating_sub(b.count);
            t.bytes = t.bytes.saturating_sub(b.bytes);
        }
    }
    now.retain(|_, t| t.count > 0);
}
