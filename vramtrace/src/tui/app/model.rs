//! The view model: the GPU, process and allocation tables as [`App::refresh`] builds them
//! from the Ledger and the rows that follow it.

use std::collections::BTreeMap;

use super::{AllocList, AllocOrder, AllocRow, App, GpuRow, HISTORY, ProcCol, ProcRow};
use crate::{
    procinfo::sanitize,
    tui::class::{ViewClass, nvml_process_bytes},
};

impl App {
    pub(super) fn build_procs(&mut self) {
        let nvml = self.nvml.as_ref();
        let mut gpus: BTreeMap<Option<i32>, GpuRow> = BTreeMap::new();
        for (dev, u) in &self.ledger.totals().devices {
            let g = gpus.entry(*dev).or_insert_with(|| gpu_row(*dev));
            g.pool = u.pool_held_bytes;
            g.peak = u.peak_device_and_pool_bytes;
        }
        // Which NVML GPU each CUDA ordinal is, as the Ledger maps it for the processes that
        // hold memory there (through their CUDA_VISIBLE_DEVICES); processes that disagree
        // leave it unknown.
        let mut nvml_of: BTreeMap<i32, Option<u32>> = BTreeMap::new();
        for p in self.ledger.processes().filter(|p| !p.exited()) {
            for d in p.devices.keys().flatten() {
                let i = self.ledger.nvml_index(p.proc, *d);
                let e = nvml_of.entry(*d).or_insert(i);
                if *e != i {
                    *e = None;
                }
            }
        }
        if let Some(s) = nvml {
            // A GPU no traced process maps to shows under its NVML index.
            for g in &s.gpus {
                if !nvml_of.values().any(|i| *i == Some(g.index))
                    && let Ok(d) = i32::try_from(g.index)
                    && !nvml_of.contains_key(&d)
                {
                    nvml_of.insert(d, Some(g.index));
                    gpus.entry(Some(d)).or_insert_with(|| gpu_row(Some(d)));
                }
            }
        }
        let mut procs = Vec::new();
        // Device bytes per class summed wide over the processes, saturated once at the end.
        let mut on_gpus: BTreeMap<Option<i32>, [u128; ViewClass::ALL.len()]> = BTreeMap::new();
        for p in self.ledger.processes() {
            let rows = self.mirror.process(p.proc);
            let by_class = rows.map(|r| r.by_class()).unwrap_or_default();
            let live = rows.map_or(0, |r| r.len());
            for (dev, sums) in rows.into_iter().flat_map(|r| r.by_device()) {
                let g = on_gpus.entry(dev).or_default();
                for (t, v) in g.iter_mut().zip(sums) {
                    *t += v;
                }
            }
            if self.hide_exited && p.exited() {
                continue;
            }
            let nvml_bytes = nvml_process_bytes(nvml, p.pid);
            let traced = p.usage.device_and_pool_bytes();
            let info = p.info.as_ref();
            // A process that exited shows what it held then (dimmed), so that the replay of
            // a crash still shows who held what.
            let (device, pool, host, by_class, live) = match &p.exit {
                Some(e) => (
                    e.device_bytes,
                    e.pool_held_bytes,
                    e.host_bytes,
                    crate::tui::class::view_classes(&e.classes),
                    e.live_allocations,
                ),
                None => (
                    p.usage.device_bytes,
                    p.usage.pool_held_bytes,
                    p.usage.host_bytes,
                    by_class,
                    live,
                ),
            };
            procs.push(ProcRow {
                proc: p.proc,
                pid: p.pid,
                name: sanitize(p.comm()),
                container: info
                    .and_then(|i| i.container.as_deref())
                    .map(|c| sanitize(&c.chars().take(12).collect::<String>()))
                    .unwrap_or_default(),
                traced: device,
                by_class,
                pool,
                host,
                mapped: p.imported_bytes(),
                nvml: nvml_bytes,
                coverage: nvml_bytes
                    .filter(|n| *n > 0)
                    .map(|n| traced as f64 * 100.0 / n as f64),
                rate: self.rates.get(&p.proc).copied().unwrap_or(0.0),
                peak: p.usage.peak_device_and_pool_bytes,
                ooms: self.seen.ooms_by_proc.get(&p.proc).copied().unwrap_or(0),
                host_fallbacks: self
                    .seen
                    .host_fallbacks_by_proc
                    .get(&p.proc)
                    .copied()
                    .unwrap_or(0),
                exited: p.exited(),
                live,
            });
        }
        for (dev, sums) in on_gpus {
            let g = gpus.entry(dev).or_insert_with(|| gpu_row(dev));
            g.by_class = sums.map(|v| u64::try_from(v).unwrap_or(u64::MAX));
        }
        for g in gpus.values_mut() {
            let index = g.device.and_then(|d| nvml_of.get(&d).copied().flatten());
            if let Some(s) = index.and_then(|i| nvml?.gpus.iter().find(|s| s.index == i)) {
                g.nvml_total = s.total_bytes;
                g.nvml_used = s.used_bytes;
                g.nvml_free = s.free_bytes;
            }
        }
        sort_procs(&mut procs, self.proc_sort, self.proc_desc);
        if !self.paused {
            for g in gpus.values() {
                let h = self.history.entry(g.device).or_default();
                if h.len() == HISTORY {
                    h.pop_front();
                }
                h.push_back(g.nvml_used.unwrap_or_else(|| g.traced()));
            }
        }
        self.view.gpus = gpus.into_values().collect();
        self.view.host_bytes = self.ledger.totals().usage.host_bytes;
        self.view.procs = procs;
        // Keep the selection on the same process when rows move.
        let found = self
            .selected_proc
            .and_then(|s| self.view.procs.iter().position(|r| r.proc == s));
        self.proc_cursor = match found {
            Some(i) => i,
            None => self
                .proc_cursor
                .min(self.view.procs.len().saturating_sub(1)),
        };
        self.selected_proc = self.view.procs.get(self.proc_cursor).map(|r| r.proc);
    }

