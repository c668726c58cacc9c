//! Memory shared between processes, across the processes of one Ledger: exports remembered
//! by the 64 bytes an importer is given (`CUipcMemHandle`, `CUmemPoolPtrExportData`), imports
//! matched to them and attributed to their owner, and the owner's allocation kept while
//! another process maps it.
//!
//! The rules (`docs/classification.md`, "Memory shared between processes"):
//!
//! - An import is mapped, not owned: it never counts in the importer's bytes or its device's
//!   (the owner's allocation already does).
//! - Closing it (`cuIpcCloseMemHandle`, `cuMemFree*` of an imported pool pointer, `cuMemUnmap`
//!   of an imported handle) ends the mapping, not the owner's allocation.
//! - An owner that frees its allocation while another traced process maps it gives it back
//!   when the last such mapping closes: the driver keeps the memory as long as it is mapped.

use foldhash::HashMap;

use super::Ledger;
use super::process::{HandleOwner, ImportedMapping, Owner, take_changes};
use crate::trace::{Call, Record};

/// One export: whose allocation the shared bytes name.
#[derive(Clone, Debug)]
struct Export {
    owner: Owner,
    bytes: u64,
    device: Option<i32>,
}

/// Exports by their shared bytes, and how many imported mappings each owner's allocation has
/// open.
#[derive(Clone, Debug, Default)]
pub(super) struct Shared {
    exports: HashMap<String, Export>,
    /// (owner's proc, allocation seq) → mappings open in other processes.
    open: HashMap<(u32, u64), u32>,
    /// (owner's proc, allocation seq) → the bytes it was exported with, to forget them when
    /// it ends: an import of an allocation that is gone names no owner.
    by_alloc: HashMap<(u32, u64), Vec<String>>,
    /// VMM handles exported as POSIX descriptors, by the open file the descriptor is
    /// (`Call::file`): the owner's process and handle. A descriptor passed to another
    /// process is the same open file there.
    files: HashMap<u64, (u32, u64)>,
}

impl Shared {
    /// Forgets the exports of the allocations that `changes` ended.
    pub(super) fn forget_ended(&mut self, changes: &[super::Change]) {
        if !self.files.is_empty() {
            for ch in changes {
                if let super::Change::Ended { proc, alloc, .. } = ch
                    && let Some(h) = alloc.handle
                {
                    self.files.retain(|_, owner| *owner != (*proc, h));
                }
            }
        }
        if self.by_alloc.is_empty() {
            return;
        }
        for ch in changes {
            if let super::Change::Ended { proc, alloc, .. } = ch
                && let Some(keys) = self.by_alloc.remove(&(*proc, alloc.seq()))
            {
                for k in keys {
                    self.exports.remove(&k);
                }
            }
        }
    }

    /// Whether a free by process `proc` at `addr` is about shared memory: an imported pool
    /// pointer of `proc`, or an allocation of `proc` that another process maps.
    pub(super) fn takes_free(&self, st: &super::ProcessState, c: &Call) -> bool {
        let Some(addr) = c.addr else {
            return false;
        };
        // Most traces share nothing: then no free looks its allocation up twice.
        st.is_import(addr)
            || (!self.open.is_empty()
                && st
                    .seq_at(addr)
                    .is_some_and(|seq| self.open.get(&(st.proc, seq)).is_some_and(|&n| n > 0)))
    }
}

impl Ledger {
    /// Applies a successful `export`, `import` or `import_close`, or a free that
    /// [`Shared::takes_free`] took.
    pub(super) fn apply_shared(&mut self, rec: &Record, c: &Call) {
        match rec {
            Record::Export(_) => self.on_export(c),
            Record::Import(_) => self.on_import(c),
            Record::ImportClose(_) => {
                let ended = self.procs.get_mut(&c.proc).and_then(|st| {
                    let m = st.close_import(c, c.ts_ns);
                    take_changes(&mut self.changes, &mut st.changes);
                    m
                });
                self.mapping_gone(ended, c.ts_ns);
            }
            Record::Free(_) => self.on_shared_free(c),
            _ => {}
        }
    }

    fn on_export(&mut self, c: &Call) {
        // A VMM handle exported as a descriptor: matched by the open file it is.
        if let (Some(file), Some(h)) = (c.file, c.handle) {
            if self
                .procs
                .get(&c.proc)
                .is_some_and(|st| st.export_of_handle(h).is_some())
            {
                self.shared.files.insert(file, (c.proc, h));
            }
            return;
        }
        // Other shareable handles (a pool's) name nothing an import is matched by: its
        // pointers are, by their export data.
        let (Some(share), Some(addr)) = (c.share.as_ref(), c.addr) else {
            return;
        };
        let Some(st) = self.procs.get_mut(&c.proc) else {
            return;
        };
        match st.export_of(addr) {
            Some((owner, bytes, device)) => {
                self.shared
                    .by_alloc
                    .entry((owner.proc, owner.seq))
                    .or_default()
                    .push(share.clone());
                self.shared.exports.insert(
                    share.clone(),
                    Export {
                        owner,
                        bytes,
                        device,
                    },
                );
            }
            None => {
                st.anomaly("export_outside_allocations", || {
                    format!("{} addr {addr:#x} at {} ns", c.api, c.ts_ns)
                });
                take_changes(&mut self.changes, &mut st.changes);
            }
        }
    }

