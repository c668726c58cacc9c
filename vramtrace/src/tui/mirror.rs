//! The view's copy of every process's live allocations, as rows, kept in step with the
//! Ledger record by record, with the sums the process and GPU tables show.
//!
//! The mirror decides nothing: after each record it takes the Ledger's change stream
//! (an allocation started, ended for whatever cause, or changed class, fill or mapping) and
//! moves its rows and sums with it.

use std::collections::{BTreeMap, HashMap};

use super::{
    app::{AllocRow, Slot},
    class::{ViewClass, class_of},
};
use crate::{
    ledger::{Change as LedgerChange, Ledger, LiveAllocation},
    trace::Mem,
};

/// A row that changed in the process the view lists: what it was, what it is now.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub old: Option<AllocRow>,
    pub new: Option<AllocRow>,
}

/// Entry point names, each stored once; rows refer to them by index.
#[derive(Clone, Debug, Default)]
pub struct Apis {
    names: Vec<String>,
    index: HashMap<String, u16>,
    /// Most allocations of a process come from one or two entry points: tried before hashing.
    last: Option<u16>,
}

impl Apis {
    pub fn name(&self, i: u16) -> &str {
        self.names.get(usize::from(i)).map_or("?", String::as_str)
    }

    fn intern(&mut self, api: &str) -> u16 {
        if let Some(i) = self.last
            && self.name(i) == api
        {
            return i;
        }
        let i = match self.index.get(api) {
            Some(i) => *i,
            None => {
                let i = u16::try_from(self.names.len()).unwrap_or(u16::MAX);
                self.names.push(api.to_owned());
                self.index.insert(api.to_owned(), i);
                i
            }
        };
        self.last = Some(i);
        i
    }

    /// The row that shows `a`.
    pub fn row(&mut self, a: &LiveAllocation) -> AllocRow {
        AllocRow {
            slot: slot_of(a),
            addr: a.addr,
            handle: a.handle,
            bytes: a.bytes,
            api: self.intern(&a.api),
            class: class_of(a),
            mem: a.mem,
            ts_ns: a.ts_ns,
            tid: a.tid,
            stack: a.stack,
            device: a.device,
            filled_from_host: a.filled_from_host,
        }
    }
}

/// Where the Ledger keeps a live allocation: by address, or a CUDA array's or VMM handle.
pub fn slot_of(a: &LiveAllocation) -> Slot {
    match a.mem {
        Mem::Array => Slot::Array(a.handle.unwrap_or(0)),
        Mem::VmmDevice | Mem::VmmHost => Slot::Vmm(a.handle.unwrap_or(0)),
        _ => Slot::Addr(a.addr.unwrap_or(0)),
    }
}

/// Byte sums are kept wide: added and taken away as rows come and go, and saturated to
/// `u64` only when read, they equal the saturating sum over the live rows.
type Sums = [u128; ViewClass::ALL.len()];

fn saturate(s: &Sums) -> [u64; ViewClass::ALL.len()] {
    s.map(|v| u64::try_from(v).unwrap_or(u64::MAX))
}

/// One process's rows and sums.
#[derive(Clone, Debug, Default)]
pub struct ProcRows {
    rows: BTreeMap<Slot, AllocRow>,
    by_class: Sums,
    /// Rows in device memory per device: how many, and their bytes per class.
    by_device: BTreeMap<Option<i32>, (usize, Sums)>,
}

impl ProcRows {
    fn count(&mut self, r: &AllocRow, add: bool) {
        let b = u128::from(r.bytes);
        let i = r.class.index();
        if add {
            self.by_class[i] += b;
        } else {
            self.by_class[i] -= b;
        }
        if r.mem.is_host() {
            return;
        }
        let d = self.by_device.entry(r.device).or_default();
        if add {
            d.0 += 1;
            d.1[i] += b;
        } else {
            d.0 -= 1;
            d.1[i] -= b;
            if d.0 == 0 {
                self.by_device.remove(&r.device);
            }
        }
    }

    /// Sets (or, with `None`, removes) the row at `slot`; the row it replaces.
    fn put(&mut self, slot: Slot, row: Option<AllocRow>) -> Option<AllocRow> {
        let old = match row {
            Some(r) => {
                self.count(&r, true);
                self.rows.insert(slot, r)
            }
            None => self.rows.remove(&slot),
        };
        if let Some(o) = &old {
            self.count(o, false);
        }
        old
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> impl Iterator<Item = &AllocRow> + '_ {
        self.rows.values()
    }

    pub fn row(&self, slot: Slot) -> Option<&AllocRow> {
        self.rows.get(&slot)
    }

    /// Live bytes per class, indexed by [`ViewClass::index`].
    pub fn by_class(&self) -> [u64; ViewClass::ALL.len()] {
        saturate(&self.by_class)
    }

    /// Per device with rows in device memory: its bytes per class, not yet saturated.
    pub fn by_device(&self) -> impl Iterator<Item = (Option<i32>, &Sums)> + '_ {
        self.by_device.iter().map(|(d, (_, s))| (*d, s))
    }
}

/// Every process's rows.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    procs: HashMap<u32, ProcRows>,
    pub apis: Apis,
}

impl Mirror {
    pub fn process(&self, proc: u32) -> Option<&ProcRows> {
        self.procs.get(&proc)
    }

    /// Follows what the Ledger changed with the record it just applied: rows come, go and
    /// change exactly as its allocations do. Changes to the rows of `watch` (the process the
    /// view lists) go into `changes`.
    pub fn track(&mut self, ledger: &Ledger, watch: Option<u32>, changes: &mut Vec<Change>) {
        for ch in ledger.changes() {
            let (proc, slot, row) = match ch {
                LedgerChange::Started { proc, alloc }
                | LedgerChange::Updated { proc, alloc, .. } => {
                    (*proc, slot_of(alloc), Some(self.apis.row(alloc)))
                }
                LedgerChange::Ended { proc, alloc, .. } => (*proc, slot_of(alloc), None),
                _ => continue,
            };
            let old = self.procs.entry(proc).or_default().put(slot, row.clone());
            if old != row && watch == Some(proc) {
                changes.push(Change { old, new: row });
            }
        }
    }
}
