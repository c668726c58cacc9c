//! Memory of another process mapped into this one (IPC handles, pool pointer imports,
//! shareable-handle imports): mapped, not owned. An import is never booked in the process's
//! or its device's bytes; the exporting process holds them (`docs/classification.md`,
//! "Memory shared between processes").

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LiveAllocation, ProcessState, describe};
use crate::ledger::change::Change;
use crate::trace::{ApiName, Call};

/// How many ended imports a process keeps for its report; the rest are counted.
const IMPORTS_KEPT: usize = 256;

/// The process and allocation that an imported mapping's memory belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its `process` record id.
    pub proc: u32,
    /// Its process id.
    pub pid: u32,
    /// The allocation's [`LiveAllocation::seq`](super::LiveAllocation::seq) in that process.
    pub seq: u64,
    /// The allocation's address in that process.
    pub addr: Option<u64>,
    /// The entry point that made it.
    pub api: String,
}

/// A mapping of memory that another process allocated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedMapping {
    /// Where it is mapped in this process (none for a shareable handle not mapped yet).
    pub addr: Option<u64>,
    /// The VMM handle a shareable-handle import gave this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// Its size: the owner's allocation, or what `cuMemMap` mapped; 0 when not known.
    pub bytes: u64,
    /// The size is not known (the owner was not traced).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub size_unknown: bool,
    /// The entry point that imported it (`cuIpcOpenMemHandle_v2`, `cuMemPoolImportPointer`,
    /// `cuMemImportFromShareableHandle`, whose handle a `cuMemMap` mapped).
    pub api: String,
    /// When it was mapped.
    pub ts_ns: u64,
    /// When it was closed, unmapped or freed, once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ts_ns: Option<u64>,
    /// The thread that mapped it.
    pub tid: u32,
    /// Id of the stack that mapped it.
    #[serde(rename = "stack_id", default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<u32>,
    /// The device it is on: the owner's allocation's, else the importing thread's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<i32>,
    /// Who owns the memory, when the exporter was traced and its export matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Opens of the same handle not yet closed (the driver counts them).
    #[serde(skip)]
    pub(crate) opens: u32,
}

impl ImportedMapping {
    /// A new mapping made by call `c` of `bytes` (0 and unknown when `None`).
    pub(crate) fn new(c: &Call, bytes: Option<u64>, device: Option<i32>) -> Self {
        ImportedMapping {
            addr: c.addr,
            handle: None,
            bytes: bytes.unwrap_or(0),
            size_unknown: bytes.is_none(),
            api: c.api.to_string(),
            ts_ns: c.ts_ns,
            end_ts_ns: None,
            tid: c.tid,
            stack: c.stack,
            device,
            owner: None,
            opens: 1,
        }
    }

    /// "mapped from PID N", or "from an untraced process"; a shareable handle's owner is
    /// not identified when its descriptor could not be matched to an export (the exporter
    /// was not traced, or the kernel's offsets to find the open file were unknown).
    pub fn source(&self) -> String {
        match (&self.owner, self.handle) {
            (Some(o), _) => format!("mapped from PID {}", o.pid),
            (None, Some(_)) => {
                "from another process, by shareable handle (owner not identified)".into()
            }
            (None, None) => "from an untraced process".into(),
        }
    }
}

/// A shareable handle imported and not released yet: what `cuMemMap` of it maps is imported.
#[derive(Clone, Debug)]
pub(super) struct ImportedHandle {
    pub(super) refs: u32,
    /// The entry point that imported it.
    pub(super) api: ApiName,
    /// Whose memory it is, when the exporter is traced and its descriptor was matched.
    pub(super) owner: Option<HandleOwner>,
}

/// The exporting side of an imported shareable handle: the process, its VMM handle, and the
/// allocation as an [`Owner`].
#[derive(Clone, Debug)]
pub(crate) struct HandleOwner {
    pub(crate) proc: u32,
    pub(crate) handle: u64,
    pub(crate) owner: Owner,
    pub(crate) device: Option<i32>,
}

