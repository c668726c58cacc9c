//! Multicast objects (`cuMulticastCreate`): a handle with a size and a team of devices, and no
//! memory of its own. What is bound to it (`cuMulticastBindMem*`, `cuMulticastBindAddr*`) is
//! memory of `cuMemCreate` handles, booked on those handles; a binding keeps that memory
//! until it is unbound or the object goes, as a mapping does. The object is mapped and
//! released like a VMM handle, and goes once released and unmapped, its bindings with it.

use std::collections::BTreeMap;

use super::{ProcessState, describe};
use crate::ledger::change::EndCause;
use crate::ledger::usage::Totals;
use crate::trace::Call;

#[derive(Clone, Debug, Default)]
pub(super) struct Multicast {
    released: bool,
    mappings: u32,
    /// By (device, offset in the object): the VMM handle whose memory is bound there, when
    /// the Ledger knows it (memory made before tracing began, or stream-ordered memory bound
    /// by address, is not booked on a handle).
    bound: BTreeMap<(Option<i32>, u64), Option<u64>>,
}

impl ProcessState {
    pub(crate) fn on_multicast_create(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.handle else {
            self.anomaly("alloc_without_handle", || describe(c));
            return;
        };
        if self.multicast.contains_key(&h) {
            self.anomaly("alloc_over_live", || describe(c));
            self.drop_multicast(t, h, c.ts_ns);
        }
        self.multicast.insert(h, Multicast::default());
    }

    pub(crate) fn on_multicast_bind(&mut self, t: &mut Totals, c: &Call) {
        let (Some(mc), Some(offset)) = (c.handle, c.offset) else {
            self.anomaly("bind_without_object", || describe(c));
            return;
        };
        if !self.multicast.contains_key(&mc) {
            // Made before tracing began: its bindings are still followed from here.
            self.anomaly("bind_unknown_multicast", || describe(c));
        }
        let handle = match (&c.bound, c.addr) {
            (Some(b), _) => Some(b.handle),
            (None, Some(addr)) => self.handle_mapped_at(addr),
            (None, None) => None,
        }
        .filter(|h| self.vmm.get(h).is_some_and(|v| !v.released));
        let device = c
            .device
            .or_else(|| handle.and_then(|h| self.vmm.get(&h)?.alloc.device));
        let key = (device, offset);
        if self
            .multicast
            .get(&mc)
            .is_some_and(|m| m.bound.contains_key(&key))
        {
            self.anomaly("bind_over_binding", || describe(c));
            self.unbind(t, mc, key, c.ts_ns);
        }
        if let Some(v) = handle.and_then(|h| self.vmm.get_mut(&h)) {
            v.binds += 1;
        }
        self.multicast
            .entry(mc)
            .or_default()
            .bound
            .insert(key, handle);
    }

    pub(crate) fn on_multicast_unbind(&mut self, t: &mut Totals, c: &Call) {
        let (Some(mc), Some(offset)) = (c.handle, c.offset) else {
            self.anomaly("unbind_without_object", || describe(c));
            return;
        };
        let key = (c.device, offset);
        if !self.unbind(t, mc, key, c.ts_ns) {
            self.anomaly("unbind_unknown_binding", || describe(c));
        }
    }

    /// Removes the binding `key` of object `mc`: its memory may go. Whether there was one.
    fn unbind(&mut self, t: &mut Totals, mc: u64, key: (Option<i32>, u64), ts: u64) -> bool {
        let Some(handle) = self
            .multicast
            .get_mut(&mc)
            .and_then(|m| m.bound.remove(&key))
        else {
            return false;
        };
        if let Some(h) = handle {
            self.unbind_handle(t, h, ts);
        }
        true
    }

    /// One binding of VMM handle `h` (to a multicast object, or a sparse array's region) is
    /// gone.
    pub(super) fn unbind_handle(&mut self, t: &mut Totals, h: u64, ts: u64) {
        let Some(v) = self.vmm.get_mut(&h) else {
            return;
        };
        v.binds = v.binds.saturating_sub(1);
        if v.unheld() {
            self.drop_handle(t, h, EndCause::VmmRelease, ts);
        }
    }

    /// `cuMemRelease` of a multicast object: whether `h` is one.
    pub(super) fn release_multicast(&mut self, t: &mut Totals, c: &Call, h: u64) -> bool {
        let Some(m) = self.multicast.get_mut(&h) else {
            return false;
        };
        if m.released {
            self.anomaly("double_release", || describe(c));
            return true;
        }
        m.released = true;
        if m.mappings == 0 {
            self.drop_multicast(t, h, c.ts_ns);
        }
        true
    }

    /// `cuMemMap` of a multicast object: whether `h` is one.
    pub(super) fn map_multicast(&mut self, h: u64) -> bool {
        match self.multicast.get_mut(&h) {
            Some(m) if !m.released => {
                m.mappings += 1;
                true
            }
            _ => false,
        }
    }

    /// A mapping of `h` (a multicast object, or a handle the Ledger did not count) is gone.
    pub(super) fn unmap_multicast(&mut self, t: &mut Totals, h: u64, ts: u64) {
        let Some(m) = self.multicast.get_mut(&h) else {
            return;
        };
        m.mappings = m.mappings.saturating_sub(1);
        if m.released && m.mappings == 0 {
            self.drop_multicast(t, h, ts);
        }
    }

    /// The object goes, and its bindings with it.
    fn drop_multicast(&mut self, t: &mut Totals, h: u64, ts: u64) {
        if let Some(m) = self.multicast.remove(&h) {
            for handle in m.bound.into_values().flatten() {
                self.unbind_handle(t, handle, ts);
            }
        }
    }
}