    fn on_import(&mut self, c: &Call) {
        if c.share.is_none() && c.handle.is_some() {
            // A shareable handle: its `cuMemMap` is the mapping. Its owner is the exporter of
            // the same open file, another traced process.
            let owner = c
                .file
                .and_then(|f| self.shared.files.get(&f).copied())
                .filter(|&(proc, _)| proc != c.proc)
                .and_then(|(proc, handle)| {
                    let (owner, _, device) = self.procs.get(&proc)?.export_of_handle(handle)?;
                    Some(HandleOwner {
                        proc,
                        handle,
                        owner,
                        device,
                    })
                });
            let from = owner.as_ref().map(|o| (o.proc, o.handle));
            let Some(st) = self.procs.get_mut(&c.proc) else {
                return;
            };
            let new = st.on_import_handle(c, owner);
            take_changes(&mut self.changes, &mut st.changes);
            if new && let Some((proc, handle)) = from {
                // The importer holds a reference to the owner's memory until it releases it.
                if let Some(owner) = self.procs.get_mut(&proc) {
                    owner.importer_ref(&mut self.totals, handle, true, c.ts_ns);
                    take_changes(&mut self.changes, &mut owner.changes);
                }
            }
            return;
        }
        let Some(st) = self.procs.get_mut(&c.proc) else {
            return;
        };
        let export = c
            .share
            .as_ref()
            .and_then(|s| self.shared.exports.get(s))
            // A process does not import its own memory from itself as another's.
            .filter(|e| e.owner.proc != c.proc)
            .cloned();
        let mapping = match export {
            Some(e) => {
                let mut m = ImportedMapping::new(c, Some(e.bytes), e.device);
                m.owner = Some(e.owner);
                m
            }
            None => {
                let device = st.call_device(c);
                ImportedMapping::new(c, None, device)
            }
        };
        let owner = mapping.owner.as_ref().map(|o| (o.proc, o.seq));
        let new = st.on_import(mapping);
        take_changes(&mut self.changes, &mut st.changes);
        if new && let Some(key) = owner {
            *self.shared.open.entry(key).or_default() += 1;
        }
    }

    fn on_shared_free(&mut self, c: &Call) {
        let Some(addr) = c.addr else {
            return;
        };
        let Some(st) = self.procs.get_mut(&c.proc) else {
            return;
        };
        if st.is_import(addr) {
            // An imported pool pointer is freed by the importer: its mapping ends.
            let ended = st.end_import(addr, c.ts_ns);
            take_changes(&mut self.changes, &mut st.changes);
            self.mapping_gone(ended, c.ts_ns);
        } else {
            st.free_while_mapped(c, addr);
            take_changes(&mut self.changes, &mut st.changes);
        }
    }

    /// A mapping with an owner ended: one fewer open on the owner's allocation, which ends
    /// if its owner freed it and this was the last.
    fn mapping_gone(&mut self, ended: Option<ImportedMapping>, ts: u64) {
        let Some(owner) = ended.and_then(|m| m.owner) else {
            return;
        };
        let key = (owner.proc, owner.seq);
        let Some(n) = self.shared.open.get_mut(&key) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return;
        }
        self.shared.open.remove(&key);
        if let Some(st) = self.procs.get_mut(&owner.proc) {
            st.end_kept(&mut self.totals, owner.seq, ts);
            take_changes(&mut self.changes, &mut st.changes);
        }
    }

    /// Shareable handles process `proc` released for good (or held at its exit, `all`):
    /// their owners' memory loses those references, and goes when nothing else holds it.
    pub(super) fn imports_released(&mut self, proc: u32, all: bool, ts: u64) {
        let released = match self.procs.get_mut(&proc) {
            Some(st) => st.take_released_imports(all),
            None => return,
        };
        for (owner, handle) in released {
            if let Some(o) = self.procs.get_mut(&owner) {
                o.importer_ref(&mut self.totals, handle, false, ts);
                take_changes(&mut self.changes, &mut o.changes);
            }
        }
    }

    /// Process `proc` exits: its mappings end (and with them what owners kept for them), its
    /// exports are forgotten.
    pub(super) fn shared_exit(&mut self, proc: u32, ts: u64) {
        let ended = match self.procs.get_mut(&proc) {
            Some(st) => {
                let ended = st.end_all_imports(ts);
                take_changes(&mut self.changes, &mut st.changes);
                ended
            }
            None => Vec::new(),
        };
        for m in ended {
            self.mapping_gone(Some(m), ts);
        }
        self.imports_released(proc, true, ts);
        self.shared.files.retain(|_, &mut (p, _)| p != proc);
        self.shared.exports.retain(|_, e| e.owner.proc != proc);
        self.shared.open.retain(|&(p, _), _| p != proc);
        self.shared.by_alloc.retain(|&(p, _), _| p != proc);
    }
}
