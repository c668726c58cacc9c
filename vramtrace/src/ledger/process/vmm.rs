//! Virtual memory management: handles, their mappings, and reserved address space.

use std::sync::Arc;

use super::{LiveAllocation, ProcessState, class_of, describe};
use crate::ledger::change::EndCause;
use crate::ledger::classify::AllocRef;
use crate::ledger::usage::Totals;
use crate::trace::{Call, Mem};

#[derive(Clone, Debug)]
pub(super) struct VmmHandle {
    pub(super) alloc: Arc<LiveAllocation>,
    pub(super) released: bool,
    pub(super) mappings: u32,
    /// References from `cuMemRetainAllocationHandle` not released yet.
    pub(super) retains: u32,
    /// Bindings to multicast objects: each keeps the memory as a mapping does.
    pub(super) binds: u32,
    /// Shareable handles of it that other traced processes imported and still hold.
    pub(super) importers: u32,
}

impl VmmHandle {
    /// Released, neither mapped nor bound, and no other process holds it: its memory goes.
    pub(super) fn unheld(&self) -> bool {
        self.released && self.mappings == 0 && self.binds == 0 && self.importers == 0
    }
}

#[derive(Clone, Debug)]
pub(super) struct Mapping {
    pub(super) bytes: u64,
    pub(super) handle: u64,
    /// Whether the mapping was counted on its handle (the handle was live when mapped).
    pub(super) counted: bool,
}

impl ProcessState {
    /// Frees a VMM handle's physical memory (released and no longer mapped, or replaced).
    pub(super) fn drop_handle(&mut self, t: &mut Totals, h: u64, cause: EndCause, ts: u64) {
        if let Some(v) = self.vmm.remove(&h) {
            self.release(t, v.alloc, cause, ts);
        }
    }

    pub(crate) fn on_vmm_create(&mut self, t: &mut Totals, c: &Call) {
        let mem = match c.mem {
            Some(m @ (Mem::VmmDevice | Mem::VmmHost)) => m,
            _ => {
                self.anomaly("vmm_create_without_location", || describe(c));
                Mem::VmmDevice
            }
        };
        let bytes = c.bytes.unwrap_or_else(|| {
            self.anomaly("alloc_without_size", || describe(c));
            0
        });
        self.count_alloc(&c.api, bytes);
        let Some(h) = c.handle else {
            self.anomaly("alloc_without_handle", || describe(c));
            return;
        };
        if self.vmm.contains_key(&h) {
            self.anomaly("alloc_over_live", || describe(c));
            for m in self.mappings.values_mut() {
                if m.handle == h {
                    m.counted = false;
                }
            }
            self.drop_handle(t, h, EndCause::Replaced, c.ts_ns);
        }
        let mut a = self.new_alloc(c, mem, bytes);
        a.addr = None;
        if mem.is_host() {
            self.note_host_finding(c, mem, bytes);
        }
        self.classify_new(&mut a, AllocRef::Vmm(h));
        self.book_add(t, a.device, class_of(mem), bytes, c.ts_ns);
        let a = Arc::new(a);
        self.started(&a);
        self.vmm.insert(
            h,
            VmmHandle {
                alloc: a,
                released: false,
                mappings: 0,
                retains: 0,
                binds: 0,
                importers: 0,
            },
        );
    }

    pub(crate) fn on_vmm_release(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.handle else {
            self.count_free(&c.api, 1, 0);
            self.anomaly("free_without_handle", || describe(c));
            return;
        };
        if self.release_imported(h) || self.release_multicast(t, c, h) {
            self.count_free(&c.api, 1, 0);
            return;
        }
        let (bytes, unmapped) = match self.vmm.get_mut(&h) {
            Some(v) if v.retains > 0 => {
                // A reference that cuMemRetainAllocationHandle took.
                v.retains -= 1;
                self.count_free(&c.api, 1, 0);
                return;
            }
            Some(v) if !v.released => {
                v.released = true;
                (v.alloc.bytes, v.unheld())
            }
            Some(_) => {
                self.count_free(&c.api, 1, 0);
                self.anomaly("double_release", || describe(c));
                return;
            }
            None => {
                self.count_free(&c.api, 1, 0);
                self.anomaly("free_unknown_handle", || describe(c));
                return;
            }
        };
        self.count_free(&c.api, 1, bytes);
        if unmapped {
            self.drop_handle(t, h, EndCause::VmmRelease, c.ts_ns);
        }
    }

