//! What the service shows, kept in step with the Ledger by its change stream.
//!
//! The model decides nothing: an allocation started or ended (for whatever cause the Ledger
//! gave), changed class, a pool's held bytes changed, an OOM or a loss was noted — each
//! moves a sum here. Labels (command lines, containers, NVML devices) are read from the
//! Ledger's state when a response is made.

use std::collections::BTreeMap;

use crate::ledger::{Change, Class, Ledger, LiveAllocation, Oom, PoolId};

/// Bytes per class, indexed like [`Class::ALL`].
pub type ByClass = [u64; Class::ALL.len()];

fn slot(c: Class) -> usize {
    Class::ALL.iter().position(|&k| k == c).unwrap_or(0)
}

/// One traced process's live bytes.
#[derive(Clone, Debug, Default)]
pub struct ProcRow {
    /// Device bytes by CUDA ordinal (as the process numbers its GPUs) and class.
    pub device: BTreeMap<Option<i32>, ByClass>,
    /// Bytes each stream-ordered pool holds, with its device.
    pub pools: BTreeMap<PoolId, (Option<i32>, u64)>,
    /// Live host-RAM bytes (managed, pinned, registered, host-located VMM).
    pub host_bytes: u64,
    /// Live allocations.
    pub live: u64,
    /// The process exited.
    pub exited: bool,
    /// Allocations it started, out-of-memory failures, host-memory findings.
    pub started: u64,
    pub ooms: u64,
    pub host_findings: u64,
}

impl ProcRow {
    /// Live device bytes, every device.
    pub fn device_bytes(&self) -> u64 {
        self.device.values().flat_map(|c| c.iter()).sum()
    }

    /// Bytes its pools hold.
    pub fn pool_held_bytes(&self) -> u64 {
        self.pools.values().map(|(_, b)| b).sum()
    }
}

/// The service's sums, moved by the Ledger's changes.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// By `process` record id.
    pub procs: BTreeMap<u32, ProcRow>,
    /// Allocations started, by memory kind (`Mem::name`).
    pub allocations: BTreeMap<&'static str, u64>,
    /// Out-of-memory failures.
    pub ooms: u64,
    /// The latest, with its process.
    pub last_oom: Option<(u32, Box<Oom>)>,
    /// Host-memory findings.
    pub host_findings: u64,
    /// Events lost, stacks not captured.
    pub lost_events: u64,
    pub stack_failed: u64,
    /// Changes taken, to tell whether anything moved since a client last looked.
    pub version: u64,
}

impl Model {
    /// Moves the sums by what one record changed.
    pub fn take(&mut self, changes: &[Change]) {
        for ch in changes {
            self.version += 1;
            match ch {
                Change::Started { proc, alloc } => {
                    *self.allocations.entry(alloc.mem.name()).or_default() += 1;
                    self.procs.entry(*proc).or_default().started += 1;
                    self.book(*proc, alloc, alloc.class, true);
                }
                Change::Ended { proc, alloc, .. } => self.book(*proc, alloc, alloc.class, false),
                Change::Updated { proc, was, alloc } => {
                    self.book(*proc, alloc, *was, false);
                    self.book(*proc, alloc, alloc.class, true);
                }
                Change::PoolHeld {
                    proc,
                    pool,
                    device,
                    held,
                } => {
                    let row = self.procs.entry(*proc).or_default();
                    if *held == 0 {
                        row.pools.remove(pool);
                    } else {
                        row.pools.insert(*pool, (*device, *held));
                    }
                }
                Change::Oom { proc, oom } => {
                    self.ooms += 1;
                    self.procs.entry(*proc).or_default().ooms += 1;
                    self.last_oom = Some((*proc, oom.clone()));
                }
                Change::HostFinding { proc, .. } => {
                    self.host_findings += 1;
                    self.procs.entry(*proc).or_default().host_findings += 1;
                }
                Change::Exited { proc, .. } => {
                    let row = self.procs.entry(*proc).or_default();
                    row.exited = true;
                    row.pools.clear();
                }
                Change::Lost {
                    events,
                    stack_failed,
                } => {
                    self.lost_events += events;
                    self.stack_failed += stack_failed;
                }
                // Mapped, not owned: the owner's allocation carries the bytes; the importer
                // is listed (with what it maps, read from the Ledger) even with none of its own.
                Change::Imported { proc, .. } => {
                    self.procs.entry(*proc).or_default();
                }
                Change::Phase { .. } | Change::Anomaly { .. } | Change::ImportEnded { .. } => {}
            }
        }
    }