    pub(super) fn build_allocs(&mut self) {
        let Some(proc) = self.selected_proc else {
            self.view.allocs.clear();
            self.view.allocs_unfiltered = 0;
            self.list_for = None;
            self.pending.clear();
            self.pending_overflow = false;
            return;
        };
        let rows = self.mirror.process(proc);
        let apis = &self.mirror.apis;
        let filter = &self.filter;
        let shown = |r: &AllocRow| filter.matches(apis.name(r.api), r.class, r.bytes);
        let order = self.alloc_order;
        let listed = self
            .list_for
            .as_ref()
            .is_some_and(|(p, o, f)| *p == proc && *o == order && f == filter);
        if listed && !self.pending_overflow {
            // Only what changed since the last refresh moves.
            for ch in self.pending.drain(..) {
                if let Some(old) = ch.old.as_ref().filter(|r| shown(r)) {
                    self.view.allocs.remove(old);
                }
                if let Some(new) = ch.new.filter(|r| shown(r)) {
                    self.view.allocs.insert(new);
                }
            }
        } else {
            // Another process, order or filter (or a burst): list from the rows.
            let all = rows.into_iter().flat_map(|r| r.rows());
            let picked: Vec<AllocRow> = all.filter(|r| shown(r)).cloned().collect();
            self.view.allocs = AllocList::from_rows(picked, order);
            self.list_for = Some((proc, order, self.filter.clone()));
            self.pending.clear();
            self.pending_overflow = false;
        }
        self.view.allocs_unfiltered = rows.map_or(0, |r| r.len());
        // At the top of the newest-first list the view follows new allocations, as `tail -f`
        // does; anywhere else the selection stays on its allocation.
        let found = self
            .selected_alloc
            .filter(|_| !(self.alloc_cursor == 0 && order == AllocOrder::Newest))
            .and_then(|(slot, ts)| rows?.row(slot).filter(|r| r.ts_ns == ts))
            .and_then(|r| self.view.allocs.position(r));
        self.alloc_cursor = match found {
            Some(i) => i,
            None => self
                .alloc_cursor
                .min(self.view.allocs.len().saturating_sub(1)),
        };
        self.selected_alloc = self.view.allocs.get(self.alloc_cursor).map(AllocRow::key);
    }
}

fn gpu_row(device: Option<i32>) -> GpuRow {
    GpuRow {
        device,
        by_class: [0; ViewClass::ALL.len()],
        pool: 0,
        nvml_total: None,
        nvml_used: None,
        nvml_free: None,
        peak: 0,
    }
}

fn sort_procs(rows: &mut [ProcRow], col: ProcCol, desc: bool) {
    use std::cmp::Ordering;
    let f = |a: f64, b: f64| a.partial_cmp(&b).unwrap_or(Ordering::Equal);
    rows.sort_by(|a, b| {
        let o = match col {
            ProcCol::Pid => a.pid.cmp(&b.pid),
            ProcCol::Name => a.name.cmp(&b.name),
            ProcCol::Container => a.container.cmp(&b.container),
            ProcCol::Traced => a.traced.cmp(&b.traced),
            ProcCol::Pool => a.pool.cmp(&b.pool),
            ProcCol::Host => a.host.cmp(&b.host),
            ProcCol::Mapped => a.mapped.cmp(&b.mapped),
            ProcCol::Nvml => a.nvml.cmp(&b.nvml),
            ProcCol::Coverage => f(a.coverage.unwrap_or(-1.0), b.coverage.unwrap_or(-1.0)),
            ProcCol::Rate => f(a.rate, b.rate),
            ProcCol::Peak => a.peak.cmp(&b.peak),
            ProcCol::Ooms => a.ooms.cmp(&b.ooms),
            ProcCol::HostFallbacks => a.host_fallbacks.cmp(&b.host_fallbacks),
        };
        let o = if desc { o.reverse() } else { o };
        // Ties in a stable order: a table whose rows swap on every tick cannot be read.
        o.then(a.proc.cmp(&b.proc))
    });
}