    fn unmap_at(&mut self, t: &mut Totals, addr: u64, ts: u64) {
        let Some(m) = self.mappings.remove(&addr) else {
            return;
        };
        if !m.counted {
            self.unmap_multicast(t, m.handle, ts);
            return;
        }
        let Some(v) = self.vmm.get_mut(&m.handle) else {
            return;
        };
        v.mappings = v.mappings.saturating_sub(1);
        if v.unheld() {
            self.drop_handle(t, m.handle, EndCause::VmmRelease, ts);
        } else if v.alloc.addr == Some(addr) {
            Arc::make_mut(&mut v.alloc).addr = None;
            Self::updated(&mut self.changes, self.proc, v.alloc.class, &v.alloc);
        }
    }

    pub(crate) fn on_vmm_map(&mut self, t: &mut Totals, c: &Call) {
        let (Some(addr), Some(h)) = (c.addr, c.handle) else {
            self.anomaly("map_without_address_or_handle", || describe(c));
            return;
        };
        if self.map_imported(c, h) {
            return;
        }
        if self.mappings.contains_key(&addr) {
            self.anomaly("map_over_mapping", || describe(c));
            self.unmap_at(t, addr, c.ts_ns);
        }
        let counted = match self.vmm.get_mut(&h) {
            Some(v) if !v.released => {
                v.mappings += 1;
                if v.alloc.addr.is_none() {
                    Arc::make_mut(&mut v.alloc).addr = Some(addr);
                    Self::updated(&mut self.changes, self.proc, v.alloc.class, &v.alloc);
                }
                true
            }
            _ => {
                // A multicast object's memory is that of the handles bound to it.
                if !self.map_multicast(h) {
                    self.anomaly("map_unknown_handle", || describe(c));
                }
                false
            }
        };
        let bytes = c
            .bytes
            .or_else(|| self.vmm.get(&h).map(|v| v.alloc.bytes))
            .unwrap_or(0);
        self.mappings.insert(
            addr,
            Mapping {
                bytes,
                handle: h,
                counted,
            },
        );
    }

    pub(crate) fn on_vmm_unmap(&mut self, t: &mut Totals, c: &Call) {
        let Some(addr) = c.addr else {
            self.anomaly("unmap_without_address", || describe(c));
            return;
        };
        // One call may cover several mappings (a range mapped handle by handle).
        let end = addr.saturating_add(c.bytes.unwrap_or(1).max(1));
        let imported: Vec<u64> = self.imports.range(addr..end).map(|(&a, _)| a).collect();
        for a in &imported {
            self.end_import(*a, c.ts_ns);
        }
        let starts: Vec<u64> = self.mappings.range(addr..end).map(|(&a, _)| a).collect();
        if starts.is_empty() && imported.is_empty() {
            self.anomaly("unmap_unknown_range", || describe(c));
            return;
        }
        for a in starts {
            self.unmap_at(t, a, c.ts_ns);
        }
    }

    /// The VMM handle mapped at `addr` (counted by the Ledger), if any.
    pub(super) fn handle_mapped_at(&self, addr: u64) -> Option<u64> {
        let (&start, m) = self.mappings.range(..=addr).next_back()?;
        (addr < start.saturating_add(m.bytes) && m.counted).then_some(m.handle)
    }

    pub(crate) fn on_reserve(&mut self, c: &Call) {
        let (Some(addr), Some(bytes)) = (c.addr, c.bytes) else {
            self.anomaly("reserve_without_range", || describe(c));
            return;
        };
        if self.reserved.insert(addr, bytes).is_some() {
            self.anomaly("reserve_over_reserved", || describe(c));
        }
    }

    pub(crate) fn on_unreserve(&mut self, c: &Call) {
        let removed = c.addr.and_then(|a| self.reserved.remove(&a));
        if removed.is_none() {
            self.anomaly("unreserve_unknown_range", || describe(c));
        }
    }
}
