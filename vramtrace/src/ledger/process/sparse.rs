//! Sparse and deferred-mapping arrays (`CUDA_ARRAY3D_SPARSE`, `CUDA_ARRAY3D_DEFERRED_MAPPING`):
//! an array made so has no memory of its own; `cuMemMapArrayAsync` maps memory of
//! `cuMemCreate` handles into its regions (`array_map`), booked on those handles, and each
//! mapping keeps its handle's memory, as a mapping into an address range does, until a region
//! covering it is unmapped (`array_unmap`) or the array is destroyed.

use std::collections::BTreeMap;

use super::{ProcessState, describe};
use crate::ledger::usage::Totals;
use crate::trace::{ArrayRegion, Call};

/// `CUDA_ARRAY3D_SPARSE` and `CUDA_ARRAY3D_DEFERRED_MAPPING`.
const NO_MEMORY_OF_ITS_OWN: u64 = 0x40 | 0x80;

/// The mapped regions of one process's arrays: (array, region) → the VMM handle whose
/// memory is there, when the Ledger knows it.
pub(super) type ArrayMaps = BTreeMap<(u64, ArrayRegion), Option<u64>>;

/// Whether an array made by `c` has no memory until regions are mapped into it.
pub(super) fn sparse(c: &Call) -> bool {
    c.flags.is_some_and(|f| f & NO_MEMORY_OF_ITS_OWN != 0)
}

impl ProcessState {
    pub(crate) fn on_array_map(&mut self, t: &mut Totals, c: &Call) {
        self.array_ops_unread(c);
        let (Some(array), Some(region), Some(bound)) = (c.handle, c.region.as_deref(), &c.bound)
        else {
            self.anomaly("array_map_unreadable", || describe(c));
            return;
        };
        let handle = Some(bound.handle).filter(|h| self.vmm.get(h).is_some_and(|v| !v.released));
        if handle.is_none() {
            self.anomaly("map_unknown_handle", || describe(c));
        }
        let key = (array, *region);
        if let Some(old) = self.array_maps.remove(&key) {
            self.anomaly("map_over_mapping", || describe(c));
            if let Some(h) = old {
                self.unbind_handle(t, h, c.ts_ns);
            }
        }
        if let Some(v) = handle.and_then(|h| self.vmm.get_mut(&h)) {
            v.binds += 1;
        }
        self.array_maps.insert(key, handle);
    }

    pub(crate) fn on_array_unmap(&mut self, t: &mut Totals, c: &Call) {
        self.array_ops_unread(c);
        let (Some(array), Some(region)) = (c.handle, c.region.as_deref()) else {
            self.anomaly("array_map_unreadable", || describe(c));
            return;
        };
        let gone: Vec<(u64, ArrayRegion)> = self
            .array_maps
            .range((array, ArrayRegion::MIN)..=(array, ArrayRegion::MAX))
            .filter(|((_, r), _)| r.inside(region))
            .map(|(k, _)| *k)
            .collect();
        if gone.is_empty() {
            self.anomaly("unmap_unknown_range", || describe(c));
        }
        for k in gone {
            if let Some(Some(h)) = self.array_maps.remove(&k) {
                self.unbind_handle(t, h, c.ts_ns);
            }
        }
    }

    /// The array `array` is gone: what was mapped into it is let go.
    pub(super) fn array_maps_gone(&mut self, t: &mut Totals, array: u64, ts: u64) {
        if self.array_maps.is_empty() {
            return;
        }
        let gone: Vec<(u64, ArrayRegion)> = self
            .array_maps
            .range((array, ArrayRegion::MIN)..=(array, ArrayRegion::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(Some(h)) = self.array_maps.remove(&k) {
                self.unbind_handle(t, h, ts);
            }
        }
    }

    /// A call of several operations, of which the probe read the first: said, since what
    /// the others mapped or unmapped is not booked.
    fn array_ops_unread(&mut self, c: &Call) {
        if let Some(n) = c.count.filter(|&n| n > 1) {
            self.anomaly("array_maps_unread", || {
                format!("{}: 1 of {n} operations read", describe(c))
            });
        }
    }
}
