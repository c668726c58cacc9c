//! What one record changed in the [`Ledger`](super::Ledger): the stream every consumer reads.
//!
//! [`Ledger::apply`](super::Ledger::apply) returns the changes it made, in the order it made
//! them. They are the only place where the facts a consumer needs are decided: that an
//! allocation began or ended and why, that its class changed, that a call was an
//! out-of-memory failure (with its device and NVML device), that a process put memory in
//! host RAM, changed phase or exited. The postmortem, the exports, the live view and the
//! service read these and the Ledger's state; none decides them again.
//!
//! The stream is complete: replaying only the changes rebuilds every process's live
//! allocations, their classes and the pool-held bytes (a property test holds it to that).

use std::sync::Arc;

use serde::Serialize;

use super::classify::{Class, Phase};
use super::process::{HostFinding, ImportedMapping, LiveAllocation, Oom};

/// Why an allocation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// Freed to the GPU or the host (`cuMemFree*`, `cuMemFreeHost`, `cuMemHostUnregister`).
    Free,
    /// Freed into its stream-ordered pool (`cuMemFreeAsync*`): the bytes stay held from the
    /// GPU as pool-held bytes until a trim or the pool's destruction.
    PoolFree,
    /// A CUDA array destroyed (`cuArrayDestroy`, `cuMipmappedArrayDestroy`).
    ArrayDestroy,
    /// A VMM handle's physical memory, gone once the handle was released and every mapping
    /// of it unmapped (`cuMemRelease`, `cuMemUnmap`).
    VmmRelease,
    /// Its context was destroyed (`cuCtxDestroy`, the last `cuDevicePrimaryCtxRelease`) or
    /// reset (`cuDevicePrimaryCtxReset`).
    ContextDestroyed,
    /// Its process exited.
    ProcessExit,
    /// A new allocation was reported at its address or handle while it was still live: it
    /// must have ended unseen (an event lost, or a free through an untraced path).
    Replaced,
}

impl EndCause {
    /// Every cause, in the order of [`EndCause::index`].
    pub const ALL: [EndCause; 7] = [
        EndCause::Free,
        EndCause::PoolFree,
        EndCause::ArrayDestroy,
        EndCause::VmmRelease,
        EndCause::ContextDestroyed,
        EndCause::ProcessExit,
        EndCause::Replaced,
    ];

    /// The cause's place in [`EndCause::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            EndCause::Free => "free",
            EndCause::PoolFree => "pool_free",
            EndCause::ArrayDestroy => "array_destroy",
            EndCause::VmmRelease => "vmm_release",
            EndCause::ContextDestroyed => "context_destroyed",
            EndCause::ProcessExit => "process_exit",
            EndCause::Replaced => "replaced",
        }
    }

    /// Whether the process gave the memory back by a call of its own (a free, a release, a
    /// destroy), as opposed to losing it with its context or its life, or unseen.
    pub fn is_explicit(self) -> bool {
        matches!(
            self,
            EndCause::Free | EndCause::PoolFree | EndCause::ArrayDestroy | EndCause::VmmRelease
        )
    }
}

/// A stream-ordered pool as the Ledger names it: by handle, or a device's default pool
/// before its handle is known (`cuMemAllocAsync` names no pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolId {
    /// A pool handle (`CUmemoryPool`).
    Handle(u64),
    /// The default pool of a device, handle not yet seen.
    Default(Option<i32>),
    /// The graph memory pool of a device (CUDA graph memory nodes).
    Graph(Option<i32>),
}

/// One change the Ledger made. `proc` is the `process` record id of the process it is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// An allocation became live (device, stream-ordered or host memory, a CUDA array, or a
    /// VMM handle's physical memory), already classified.
    Started {
        /// The process.
        proc: u32,
        /// The allocation as booked (shared with the Ledger until it changes).
        alloc: Arc<LiveAllocation>,
    },
    /// A live allocation ended.
    Ended {
        /// The process.
        proc: u32,
        /// The allocation as it was when it ended.
        alloc: Arc<LiveAllocation>,
        /// Why.
        cause: EndCause,
        /// When (the time of the record that ended it).
        ts_ns: u64,
    },
    /// A live allocation changed: its class (the evidence grew: a host copy, it outlived
    /// enough frees), what was copied into it, or the address a VMM handle is mapped at.
    Updated {
        /// The process.
        proc: u32,
        /// Its class before the change.
        was: Class,
        /// The allocation as it is now (shared with the Ledger until it changes).
        alloc: Arc<LiveAllocation>,
    },
    /// The bytes a stream-ordered pool holds from the GPU changed.
    PoolHeld {
        /// The process.
        proc: u32,
        /// The pool.
        pool: PoolId,
        /// The pool's device.
        device: Option<i32>,
        /// Bytes held now.
        held: u64,
    },
    /// The process entered a new phase (`docs/classification.md`).
    Phase {
        /// The process.
        proc: u32,
        /// The phase it is in now.
        phase: Phase,
        /// When.
        ts_ns: u64,
    },
    /// A request failed for want of memory: the one snapshot of what was held, on which
    /// device and NVML device.
    Oom {
        /// The process.
        proc: u32,
        /// The failure.
        oom: Box<Oom>,
    },
    /// The process placed memory in host RAM.
    HostFinding {
        /// The process.
        proc: u32,
        /// The finding.
        finding: HostFinding,
    },
    /// Input that did not fit what the Ledger knew (a free of an unknown address, ...).
    Anomaly {
        /// The process.
        proc: u32,
        /// The anomaly's name, as in [`ProcessState::anomalies`](super::ProcessState).
        kind: &'static str,
    },
    /// The process exited; its allocations ended just before, each with an `Ended`.
    Exited {
        /// The process.
        proc: u32,
        /// When.
        ts_ns: u64,
    },
    /// Memory of another process was mapped into this one: mapped, not owned, never in its
    /// bytes or its device's.
    Imported {
        /// The importing process.
        proc: u32,
        /// The mapping, with its owner when known.
        mapping: Arc<ImportedMapping>,
    },
    /// An imported mapping ended (closed, unmapped, freed, or its process exited).
    ImportEnded {
        /// The importing process.
        proc: u32,
        /// The mapping as it was.
        mapping: Arc<ImportedMapping>,
        /// When.
        ts_ns: u64,
    },
    /// Events the kernel side could not deliver.
    Lost {
        /// Events lost.
        events: u64,
        /// Stacks that could not be captured.
        stack_failed: u64,
    },
}

impl Change {
    /// The process the change is about (none for a loss).
    pub fn proc(&self) -> Option<u32> {
        match self {
            Change::Started { proc, .. }
            | Change::Ended { proc, .. }
            | Change::Updated { proc, .. }
            | Change::PoolHeld { proc, .. }
            | Change::Phase { proc, .. }
            | Change::Oom { proc, .. }
            | Change::HostFinding { proc, .. }
            | Change::Anomaly { proc, .. }
            | Change::Imported { proc, .. }
            | Change::ImportEnded { proc, .. }
            | Change::Exited { proc, .. } => Some(*proc),
            Change::Lost { .. } => None,
        }
    }
}
