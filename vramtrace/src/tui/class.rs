//! What the view calls an allocation's class and NVML's figures: the one place that reads
//! them from the Ledger and the samples.

use crate::{ledger::LiveAllocation, trace::NvmlSample};

/// What memory is for, as the view shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViewClass {
    Weights,
    KvCache,
    Dynamic,
    HostFallback,
    /// Not classified (yet).
    Unknown,
}

impl ViewClass {
    /// Every class, in the order the memory bar and the columns show them.
    pub const ALL: [ViewClass; 5] = [
        ViewClass::Weights,
        ViewClass::KvCache,
        ViewClass::Dynamic,
        ViewClass::Unknown,
        ViewClass::HostFallback,
    ];

    /// Short name for tables and the filter (`class:kv`).
    pub fn label(self) -> &'static str {
        match self {
            ViewClass::Weights => "weights",
            ViewClass::KvCache => "kv",
            ViewClass::Dynamic => "dynamic",
            ViewClass::HostFallback => "host",
            ViewClass::Unknown => "unknown",
        }
    }

    /// Index into per-class arrays, following [`ViewClass::ALL`].
    pub fn index(self) -> usize {
        match self {
            ViewClass::Weights => 0,
            ViewClass::KvCache => 1,
            ViewClass::Dynamic => 2,
            ViewClass::Unknown => 3,
            ViewClass::HostFallback => 4,
        }
    }
}

/// The class of a live allocation, as the Ledger's classifier decided it. Pool-held bytes
/// are not allocations: the view shows them from the Ledger's pool figures.
pub fn class_of(a: &LiveAllocation) -> ViewClass {
    view_class(a.class)
}

/// The view's class for the Ledger's.
pub fn view_class(c: crate::ledger::Class) -> ViewClass {
    use crate::ledger::Class as L;
    match c {
        L::Weights => ViewClass::Weights,
        L::KvCache => ViewClass::KvCache,
        L::Dynamic => ViewClass::Dynamic,
        L::HostFallback => ViewClass::HostFallback,
        L::Pool | L::Unknown => ViewClass::Unknown,
    }
}

/// Bytes per view class of the Ledger's class counters, pool-held bytes left out (the view
/// shows them apart).
pub fn view_classes(c: &crate::ledger::ClassBytes) -> [u64; ViewClass::ALL.len()] {
    let mut out = [0u64; ViewClass::ALL.len()];
    for class in crate::ledger::Class::ALL {
        if class != crate::ledger::Class::Pool {
            let v = &mut out[view_class(class).index()];
            *v = v.saturating_add(c.get(class));
        }
    }
    out
}

/// NVML's bytes for a process, all GPUs together; `None` when NVML did not say.
pub fn nvml_process_bytes(sample: Option<&NvmlSample>, pid: u32) -> Option<u64> {
    let mut found = None;
    for g in &sample?.gpus {
        for p in g.processes.iter().filter(|p| p.pid == pid) {
            if let Some(b) = p.used_bytes {
                found = Some(found.unwrap_or(0u64).saturating_add(b));
            }
        }
    }
    found
}
