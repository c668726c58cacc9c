//! The view's copy of every process's live allocations, as rows, kept in step with the
//! Ledger record by record, with the sums the process and GPU tables show.
//!
//! After each record the mirror reads back from the Ledger only the allocations that record
//! can have changed: the address it allocated, freed or copied into, and those that have
//! just outlived enough frees to be classified again (`docs/classification.md`). The Ledger
//! stays the one accounting path; what the mirror cannot tell exactly from the record (a
//! context destroyed, VMM mappings, CUDA arrays, an exit) makes it read the whole process
//! again at the next refresh, which is what the view did on every tick before.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    app::{AllocRow, Slot},
    class::{Class, class_of},
};
use crate::{
    ledger::{Ledger, LiveAllocation, Phase, ProcessState, classify::SURVIVE_FREES},
    trace::{Mem, Record},
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
type Sums = [u128; Class::ALL.len()];

fn saturate(s: &Sums) -> [u64; Class::ALL.len()] {
    s.map(|v| u64::try_from(v).unwrap_or(u64::MAX))
}

/// One process's rows and sums.
#[derive(Clone, Debug, Default)]
pub struct ProcRows {
    rows: BTreeMap<Slot, AllocRow>,
    /// Allocations that may be classified again once the process has made this many frees.
    young: BTreeSet<(u64, Slot)>,
    by_class: Sums,
    /// Rows in device memory per device: how many, and their bytes per class.
    by_device: BTreeMap<Option<i32>, (usize, Sums)>,
    /// VMM handles among the rows.
    vmm: usize,
    /// Read the whole process again at the next refresh.
    stale: bool,
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
        if matches!(r.slot, Slot::Vmm(_)) {
            if add {
                self.vmm += 1;
            } else {
                self.vmm -= 1;
            }
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

    /// Remembers when `a` may change class by age: the classifier decides again for an
    /// allocation made after the load phase once it has outlived `SURVIVE_FREES` frees.
    fn note_young(&mut self, a: &LiveAllocation, slot: Slot, frees: u64) {
        if a.made_in == Phase::Load {
            return;
        }
        let due = a.frees_before.saturating_add(SURVIVE_FREES);
        if due > frees {
            self.young.insert((due, slot));
        }
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

    /// Live bytes per class, indexed by [`Class::index`].
    pub fn by_class(&self) -> [u64; Class::ALL.len()] {
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

    /// Follows one record that the Ledger has just applied. Changes to the rows of `watch`
    /// (the process the view lists) go into `changes`.
    pub fn track(
        &mut self,
        ledger: &Ledger,
        rec: &Record,
        watch: Option<u32>,
        changes: &mut Vec<Change>,
    ) {
        let proc = match rec {
            Record::Exit(e) => e.proc,
            _ => match rec.call() {
                Some(c) => c.proc,
                None => return,
            },
        };
        let Some(p) = ledger.process(proc) else {
            return;
        };
        let pr = self.procs.entry(proc).or_default();
        if pr.stale {
            return;
        }
        let mut reread = None;
        match rec {
            Record::Alloc(c) => match c.mem {
                Some(Mem::Array | Mem::VmmDevice | Mem::VmmHost) => pr.stale = true,
                _ => reread = c.addr.map(Slot::Addr),
            },
            Record::Free(c) if c.mem == Some(Mem::Array) => pr.stale = true,
            Record::Free(c) => reread = c.addr.map(Slot::Addr),
            Record::Copy(c) => {
                if let Some(addr) = c.addr {
                    // The allocation the Ledger credits with the copy: the one that starts
                    // at or below the address, when it covers it; else a VMM mapping.
                    let below = pr.rows.range(..=Slot::Addr(addr)).next_back();
                    let inside = below.is_some_and(|(s, r)| match s {
                        Slot::Addr(start) => {
                            addr < start.saturating_add(r.bytes) || (addr == *start && r.bytes == 0)
                        }
                        _ => false,
                    });
                    reread = below.map(|(s, _)| *s);
                    if !inside && pr.vmm > 0 {
                        pr.stale = true;
                    }
                }
            }
            Record::Exit(_)
            | Record::VmmCreate(_)
            | Record::VmmRelease(_)
            | Record::VmmMap(_)
            | Record::VmmUnmap(_)
            | Record::CtxDestroy(_) => pr.stale = true,
            _ => {}
        }
        if pr.stale {
            return;
        }
        if let Some(slot) = reread {
            self.reread(p, slot, watch, changes);
        }
        // A free may have made older allocations long-lived.
        let frees = p.classifier.frees;
        loop {
            let Some(pr) = self.procs.get_mut(&proc) else {
                return;
            };
            let Some(&(due, slot)) = pr.young.first() else {
                return;
            };
            if due > frees {
                return;
            }
            pr.young.pop_first();
            match slot {
                Slot::Addr(_) => self.reread(p, slot, watch, changes),
                Slot::Array(_) | Slot::Vmm(_) => {
                    pr.stale = true;
                    return;
                }
            }
        }
    }

    /// Reads the allocation at an address of `p` back from the Ledger.
    fn reread(&mut self, p: &ProcessState, slot: Slot, watch: Option<u32>, c: &mut Vec<Change>) {
        let Slot::Addr(addr) = slot else {
            return;
        };
        let live = p.live_at(addr);
        let row = live.map(|a| self.apis.row(a));
        let pr = self.procs.entry(p.proc).or_default();
        if let Some(a) = live {
            pr.note_young(a, slot, p.classifier.frees);
        }
        let old = pr.put(slot, row.clone());
        if old != row && watch == Some(p.proc) {
            c.push(Change { old, new: row });
        }
    }

    /// Reads every process marked stale again from the Ledger; changes to `watch` go into
    /// `changes`, in no particular order.
    pub fn rescan(&mut self, ledger: &Ledger, watch: Option<u32>, changes: &mut Vec<Change>) {
        for (&proc, pr) in self.procs.iter_mut().filter(|(_, pr)| pr.stale) {
            let mut fresh = ProcRows::default();
            if let Some(p) = ledger.process(proc) {
                let frees = p.classifier.frees;
                for a in p.live_allocations() {
                    let row = self.apis.row(a);
                    let slot = row.slot;
                    fresh.note_young(a, slot, frees);
                    fresh.put(slot, Some(row));
                }
            }
            if watch == Some(proc) {
                diff(&pr.rows, &fresh.rows, changes);
            }
            *pr = fresh;
        }
    }
}

/// The rows that differ between two maps.
fn diff(old: &BTreeMap<Slot, AllocRow>, new: &BTreeMap<Slot, AllocRow>, out: &mut Vec<Change>) {
    use std::cmp::Ordering;
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let step = match (a.peek().copied(), b.peek().copied()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        let (o, n) = match step {
            Ordering::Less => (a.next().map(|(_, r)| r), None),
            Ordering::Greater => (None, b.next().map(|(_, r)| r)),
            Ordering::Equal => (a.next().map(|(_, r)| r), b.next().map(|(_, r)| r)),
        };
        if o != n {
            out.push(Change {
                old: o.cloned(),
                new: n.cloned(),
            });
        }
    }
}