impl ProcessState {
    /// Imported mappings open now, by address.
    pub fn imports(&self) -> impl Iterator<Item = &ImportedMapping> + '_ {
        self.imports.values()
    }

    /// Bytes of other processes' memory mapped here now (never in this process's figures).
    pub fn imported_bytes(&self) -> u64 {
        self.imports
            .values()
            .fold(0u64, |t, m| t.saturating_add(m.bytes))
    }

    /// Whether `addr` is an imported mapping.
    pub(crate) fn is_import(&self, addr: u64) -> bool {
        self.imports.contains_key(&addr)
    }

    /// Maps `m`: a second open of the same address counts one more open.
    pub(crate) fn on_import(&mut self, m: ImportedMapping) -> bool {
        let Some(addr) = m.addr else {
            return false;
        };
        if let Some(open) = self.imports.get_mut(&addr) {
            open.opens += 1;
            return false;
        }
        self.changes.push(Change::Imported {
            proc: self.proc,
            mapping: Arc::new(m.clone()),
        });
        self.imports.insert(addr, m);
        true
    }

    /// Closes one open of the mapping at `addr`; the mapping when that was its last.
    pub(crate) fn close_import(&mut self, c: &Call, ts: u64) -> Option<ImportedMapping> {
        let Some(addr) = c.addr else {
            self.anomaly("close_without_address", || describe(c));
            return None;
        };
        let Some(m) = self.imports.get_mut(&addr) else {
            self.anomaly("close_unknown_mapping", || describe(c));
            return None;
        };
        m.opens = m.opens.saturating_sub(1);
        if m.opens > 0 {
            return None;
        }
        self.end_import(addr, ts)
    }

    /// Ends the mapping at `addr` whatever its opens (an unmap, the process's exit).
    pub(crate) fn end_import(&mut self, addr: u64, ts: u64) -> Option<ImportedMapping> {
        let mut m = self.imports.remove(&addr)?;
        m.end_ts_ns = Some(ts);
        self.changes.push(Change::ImportEnded {
            proc: self.proc,
            mapping: Arc::new(m.clone()),
            ts_ns: ts,
        });
        self.imports_total += 1;
        if self.imports_ended.len() < IMPORTS_KEPT {
            self.imports_ended.push(m.clone());
        }
        Some(m)
    }

    /// Every mapping open now, ended (the process exits).
    pub(crate) fn end_all_imports(&mut self, ts: u64) -> Vec<ImportedMapping> {
        let addrs: Vec<u64> = self.imports.keys().copied().collect();
        addrs
            .into_iter()
            .filter_map(|a| self.end_import(a, ts))
            .collect()
    }

    /// Every import this process made, ended ones (the first few hundred) first.
    pub fn imports_made(&self) -> impl Iterator<Item = &ImportedMapping> + '_ {
        self.imports_ended.iter().chain(self.imports.values())
    }

    /// A shareable handle imported (`cuMemImportFromShareableHandle`) from `owner`, when it
    /// is known: its mappings are imports. Whether the handle is new here (a second import of
    /// the same handle is one more reference to it).
    pub(crate) fn on_import_handle(&mut self, c: &Call, owner: Option<HandleOwner>) -> bool {
        let Some(h) = c.handle else {
            self.anomaly("import_without_handle", || describe(c));
            return false;
        };
        let new = !self.imported_handles.contains_key(&h);
        self.imported_handles
            .entry(h)
            .or_insert_with(|| ImportedHandle {
                refs: 0,
                api: c.api.clone(),
                owner,
            })
            .refs += 1;
        new
    }

    /// The owners of the imported handles this process released for good (or held at its
    /// exit, `all`): each lets go of its reference to their memory.
    pub(crate) fn take_released_imports(&mut self, all: bool) -> Vec<(u32, u64)> {
        if all {
            for (_, ih) in self.imported_handles.drain() {
                if let Some(o) = ih.owner {
                    self.imports_released.push((o.proc, o.handle));
                }
            }
        }
        std::mem::take(&mut self.imports_released)
    }

    /// `cuMemMap` of an imported handle: an imported mapping of the bytes it maps. Whether
    /// the handle was one.
    pub(super) fn map_imported(&mut self, c: &Call, h: u64) -> bool {
        let Some(api) = self.imported_handles.get(&h).map(|i| i.api.to_string()) else {
            return false;
        };
        let owner = self.imported_handles.get(&h).and_then(|i| i.owner.clone());
        let device = match &owner {
            Some(o) => o.device,
            None => self.call_device(c),
        };
        let mut m = ImportedMapping::new(c, c.bytes, device);
        // Named by the import; the mapping is the cuMemMap.
        m.api = api;
        m.handle = Some(h);
        m.owner = owner.map(|o| o.owner);
        self.on_import(m);
        true
    }

    /// `cuMemRelease` of an imported handle: one reference fewer. Whether it was one.
    pub(super) fn release_imported(&mut self, h: u64) -> bool {
        let Some(ih) = self.imported_handles.get_mut(&h) else {
            return false;
        };
        ih.refs = ih.refs.saturating_sub(1);
        if ih.refs == 0
            && let Some(o) = self.imported_handles.remove(&h).and_then(|i| i.owner)
        {
            // The exporter's memory loses this reference: the Ledger tells its owner.
            self.imports_released.push((o.proc, o.handle));
        }
        true
    }

    /// `cuMemRetainAllocationHandle`: one more reference to a handle of this process, made
    /// or imported, that `cuMemRelease` gives back.
    pub(crate) fn on_retain(&mut self, c: &Call) {
        let Some(h) = c.handle else {
            self.anomaly("retain_without_handle", || describe(c));
            return;
        };
        if let Some(v) = self.vmm.get_mut(&h) {
            v.retains += 1;
        } else if let Some(ih) = self.imported_handles.get_mut(&h) {
            ih.refs += 1;
        } else {
            self.anomaly("retain_unknown_handle", || describe(c));
        }
    }

    /// The owner's side: the live allocation that `addr` lies in, as an [`Owner`] with its
    /// size and device, for an export.
    pub(crate) fn export_of(&self, addr: u64) -> Option<(Owner, u64, Option<i32>)> {
        let (&start, a) = self.by_addr.range(..=addr).next_back()?;
        if addr >= start.saturating_add(a.bytes.max(1)) || a.mem.is_host() {
            return None;
        }
        Some(self.exported(a, Some(start)))
    }

    /// The owner's side of a shareable handle: its live VMM handle `h` as an [`Owner`], with
    /// its bytes and device.
    pub(crate) fn export_of_handle(&self, h: u64) -> Option<(Owner, u64, Option<i32>)> {
        let v = self.vmm.get(&h).filter(|v| !v.released)?;
        Some(self.exported(&v.alloc, v.alloc.addr))
    }

    /// Live allocation `a` of this process, where it is at `addr`, as another process's
    /// import names it: the [`Owner`], its bytes and device.
    fn exported(&self, a: &LiveAllocation, addr: Option<u64>) -> (Owner, u64, Option<i32>) {
        (
            Owner {
                proc: self.proc,
                pid: self.pid,
                seq: a.seq,
                addr,
                api: a.api.to_string(),
            },
            a.bytes,
            a.device,
        )
    }

    /// Another process took (`up`) or let go of a reference to VMM handle `h` through a
    /// shareable handle it imported: the memory stays while one is held, as the driver keeps
    /// it for "all outstanding references to the handle (including its shareable
    /// counterparts)".
    pub(crate) fn importer_ref(
        &mut self,
        t: &mut crate::ledger::usage::Totals,
        h: u64,
        up: bool,
        ts: u64,
    ) {
        let Some(v) = self.vmm.get_mut(&h) else {
            return;
        };
        if up {
            v.importers += 1;
            return;
        }
        v.importers = v.importers.saturating_sub(1);
        if v.unheld() {
            self.drop_handle(t, h, crate::ledger::EndCause::VmmRelease, ts);
        }
    }

    /// The sequence number of the live allocation at `addr` (exactly), if any.
    pub(crate) fn seq_at(&self, addr: u64) -> Option<u64> {
        self.by_addr.get(&addr).map(|a| a.seq)
    }

    /// The owner freed an allocation that another process still maps: the driver keeps its
    /// memory until the last mapping closes, so it stays booked here, marked, until then.
    pub(crate) fn free_while_mapped(&mut self, c: &Call, addr: u64) {
        let Some(a) = self.by_addr.get_mut(&addr) else {
            return;
        };
        if a.kept_by_importers {
            self.anomaly("double_free", || describe(c));
            return;
        }
        let was = a.class;
        Arc::make_mut(a).kept_by_importers = true;
        let bytes = a.bytes;
        Self::updated(&mut self.changes, self.proc, was, a);
        self.frees.add(&c.api, 1, bytes);
    }

    /// The last mapping of an allocation its owner freed closed: it ends now.
    pub(crate) fn end_kept(&mut self, t: &mut crate::ledger::usage::Totals, seq: u64, ts: u64) {
        let Some(addr) = self
            .by_addr
            .iter()
            .find(|(_, a)| a.seq == seq && a.kept_by_importers)
            .map(|(&k, _)| k)
        else {
            return;
        };
        if let Some(a) = self.by_addr.remove(&addr) {
            self.release(t, a, crate::ledger::EndCause::Free, ts);
            self.freed.insert(addr);
        }
    }
}