    fn book(&mut self, proc: u32, a: &LiveAllocation, class: Class, add: bool) {
        let row = self.procs.entry(proc).or_default();
        let move_by = |v: &mut u64| {
            *v = if add {
                v.saturating_add(a.bytes)
            } else {
                v.saturating_sub(a.bytes)
            }
        };
        if add {
            row.live += 1;
        } else {
            row.live = row.live.saturating_sub(1);
        }
        if a.mem.is_host() {
            move_by(&mut row.host_bytes);
        } else {
            let by = row.device.entry(a.device).or_default();
            move_by(&mut by[slot(class)]);
            if !add && by.iter().all(|&b| b == 0) {
                row.device.remove(&a.device);
            }
        }
    }

    /// Device bytes traced right now, every process and GPU (pool-held bytes apart).
    pub fn vram_bytes_used(&self) -> u64 {
        self.procs.values().map(ProcRow::device_bytes).sum()
    }

    /// Pool-held bytes, every process.
    pub fn pool_held_bytes(&self) -> u64 {
        self.procs.values().map(ProcRow::pool_held_bytes).sum()
    }

    /// Host-RAM bytes, every process.
    pub fn host_bytes(&self) -> u64 {
        self.procs.values().map(|p| p.host_bytes).sum()
    }

    /// Device bytes by GPU and class, and pool-held bytes by GPU, every process together;
    /// a process's CUDA ordinal becomes an NVML device where the Ledger can tell
    /// ([`Ledger::nvml_index`]).
    pub fn gpus(&self, ledger: &Ledger) -> BTreeMap<Gpu, GpuSums> {
        let mut out: BTreeMap<Gpu, GpuSums> = BTreeMap::new();
        for (&proc, row) in &self.procs {
            for (&dev, by) in &row.device {
                let g = out.entry(Gpu::of(ledger, proc, dev)).or_default();
                for (s, b) in g.device.iter_mut().zip(by) {
                    *s += b;
                }
            }
            for &(dev, held) in row.pools.values() {
                out.entry(Gpu::of(ledger, proc, dev)).or_default().pool_held += held;
            }
        }
        out
    }

    /// Running processes by live device and pool-held bytes, largest first.
    pub fn ranked(&self) -> Vec<(u32, &ProcRow)> {
        let mut v: Vec<(u32, &ProcRow)> = self
            .procs
            .iter()
            .filter(|(_, r)| !r.exited)
            .map(|(&p, r)| (p, r))
            .collect();
        v.sort_by_key(|(p, r)| {
            (
                std::cmp::Reverse(r.device_bytes() + r.pool_held_bytes() + r.host_bytes),
                *p,
            )
        });
        v
    }
}

/// A GPU as the service names it: the NVML device when the Ledger can tell which one a
/// process's CUDA ordinal is, else the ordinal, else unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gpu {
    Nvml(u32),
    Cuda(i32),
    Unknown,
}

impl Gpu {
    fn of(ledger: &Ledger, proc: u32, ordinal: Option<i32>) -> Gpu {
        match ordinal {
            None => Gpu::Unknown,
            Some(o) => ledger.nvml_index(proc, o).map_or(Gpu::Cuda(o), Gpu::Nvml),
        }
    }

    /// The label value: `0` (NVML index), `cuda0` (ordinal only), `unknown`.
    pub fn label(self) -> String {
        match self {
            Gpu::Nvml(i) => i.to_string(),
            Gpu::Cuda(o) => format!("cuda{o}"),
            Gpu::Unknown => "unknown".into(),
        }
    }
}

/// One GPU's traced bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuSums {
    pub device: ByClass,
    pub pool_held: u64,
}
