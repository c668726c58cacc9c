//! The ledger against each family of driver calls, as the converter writes them.

use super::*;
pub(super) use crate::testing::Sim;
use crate::trace::{Call, Mem};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn apply_all(ledger: &mut Ledger, recs: impl IntoIterator<Item = Record>) {
    for r in recs {
        ledger.apply(&r);
    }
}

fn proc(ledger: &Ledger, id: u32) -> &ProcessState {
    ledger.process(id).expect("process is known")
}

fn anomalies(p: &ProcessState, kind: &str) -> u64 {
    p.anomalies.get(kind).map_or(0, |a| a.count)
}

#[test]
fn device_alloc_and_free() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.process("python"),
        s.alloc(0x1000, GIB),
        s.alloc(0x9000_0000, 2 * GIB),
        s.free(0x1000),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.comm(), "python");
    assert_eq!(p.usage.device_bytes, 2 * GIB);
    assert_eq!(p.usage.peak_device_bytes, 3 * GIB);
    assert_eq!(p.usage.peak_device_ts_ns, Some(1020));
    assert_eq!(
        p.allocs["cuMemAlloc_v2"],
        ApiCount {
            count: 2,
            bytes: 3 * GIB
        }
    );
    assert_eq!(
        p.frees["cuMemFree_v2"],
        ApiCount {
            count: 1,
            bytes: GIB
        }
    );
    assert_eq!(l.totals().usage.device_bytes, 2 * GIB);
    assert_eq!(l.live_allocations(1).count(), 1);
    assert!(p.anomalies.is_empty());
}

#[test]
fn pitched_alloc_keeps_pitch_size() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let r = Record::Alloc(Call {
        addr: Some(0x2000),
        bytes: Some(512 * 100),
        pitch: Some(512),
        mem: Some(Mem::Device),
        ..s.call("cuMemAllocPitch_v2")
    });
    l.apply(&r);
    assert_eq!(proc(&l, 1).usage.device_bytes, 51_200);
}

#[test]
fn bad_frees_are_anomalies() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.alloc(0x1000, MIB),
        s.free(0x1000),
        s.free(0x1000),
        s.free(0xdead),
        s.free(0),
        Record::Free(s.call("cuMemFree_v2")),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(anomalies(p, "double_free"), 1);
    assert_eq!(anomalies(p, "free_unknown_address"), 1);
    assert_eq!(anomalies(p, "free_without_address"), 1);
    assert_eq!(p.anomalies.len(), 3, "freeing NULL is no anomaly");
    assert_eq!(p.frees["cuMemFree_v2"].count, 5);
    assert_eq!(p.frees["cuMemFree_v2"].bytes, MIB);
    assert!(p.anomalies["double_free"].examples[0].contains("0x1000"));
}

#[test]
fn failed_calls_are_no_allocations() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        Record::Failed(Call {
            ret: 2,
            bytes: Some(80 * GIB),
            ..s.call("cuMemAlloc_v2")
        }),
        Record::Failed(Call {
            ret: 2,
            bytes: Some(GIB),
            ..s.call("cuMemAlloc_v2")
        }),
        Record::Failed(Call {
            ret: 1,
            addr: Some(0x5),
            ..s.call("cuMemFree_v2")
        }),
        // An alloc record carrying an error is treated as the failure it is.
        Record::Alloc(Call {
            ret: 2,
            addr: Some(0x1000),
            bytes: Some(GIB),
            mem: Some(Mem::Device),
            ..s.call("cuMemAlloc_v2")
        }),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert!(p.allocs.is_empty());
    let f = &p.failed["cuMemAlloc_v2"];
    assert_eq!(f.count, 3);
    assert_eq!(f.bytes, 82 * GIB);
    assert_eq!(f.rets[&2], 3);
    assert_eq!(p.failed["cuMemFree_v2"].rets[&1], 1);
    assert_eq!(anomalies(p, "error_in_success_record"), 1);
}

#[test]
fn async_free_goes_to_pool_and_is_reused() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        s.alloc_async(0x1000, 100 * MIB, None),
        s.free_async(0x1000),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(p.usage.pool_held_bytes, 100 * MIB);
    assert_eq!(p.devices[&Some(0)].pool_held_bytes, 100 * MIB);

    // A smaller allocation is carved out of the held block, whose rest stays held; one that
    // fits in no held block takes new memory from the GPU.
    let recs = vec![
        s.alloc_async(0x2000, 30 * MIB, None),
        s.alloc_async(0x3000, 200 * MIB, None),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 230 * MIB);
    assert_eq!(p.usage.pool_held_bytes, 70 * MIB);
    assert_eq!(p.usage.peak_device_and_pool_bytes, 300 * MIB);
    assert_eq!(p.usage.peak_device_bytes, 230 * MIB);
    assert_eq!(l.totals().usage.pool_held_bytes, 70 * MIB);
}

#[test]
fn trim_and_destroy_release_pool_memory() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        Record::PoolCreate(Call {
            pool: Some(0x50),
            device: Some(1),
            ..s.call("cuMemPoolCreate")
        }),
        s.alloc_async(0x1000, 100 * MIB, Some(0x50)),
        s.alloc_async(0x2000, 50 * MIB, Some(0x50)),
        s.free_async(0x1000),
        s.free_async(0x2000),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.pool_held_bytes, 150 * MIB);
    assert_eq!(p.devices[&Some(1)].pool_held_bytes, 150 * MIB);
    let held: Vec<_> = p.pool_held().collect();
    assert_eq!(held, vec![(Some(0x50), Some(1), 150 * MIB)]);

    l.apply(&s.trim(0x50, 20 * MIB));
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 20 * MIB);
    // Trimming to more than is held changes nothing.
    l.apply(&s.trim(0x50, GIB));
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 20 * MIB);

    l.apply(&Record::PoolDestroy(Call {
        pool: Some(0x50),
        ..s.call("cuMemPoolDestroy")
    }));
    let p = proc(&l, 1);
    assert_eq!(p.usage.pool_held_bytes, 0);
    assert_eq!(p.usage.peak_device_and_pool_bytes, 150 * MIB);
    assert_eq!(l.totals().usage.pool_held_bytes, 0);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// `cuMemPoolTrimTo` keeps reserved bytes (in use plus held), as the driver documents: a
/// pool with live allocations keeps fewer held bytes than `minBytesToKeep`.
#[test]
fn trim_keeps_reserved_bytes_not_held_bytes() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.pool_create(0x50, None),
        s.alloc_async(0x1000, 100 * MIB, Some(0x50)),
        s.alloc_async(0x2000, 50 * MIB, Some(0x50)),
        s.alloc_async(0x3000, 30 * MIB, Some(0x50)),
        s.free_async(0x1000),
        s.free_async(0x2000),
        // 30 MiB in use, 150 MiB held: keeping 80 MiB reserved keeps 50 MiB held.
        s.trim(0x50, 80 * MIB),
    ];
    apply_all(&mut l, recs);
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 50 * MIB);
    // Keeping less than is in use gives back everything held.
    l.apply(&s.trim(0x50, 10 * MIB));
    let p = proc(&l, 1);
    assert_eq!(p.usage.pool_held_bytes, 0);
    assert_eq!(p.usage.device_bytes, 30 * MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// A synchronization gives back what every pool holds above its release threshold: 0 by
/// default, so everything; once set, held bytes are kept up to the threshold of reserved
/// bytes (in use plus held).
#[test]
fn synchronizations_release_pool_memory_above_the_threshold() {
    use crate::api::pool_attr::{RELEASE_THRESHOLD, USED_MEM_CURRENT};
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.pool_create(0x50, None),
        s.pool_create(0x60, None),
        s.alloc_async(0x1000, 100 * MIB, Some(0x50)),
        s.alloc_async(0x2000, 40 * MIB, Some(0x60)),
        s.free_async(0x1000),
        s.free_async(0x2000),
    ];
    apply_all(&mut l, recs);
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 140 * MIB);
    // Attributes other than the threshold change nothing.
    l.apply(&s.pool_attr(true, 0x50, USED_MEM_CURRENT, 0));
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 140 * MIB);
    l.apply(&s.sync("cuStreamSynchronize"));
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 0);

    let recs = vec![
        s.pool_attr(false, 0x50, RELEASE_THRESHOLD, 64 * MIB),
        s.alloc_async(0x1000, 100 * MIB, Some(0x50)),
        s.alloc_async(0x3000, 16 * MIB, Some(0x50)),
        s.alloc_async(0x2000, 40 * MIB, Some(0x60)),
        s.free_async(0x1000),
        s.free_async(0x2000),
        // 0x50: 16 MiB in use, 100 MiB held, threshold 64 MiB: 48 MiB stay held. 0x60 has
        // the default threshold and gives everything back.
        s.sync("cuCtxSynchronize"),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.pool_held_bytes, 48 * MIB);
    let held: Vec<_> = p.pool_held().filter(|(_, _, b)| *b > 0).collect();
    assert_eq!(held, vec![(Some(0x50), Some(0), 48 * MIB)]);
    assert_eq!(p.frees["cuMemFreeAsync"].bytes, 280 * MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// The driver's own figure for a pool's reserved bytes, read back by the process (PyTorch's
/// cudaMallocAsync backend does it for its statistics), sets what the pool holds: the driver
/// reserves in chunks that no call shows (32 MiB on an H100 with driver 580).
#[test]
fn a_reserved_figure_read_from_the_driver_sets_what_the_pool_holds() {
    use crate::api::pool_attr::{RELEASE_THRESHOLD, RESERVED_MEM_CURRENT};
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.pool_create(0x50, None),
        s.pool_attr(false, 0x50, RELEASE_THRESHOLD, u64::MAX),
        s.alloc_async(0x1000, 3 * MIB, Some(0x50)),
        s.alloc_async(0x2000, 5 * MIB, Some(0x50)),
        s.free_async(0x2000),
    ];
    apply_all(&mut l, recs);
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 5 * MIB);
    // The driver has a 32 MiB chunk for the pool: 3 MiB in use, the rest held.
    l.apply(&s.pool_attr(true, 0x50, RESERVED_MEM_CURRENT, 32 * MIB));
    let p = proc(&l, 1);
    assert_eq!(
        (p.usage.pool_held_bytes, p.usage.device_bytes),
        (29 * MIB, 3 * MIB)
    );
    // An allocation that fits in what is held takes nothing new from the GPU.
    l.apply(&s.alloc_async(0x3000, 20 * MIB, Some(0x50)));
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 9 * MIB);
    // Only a read is the driver's figure.
    l.apply(&s.pool_attr(false, 0x50, RESERVED_MEM_CURRENT, 0));
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 9 * MIB);
    // A reading below the model: held blocks go back.
    l.apply(&s.pool_attr(true, 0x50, RESERVED_MEM_CURRENT, 24 * MIB));
    let p = proc(&l, 1);
    assert_eq!(
        (p.usage.pool_held_bytes, p.usage.device_bytes),
        (MIB, 23 * MIB)
    );
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// A process that ran before the recording may have set its pools' thresholds unseen:
/// synchronizations give nothing back (held bytes stay an upper bound) until the threshold
/// is read back or set.
#[test]
fn unknown_thresholds_keep_pool_memory_until_learned() {
    use crate::api::pool_attr::RELEASE_THRESHOLD;
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        Record::Header(Box::new(crate::trace::Header {
            scope: crate::trace::Scope {
                pids: vec![100],
                ..Default::default()
            },
            ..Default::default()
        })),
        s.process("attached"),
        Record::PoolCreate(Call {
            pool: Some(0x70),
            device: Some(0),
            ..s.call("cuDeviceGetMemPool")
        }),
        s.alloc_async(0x1000, 100 * MIB, Some(0x70)),
        s.free_async(0x1000),
        s.sync("cuEventSynchronize"),
    ];
    apply_all(&mut l, recs);
    assert!(proc(&l, 1).running_before);
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 100 * MIB);
    let recs = vec![
        s.pool_attr(true, 0x70, RELEASE_THRESHOLD, 60 * MIB),
        s.sync("cuStreamSynchronize_ptsz"),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.pool_held_bytes, 60 * MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

#[test]
fn default_pool_handle_learned_before_or_after() {
    // Learned first: allocations without a pool go to it, and a trim by handle reaches them.
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        Record::PoolCreate(Call {
            pool: Some(0xd0),
            device: Some(0),
            ..s.call("cuDeviceGetDefaultMemPool")
        }),
        s.alloc_async(0x1000, 64 * MIB, None),
        s.free_async(0x1000),
        s.trim(0xd0, 0),
    ];
    apply_all(&mut l, recs);
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 0);

    // Learned after the memory went into the pool: the held bytes move to the handle.
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        s.alloc_async(0x1000, 64 * MIB, None),
        s.free_async(0x1000),
        Record::PoolCreate(Call {
            pool: Some(0xd0),
            device: Some(0),
            ..s.call("cuDeviceGetDefaultMemPool")
        }),
        s.trim(0xd0, MIB),
    ];
    apply_all(&mut l, recs);
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, MIB);

    // Never learned: the one default pool in use is the only pool a trim can mean.
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        s.alloc_async(0x1000, 64 * MIB, None),
        s.free_async(0x1000),
        s.trim(0xd0, 0),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.pool_held_bytes, 0);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

#[test]
fn vmm_release_before_unmap() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        Record::Reserve(Call {
            addr: Some(0x7000_0000),
            bytes: Some(8 * GIB),
            ..s.call("cuMemAddressReserve")
        }),
        s.vmm_create(0xa, 2 * MIB),
        s.vmm_map(0x7000_0000, 2 * MIB, 0xa),
        s.vmm_release(0xa),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    // Reservation is address space, not memory; release alone frees nothing while mapped.
    assert_eq!(p.usage.device_bytes, 2 * MIB);
    assert_eq!(p.reserved_bytes(), 8 * GIB);
    let live: Vec<_> = p.live_allocations().collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].addr, Some(0x7000_0000));
    assert_eq!(live[0].handle, Some(0xa));
    assert_eq!(live[0].device, Some(0));

    l.apply(&s.vmm_unmap(0x7000_0000, 2 * MIB));
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(
        p.frees["cuMemRelease"],
        ApiCount {
            count: 1,
            bytes: 2 * MIB
        }
    );
    l.apply(&Record::Unreserve(Call {
        addr: Some(0x7000_0000),
        bytes: Some(8 * GIB),
        ..s.call("cuMemAddressFree")
    }));
    let p = proc(&l, 1);
    assert_eq!(p.reserved_bytes(), 0);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

#[test]
fn multicast_objects_hold_nothing_and_their_bindings_keep_memory_until_unbound() {
    use crate::trace::Bound;
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let (va, mc_va) = (0x7000_0000, 0x7800_0000);
    let bind_mem = |s: &mut Sim, offset: u64, handle: u64| {
        Record::MulticastBind(Call {
            handle: Some(0xc),
            offset: Some(offset),
            bound: Some(Box::new(Bound { handle, offset: 0 })),
            bytes: Some(2 * MIB),
            flags: Some(0),
            ..s.call("cuMulticastBindMem")
        })
    };
    let unbind = |s: &mut Sim, offset: u64| {
        Record::MulticastUnbind(Call {
            handle: Some(0xc),
            device: Some(0),
            offset: Some(offset),
            bytes: Some(2 * MIB),
            ..s.call("cuMulticastUnbind")
        })
    };
    let recs = vec![
        s.vmm_create(0xa, 2 * MIB),
        s.vmm_create(0xb, 2 * MIB),
        Record::MulticastCreate(Call {
            handle: Some(0xc),
            bytes: Some(4 * MIB),
            count: Some(1),
            ..s.call("cuMulticastCreate")
        }),
        bind_mem(&mut s, 0, 0xa),
        s.vmm_map(va, 2 * MIB, 0xb),
        // Bound by where it is mapped.
        Record::MulticastBind(Call {
            handle: Some(0xc),
            offset: Some(2 * MIB),
            addr: Some(va),
            bytes: Some(2 * MIB),
            ..s.call("cuMulticastBindAddr")
        }),
        s.vmm_map(mc_va, 4 * MIB, 0xc),
        // Released, but bound: a's memory stays; b's stays mapped and bound.
        s.vmm_release(0xa),
        s.vmm_release(0xb),
        s.vmm_unmap(va, 2 * MIB),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    // The object and its mapping are no memory of their own.
    assert_eq!(p.usage.device_bytes, 4 * MIB);
    assert_eq!(p.live_allocations().count(), 2);
    let ended = |l: &Ledger| {
        l.changes()
            .iter()
            .filter_map(|c| match c {
                Change::Ended { alloc, cause, .. } => Some((alloc.handle, *cause)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    l.apply(&unbind(&mut s, 0));
    assert_eq!(ended(&l), vec![(Some(0xa), EndCause::VmmRelease)]);
    assert_eq!(proc(&l, 1).usage.device_bytes, 2 * MIB);
    // Released while mapped: the object and b's binding stay until it is unmapped.
    l.apply(&s.vmm_release(0xc));
    assert_eq!(ended(&l), vec![]);
    l.apply(&s.vmm_unmap(mc_va, 4 * MIB));
    assert_eq!(ended(&l), vec![(Some(0xb), EndCause::VmmRelease)]);
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
    // Unbinding what is not bound is said.
    l.apply(&unbind(&mut s, 0));
    assert_eq!(proc(&l, 1).anomalies.len(), 1);
}

#[test]
fn sparse_arrays_hold_nothing_and_keep_what_is_mapped_into_them() {
    use crate::trace::{ArrayRegion, Bound};
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let region = |x: u64, w: u64| {
        Some(Box::new(ArrayRegion {
            miptail: false,
            level: 0,
            layer: 0,
            offset: [x, 0, 0],
            extent: [w, 64, 1],
        }))
    };
    let map = |s: &mut Sim, x: u64, handle: u64, count: u64| {
        Record::ArrayMap(Call {
            handle: Some(0xa7),
            region: region(x, 64),
            bound: Some(Box::new(Bound { handle, offset: 0 })),
            count: Some(count),
            ..s.call("cuMemMapArrayAsync")
        })
    };
    let sparse = Record::Alloc(Call {
        handle: Some(0xa7),
        mem: Some(Mem::Array),
        bytes: Some(64 * MIB),
        flags: Some(0x40),
        ..s.call("cuArray3DCreate_v2")
    });
    let recs = vec![
        sparse,
        s.vmm_create(0xa, 2 * MIB),
        s.vmm_create(0xb, 2 * MIB),
        map(&mut s, 0, 0xa, 1),
        map(&mut s, 64, 0xb, 1),
        s.vmm_release(0xa),
        s.vmm_release(0xb),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    // The array is nothing; the mapped handles stay, released.
    assert_eq!(p.usage.device_bytes, 4 * MIB);
    assert_eq!(p.live_allocations().count(), 3);
    // One unmap covering both regions lets both go.
    l.apply(&Record::ArrayUnmap(Call {
        handle: Some(0xa7),
        region: region(0, 128),
        count: Some(1),
        ..s.call("cuMemMapArrayAsync")
    }));
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
    // A call of several operations: the ones not read are said.
    l.apply(&s.vmm_create(0xc, 2 * MIB));
    l.apply(&map(&mut s, 0, 0xc, 3));
    let p = proc(&l, 1);
    assert_eq!(p.anomalies["array_maps_unread"].count, 1);
    // Destroying the array lets go of what it held.
    l.apply(&s.vmm_release(0xc));
    assert_eq!(proc(&l, 1).usage.device_bytes, 2 * MIB);
    l.apply(&Record::Free(Call {
        handle: Some(0xa7),
        mem: Some(Mem::Array),
        ..s.call("cuArrayDestroy")
    }));
    assert_eq!(proc(&l, 1).usage.device_bytes, 0);
}

#[test]
fn vmm_unmap_before_release_and_multi_mapping() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.vmm_create(0xa, 2 * MIB),
        s.vmm_create(0xb, 2 * MIB),
        s.vmm_map(0x7000_0000, 2 * MIB, 0xa),
        s.vmm_map(0x7020_0000, 2 * MIB, 0xb),
        // The same handle mapped twice (aliasing).
        s.vmm_map(0x8000_0000, 2 * MIB, 0xa),
        // One unmap covering both halves of the first range.
        s.vmm_unmap(0x7000_0000, 4 * MIB),
    ];
    apply_all(&mut l, recs);
    assert_eq!(proc(&l, 1).usage.device_bytes, 4 * MIB);
    l.apply(&s.vmm_release(0xb));
    assert_eq!(proc(&l, 1).usage.device_bytes, 2 * MIB);
    l.apply(&s.vmm_release(0xa));
    assert_eq!(proc(&l, 1).usage.device_bytes, 2 * MIB, "still mapped once");
    l.apply(&s.vmm_unmap(0x8000_0000, 2 * MIB));
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(p.usage.peak_device_bytes, 4 * MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);

    let recs = vec![
        s.vmm_unmap(0x8000_0000, 2 * MIB),
        s.vmm_release(0xa),
        s.vmm_map(0x9000_0000, MIB, 0xeee),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(anomalies(p, "unmap_unknown_range"), 1);
    assert_eq!(anomalies(p, "free_unknown_handle"), 1);
    assert_eq!(anomalies(p, "map_unknown_handle"), 1);
    assert_eq!(p.usage.device_bytes, 0);
}

#[test]
fn vmm_host_location_is_host_memory() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    l.apply(&Record::VmmCreate(Call {
        handle: Some(0xa),
        bytes: Some(GIB),
        mem: Some(Mem::VmmHost),
        ..s.call("cuMemCreate")
    }));
    let p = proc(&l, 1);
    assert_eq!(p.usage.host_bytes, GIB);
    assert_eq!(p.usage.device_bytes, 0);
    l.apply(&s.vmm_release(0xa));
    assert_eq!(proc(&l, 1).usage.host_bytes, 0);
}

#[test]
fn arrays_by_handle() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        Record::Alloc(Call {
            handle: Some(0xa1),
            bytes: Some(4 * MIB),
            mem: Some(Mem::Array),
            ..s.call("cuArray3DCreate_v2")
        }),
        Record::Alloc(Call {
            handle: Some(0xa2),
            bytes: Some(MIB),
            mem: Some(Mem::Array),
            ..s.call("cuMipmappedArrayCreate")
        }),
        Record::Free(Call {
            handle: Some(0xa1),
            mem: Some(Mem::Array),
            ..s.call("cuArrayDestroy")
        }),
        Record::Free(Call {
            handle: Some(0xa1),
            mem: Some(Mem::Array),
            ..s.call("cuArrayDestroy")
        }),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, MIB);
    assert_eq!(p.usage.peak_device_bytes, 5 * MIB);
    assert_eq!(anomalies(p, "free_unknown_handle"), 1);
}

#[test]
fn host_memory_counted_apart() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.alloc_mem("cuMemAllocManaged", Mem::Managed, 0x1000, GIB),
        s.alloc_mem("cuMemHostAlloc", Mem::HostPinned, 0x7f00_0000, MIB),
        s.alloc_mem(
            "cuMemHostRegister_v2",
            Mem::HostRegistered,
            0x7e00_0000,
            3 * MIB,
        ),
        s.alloc(0x2000_0000, MIB),
        Record::Free(Call {
            addr: Some(0x7f00_0000),
            mem: Some(Mem::HostPinned),
            ..s.call("cuMemFreeHost")
        }),
        Record::Free(Call {
            addr: Some(0x7e00_0000),
            mem: Some(Mem::HostRegistered),
            ..s.call("cuMemHostUnregister")
        }),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.host_bytes, GIB);
    assert_eq!(p.usage.peak_host_bytes, GIB + 4 * MIB);
    assert_eq!(p.usage.device_bytes, MIB);
    assert_eq!(l.totals().usage.host_bytes, GIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);

    // Freeing host memory with cuMemFree is inconsistent: counted, and still freed.
    l.apply(&s.free(0x1000));
    let p = proc(&l, 1);
    assert_eq!(anomalies(p, "free_kind_mismatch"), 1);
    assert_eq!(p.usage.host_bytes, 0);
}

#[test]
fn device_follows_thread_context_stack() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        // cuCtxCreate makes the new context current on the calling thread.
        s.ctx_create(0xc0, 0),
        s.alloc(0x1000, MIB),
        s.ctx_create(0xc1, 1),
        s.alloc(0x2000, 2 * MIB),
        s.ctx_current("cuCtxPopCurrent_v2", 0xc1),
        s.alloc(0x3000, 4 * MIB),
        s.ctx_current("cuCtxPushCurrent_v2", 0xc1),
        s.alloc(0x4000, 8 * MIB),
        s.ctx_current("cuCtxSetCurrent", 0xc0),
        s.alloc(0x5000, 16 * MIB),
        // The call's own device wins over the context.
        Record::Alloc(Call {
            addr: Some(0x6000),
            bytes: Some(32 * MIB),
            mem: Some(Mem::Device),
            device: Some(3),
            ..s.call("cuMemAlloc_v2")
        }),
    ];
    apply_all(&mut l, recs);
    // A second thread with no current context while two exist: device unknown.
    s.tid = 101;
    l.apply(&s.alloc(0x7000, 64 * MIB));

    let p = proc(&l, 1);
    assert_eq!(p.devices[&Some(0)].device_bytes, 21 * MIB);
    assert_eq!(p.devices[&Some(1)].device_bytes, 10 * MIB);
    assert_eq!(p.devices[&Some(3)].device_bytes, 32 * MIB);
    assert_eq!(p.devices[&None].device_bytes, 64 * MIB);
    let by_addr = |a: u64| {
        l.live_allocations(1)
            .find(|x| x.addr == Some(a))
            .expect("live")
            .clone()
    };
    assert_eq!(by_addr(0x2000).ctx, Some(0xc1));
    assert_eq!(by_addr(0x3000).ctx, Some(0xc0));
    assert_eq!(by_addr(0x5000).ctx, Some(0xc0));
    assert_eq!(by_addr(0x7000).ctx, None);
    assert_eq!(l.totals().devices[&Some(1)].device_bytes, 10 * MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

#[test]
fn ctx_destroy_frees_its_allocations() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        s.alloc(0x1000, MIB),
        s.alloc_async(0x2000, 2 * MIB, None),
        s.ctx_create(0xc1, 1),
        s.alloc(0x3000, 4 * MIB),
        Record::CtxDestroy(Call {
            handle: Some(0xc1),
            ..s.call("cuCtxDestroy_v2")
        }),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 3 * MIB);
    assert_eq!(
        p.frees["cuCtxDestroy_v2"],
        ApiCount {
            count: 1,
            bytes: 4 * MIB
        }
    );
    // Destroying the current context popped it: the thread is back on 0xc0.
    l.apply(&s.alloc(0x4000, 8 * MIB));
    assert_eq!(proc(&l, 1).devices[&Some(0)].device_bytes, 11 * MIB);

    l.apply(&Record::CtxDestroy(Call {
        handle: Some(0xc0),
        ..s.call("cuCtxDestroy_v2")
    }));
    let p = proc(&l, 1);
    // The stream-ordered allocation belongs to its pool's device, not to the context.
    assert_eq!(p.usage.device_bytes, 2 * MIB);
    assert_eq!(p.usage.pool_held_bytes, 0);
    assert_eq!(
        p.frees["cuCtxDestroy_v2"],
        ApiCount {
            count: 3,
            bytes: 13 * MIB
        }
    );
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// What a context's destruction frees, by kind (`LiveAllocation::freed_with_context`):
/// device memory, arrays, pinned, managed and registered host memory go with it;
/// stream-ordered memory from the default pool or a created one (of device or host memory)
/// and VMM memory stay.
#[test]
fn ctx_destroy_frees_what_the_context_owns_and_nothing_else() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        s.pool_create(0xb1, None),
        s.pool_create(0xb2, Some(Mem::HostPinned)),
        s.alloc(0x1000_0000, MIB),
        s.alloc_mem("cuMemAllocPitch_v2", Mem::Device, 0x1100_0000, 2 * MIB),
        Record::Alloc(Call {
            handle: Some(0xa1),
            mem: Some(Mem::Array),
            bytes: Some(4 * MIB),
            ..s.call("cuArrayCreate_v2")
        }),
        s.alloc_mem("cuMemAllocHost_v2", Mem::HostPinned, 0x7f00_0000, 8 * MIB),
        s.alloc_mem("cuMemHostAlloc", Mem::HostPinned, 0x7f80_0000, 16 * MIB),
        s.alloc_mem("cuMemAllocManaged", Mem::Managed, 0x7e00_0000, 32 * MIB),
        s.alloc_mem(
            "cuMemHostRegister_v2",
            Mem::HostRegistered,
            0x7d00_0000,
            64 * MIB,
        ),
        s.alloc_async(0x2000_0000, 128 * MIB, None),
        s.alloc_async(0x3000_0000, 256 * MIB, Some(0xb1)),
        s.alloc_async(0x7c00_0000, 512 * MIB, Some(0xb2)),
        s.vmm_create(0x9001, GIB),
        Record::CtxDestroy(Call {
            handle: Some(0xc0),
            ..s.call("cuCtxDestroy_v2")
        }),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    let mut left: Vec<(&str, u64)> = l
        .live_allocations(1)
        .map(|a| (a.mem.name(), a.bytes))
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("device_async", 128 * MIB),
            ("device_async", 256 * MIB),
            ("host_pinned", 512 * MIB),
            ("vmm_device", GIB),
        ]
    );
    assert_eq!(p.usage.device_bytes, 384 * MIB + GIB);
    assert_eq!(p.usage.host_bytes, 512 * MIB);
    assert_eq!(
        p.frees["cuCtxDestroy_v2"],
        ApiCount {
            count: 7,
            bytes: 127 * MIB
        }
    );
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

#[test]
fn primary_ctx_is_refcounted() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let retain = |s: &mut Sim| {
        Record::CtxCreate(Call {
            handle: Some(0xe0),
            device: Some(2),
            ..s.call("cuDevicePrimaryCtxRetain")
        })
    };
    let release = |s: &mut Sim| {
        Record::CtxDestroy(Call {
            device: Some(2),
            ..s.call("cuDevicePrimaryCtxRelease_v2")
        })
    };
    let recs = vec![
        retain(&mut s),
        retain(&mut s),
        // Retaining does not make it current; the runtime sets it.
        s.ctx_current("cuCtxSetCurrent", 0xe0),
        s.alloc(0x1000, GIB),
        release(&mut s),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.devices[&Some(2)].device_bytes, GIB, "one retain left");
    l.apply(&release(&mut s));
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(p.frees["cuDevicePrimaryCtxRelease_v2"].bytes, GIB);
    l.apply(&release(&mut s));
    assert_eq!(anomalies(proc(&l, 1), "release_unretained_primary_ctx"), 1);
}

/// Resetting the primary context frees what it holds; the context stays retained and
/// current, so what is allocated next is still on its device.
#[test]
fn primary_ctx_reset_frees_and_keeps_the_context() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        Record::CtxCreate(Call {
            handle: Some(0xe0),
            device: Some(2),
            ..s.call("cuDevicePrimaryCtxRetain")
        }),
        s.ctx_current("cuCtxSetCurrent", 0xe0),
        s.alloc(0x1000, GIB),
        s.alloc(0x9000_0000, MIB),
        Record::CtxDestroy(Call {
            device: Some(2),
            ..s.call("cuDevicePrimaryCtxReset_v2")
        }),
        s.alloc(0x1000, 2 * MIB),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.frees["cuDevicePrimaryCtxReset_v2"].bytes, GIB + MIB);
    assert_eq!(p.devices[&Some(2)].device_bytes, 2 * MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// Memory allocated while a green context's `CUcontext` is current is on the green
/// context's device and belongs to the primary context that the green context retained: it
/// outlives the green context, and goes when the last reference to the primary does.
#[test]
fn green_ctx_memory_is_the_primary_contexts() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let green = |s: &mut Sim, g: u64| {
        Record::CtxCreate(Call {
            green: Some(g),
            device: Some(1),
            flags: Some(1),
            ..s.call("cuGreenCtxCreate")
        })
    };
    let from = |s: &mut Sim, g: u64, ctx: u64| {
        Record::CtxCreate(Call {
            green: Some(g),
            handle: Some(ctx),
            ..s.call("cuCtxFromGreenCtx")
        })
    };
    let destroy = |s: &mut Sim, g: u64| {
        Record::CtxDestroy(Call {
            green: Some(g),
            ..s.call("cuGreenCtxDestroy")
        })
    };
    let recs = vec![
        green(&mut s, 0x91),
        from(&mut s, 0x91, 0xc1),
        s.ctx_current("cuCtxPushCurrent_v2", 0xc1),
        s.alloc(0x1000, 16 * MIB),
        green(&mut s, 0x92),
        from(&mut s, 0x92, 0xc2),
        destroy(&mut s, 0x91),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(
        p.devices[&Some(1)].device_bytes,
        16 * MIB,
        "{:?}",
        p.devices
    );
    assert!(p.frees.get("cuGreenCtxDestroy").is_none());

    let recs = vec![
        s.ctx_current("cuCtxSetCurrent", 0xc2),
        s.alloc(0x9000_0000, 8 * MIB),
        destroy(&mut s, 0x92),
        destroy(&mut s, 0x92),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.frees["cuGreenCtxDestroy"].bytes, 24 * MIB);
    assert_eq!(p.devices[&Some(1)].device_bytes, 0);
    assert_eq!(anomalies(p, "destroy_unknown_green_ctx"), 1);
}

/// Resetting the primary context also frees what was allocated in a green context on its
/// device.
#[test]
fn primary_ctx_reset_frees_green_ctx_memory() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        Record::CtxCreate(Call {
            green: Some(0x91),
            device: Some(0),
            ..s.call("cuGreenCtxCreate")
        }),
        Record::CtxCreate(Call {
            green: Some(0x91),
            handle: Some(0xc1),
            ..s.call("cuCtxFromGreenCtx")
        }),
        s.ctx_current("cuCtxSetCurrent", 0xc1),
        s.alloc(0x1000, MIB),
        Record::CtxDestroy(Call {
            device: Some(0),
            ..s.call("cuDevicePrimaryCtxReset_v2")
        }),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.frees["cuDevicePrimaryCtxReset_v2"].bytes, MIB);
    assert_eq!(p.devices[&Some(0)].device_bytes, 0);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

#[test]
fn copies_mark_allocations_filled_from_host() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let copy = |s: &mut Sim, addr: u64, bytes: u64| {
        Record::Copy(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            ..s.call("cuMemcpyHtoD_v2")
        })
    };
    let recs = vec![
        s.alloc(0x10_0000, MIB),
        copy(&mut s, 0x10_0000, 1000),
        copy(&mut s, 0x10_1000, 2000),
        s.vmm_create(0xa, 2 * MIB),
        s.vmm_map(0x7000_0000, 2 * MIB, 0xa),
        copy(&mut s, 0x7000_0100, 4096),
        copy(&mut s, 0x5, 8),
    ];
    apply_all(&mut l, recs);
    let live: Vec<_> = l.live_allocations(1).collect();
    let dev = live.iter().find(|a| a.mem == Mem::Device).expect("device");
    let vmm = live.iter().find(|a| a.mem == Mem::VmmDevice).expect("vmm");
    assert_eq!(dev.filled_from_host, 3000);
    assert_eq!(vmm.filled_from_host, 4096);
    assert_eq!(anomalies(proc(&l, 1), "copy_outside_allocations"), 1);
}

#[test]
fn a_batch_is_each_copy_read_and_says_how_many_were_not() {
    use crate::trace::{BatchCopy, CopySrc};
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let (a, b, host) = (0x10_0000, 0x40_0000, 0x5555_0000);
    let batch = |s: &mut Sim, api: &str, first: Option<(u64, u64)>, rest: Vec<BatchCopy>, n| {
        Record::Copy(Call {
            addr: first.map(|f| f.0),
            src_mem: first.map(|_| CopySrc::Unified),
            src: first.map(|_| host),
            bytes: first.map(|f| f.1),
            copies: (!rest.is_empty()).then(|| rest.into_boxed_slice()),
            count: Some(n),
            ..s.call(api)
        })
    };
    let second = BatchCopy {
        addr: Some(b),
        src_mem: CopySrc::Unified,
        src: Some(host),
        bytes: 2000,
    };
    let recs = vec![
        s.alloc(a, MIB),
        s.alloc(b, MIB),
        // Both copies read: both fills.
        batch(
            &mut s,
            "cuMemcpyBatchAsync_v2",
            Some((a, 1000)),
            vec![second],
            2,
        ),
        // Array to array: no address on either side, yet read; no fill, nothing unread.
        Record::Copy(Call {
            src_mem: Some(CopySrc::Array),
            count: Some(1),
            ..s.call("cuMemcpy3DBatchAsync_v2")
        }),
        // The arrays could not be read: none of six.
        batch(&mut s, "cuMemcpyBatchAsync_v2", None, Vec::new(), 6),
    ];
    apply_all(&mut l, recs);
    let live: Vec<_> = l.live_allocations(1).collect();
    let filled = |at: u64| {
        live.iter()
            .find(|x| x.addr == Some(at))
            .unwrap()
            .filled_from_host
    };
    assert_eq!((filled(a), filled(b)), (1000, 2000));
    let p = proc(&l, 1);
    assert_eq!(anomalies(p, "batch_copies_unread"), 1);
    assert!(
        p.anomalies["batch_copies_unread"].examples[0].contains("0 of 6 copies read"),
        "{:?}",
        p.anomalies
    );
}

#[test]
fn unified_copies_fill_by_where_the_addresses_lie() {
    use crate::trace::CopySrc;
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let copy =
        |s: &mut Sim, api: &str, dst: Option<u64>, src: CopySrc, from: Option<u64>, n: u64| {
            Record::Copy(Call {
                addr: dst,
                src_mem: Some(src),
                src: from,
                bytes: Some(n),
                ..s.call(api)
            })
        };
    let (a, b, pinned, host) = (0x10_0000, 0x40_0000, 0x7700_0000, 0x5555_0000);
    let recs = vec![
        s.alloc(a, MIB),
        s.alloc(b, MIB),
        s.alloc_mem("cuMemHostAlloc", Mem::HostPinned, pinned, MIB),
        // Host to device: a fill of a.
        copy(
            &mut s,
            "cuMemcpy",
            Some(a),
            CopySrc::Unified,
            Some(host),
            1000,
        ),
        // Pinned host memory is host memory: a fill of a too.
        copy(
            &mut s,
            "cuMemcpyAsync_ptsz",
            Some(a + 4096),
            CopySrc::Unified,
            Some(pinned),
            24,
        ),
        // Device to device, by address and by type: no fill of b.
        copy(
            &mut s,
            "cuMemcpy",
            Some(b),
            CopySrc::Unified,
            Some(a + 16),
            512,
        ),
        copy(
            &mut s,
            "cuMemcpy2D_v2",
            Some(b),
            CopySrc::Device,
            Some(a),
            512,
        ),
        copy(&mut s, "cuMemcpy3D_v2", Some(b), CopySrc::Array, None, 512),
        // An unknown source is never taken for host memory.
        copy(
            &mut s,
            "cuMemcpy3D_v2",
            Some(b),
            CopySrc::Unified,
            None,
            512,
        ),
        // Device to host, host to host: no fill, nothing amiss.
        copy(
            &mut s,
            "cuMemcpy",
            Some(host),
            CopySrc::Unified,
            Some(a),
            64,
        ),
        copy(
            &mut s,
            "cuMemcpy",
            Some(pinned),
            CopySrc::Unified,
            Some(host),
            64,
        ),
        copy(&mut s, "cuMemcpy2D_v2", None, CopySrc::Host, Some(host), 64),
        // A 2D copy from host memory: a fill of b.
        copy(
            &mut s,
            "cuMemcpy2D_v2",
            Some(b + 8),
            CopySrc::Host,
            Some(host),
            256,
        ),
    ];
    apply_all(&mut l, recs);
    let live: Vec<_> = l.live_allocations(1).collect();
    let at = |addr: u64| live.iter().find(|x| x.addr == Some(addr)).expect("live");
    assert_eq!(at(a).filled_from_host, 1024);
    assert_eq!(at(b).filled_from_host, 256);
    assert_eq!(at(pinned).filled_from_host, 0);
    assert!(
        proc(&l, 1).anomalies.is_empty(),
        "{:?}",
        proc(&l, 1).anomalies
    );
}

#[test]
fn pid_reuse_keeps_processes_apart() {
    let mut l = Ledger::new();
    let mut a = Sim::new(1, 4242);
    let mut b = Sim::new(2, 4242);
    b.ts = 1_000_000;
    let recs = vec![
        a.process("first"),
        a.alloc(0x1000, GIB),
        a.exit(),
        b.process("second"),
        b.alloc(0x1000, MIB),
    ];
    apply_all(&mut l, recs);
    let ps: Vec<_> = l.processes().collect();
    assert_eq!(ps.len(), 2);
    assert_eq!((ps[0].comm(), ps[0].pid), ("first", 4242));
    assert_eq!((ps[1].comm(), ps[1].pid), ("second", 4242));
    assert_eq!(ps[0].usage.peak_device_bytes, GIB);
    assert_eq!(ps[1].usage.device_bytes, MIB);
    assert!(
        ps[1].anomalies.is_empty(),
        "same address in a new process is no anomaly"
    );
    l.apply(&b.free(0x1000));
    assert_eq!(proc(&l, 2).usage.device_bytes, 0);
    assert_eq!(proc(&l, 1).exit.as_ref().map(|e| e.device_bytes), Some(GIB));
}

#[test]
fn exit_snapshot_then_cleared() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        s.alloc(0x1000, GIB),
        s.alloc(0x2000, MIB),
        s.alloc_async(0x3000, 4 * MIB, None),
        s.free_async(0x3000),
        s.alloc_mem("cuMemAllocHost_v2", Mem::HostPinned, 0x7f00_0000, 2 * MIB),
    ];
    apply_all(&mut l, recs);
    let mut other = Sim::new(2, 200);
    l.apply(&other.alloc(0x1000, 3 * GIB));
    assert_eq!(l.totals().usage.device_bytes, 4 * GIB + MIB);

    l.apply(&s.exit());
    let p = proc(&l, 1);
    let e = p.exit.as_ref().expect("exited");
    assert_eq!(e.device_bytes, GIB + MIB);
    assert_eq!(e.pool_held_bytes, 4 * MIB);
    assert_eq!(e.host_bytes, 2 * MIB);
    assert_eq!(e.devices[&Some(0)].device_bytes, GIB + MIB);
    assert_eq!(e.live_allocations, 3);
    assert_eq!(e.largest[0].bytes, GIB);
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(p.usage.pool_held_bytes, 0);
    assert_eq!(p.usage.host_bytes, 0);
    assert_eq!(p.usage.peak_device_bytes, GIB + 4 * MIB + MIB);
    assert_eq!(l.live_allocations(1).count(), 0);
    let t = l.totals();
    assert_eq!(t.usage.device_bytes, 3 * GIB);
    assert_eq!(t.usage.pool_held_bytes, 0);
    assert_eq!(t.usage.host_bytes, 0);
    assert_eq!(t.devices[&Some(0)].device_bytes, 0);
    assert!(t.usage.peak_device_bytes >= 4 * GIB + MIB);

    // A late free for an exited process is an anomaly, not an underflow.
    l.apply(&s.free(0x1000));
    let p = proc(&l, 1);
    assert_eq!(anomalies(p, "call_after_exit"), 1);
    assert_eq!(anomalies(p, "accounting_underflow"), 0);
}

#[test]
fn lost_stack_and_time_span() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    l.apply(&Record::Lost(crate::trace::Lost {
        ts_ns: 500,
        ringbuf_full: 3,
        entry_map_full: 1,
        exit_dropped: 1,
        stack_failed: 9,
        ..Default::default()
    }));
    l.apply(&Record::Stack(Stack {
        id: 4,
        ..Default::default()
    }));
    l.apply(&s.alloc(0x1000, 1));
    assert_eq!(l.lost_events(), 5);
    assert_eq!(l.stack_failed(), 9);
    assert!(l.stack(4).is_some());
    assert_eq!(l.time_span(), Some((500, 1010)));
}

#[test]
fn pool_allocations_are_booked_on_the_pools_device() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.ctx_create(0xc0, 0),
        Record::PoolCreate(Call {
            pool: Some(0x51),
            device: Some(1),
            ..s.call("cuMemPoolCreate")
        }),
        s.alloc_async(0x1000, MIB, Some(0x51)),
        s.free_async(0x1000),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.devices[&Some(1)].peak_device_bytes, MIB);
    assert_eq!(p.devices[&Some(1)].pool_held_bytes, MIB);
    assert!(!p.devices.contains_key(&Some(0)));
}

#[test]
fn a_call_that_never_returned_is_counted_and_makes_nothing() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let changes = l
        .apply(&Record::Unreturned(Call {
            bytes: Some(GIB),
            mem: Some(Mem::Managed),
            signalled: Some(10),
            ..s.call("cuMemAllocManaged")
        }))
        .to_vec();
    assert!(changes.is_empty(), "{changes:?}");
    let p = l.process(1).expect("known");
    assert_eq!(p.unreturned.get("cuMemAllocManaged"), Some(&1));
    assert_eq!(p.live_allocations().count(), 0);
    assert_eq!(p.usage.host_bytes, 0);
}

#[test]
fn managed_and_host_pools_hand_out_host_memory() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let recs = vec![
        s.pool_create(0xb1, Some(Mem::Managed)),
        s.pool_create(0xb2, Some(Mem::HostPinned)),
        s.pool_create(0xb3, None),
        s.alloc_async(0x10_0000, 4 * MIB, Some(0xb1)),
        s.alloc_async(0x20_0000, 2 * MIB, Some(0xb2)),
        s.alloc_async(0x30_0000, MIB, Some(0xb3)),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.host_bytes, 6 * MIB);
    assert_eq!(p.usage.device_bytes, MIB);
    assert_eq!(p.host_fallback_total, 2, "each a host-memory finding");
    let mems: Vec<_> = {
        let mut m: Vec<_> = l.live_allocations(1).map(|a| (a.addr, a.mem)).collect();
        m.sort();
        m
    };
    assert_eq!(
        mems,
        [
            (Some(0x10_0000), Mem::Managed),
            (Some(0x20_0000), Mem::HostPinned),
            (Some(0x30_0000), Mem::DeviceAsync)
        ]
    );
    // Freed, host-pool memory goes back to the host: nothing is pool-held GPU memory.
    let recs = vec![
        s.free_async(0x10_0000),
        s.free_async(0x20_0000),
        s.free_async(0x30_0000),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.host_bytes, 0);
    assert_eq!(p.usage.pool_held_bytes, MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

#[test]
fn the_current_pool_and_pools_learned_by_location() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let learned = |s: &mut Sim, api: &str, pool: u64, mem: Option<Mem>| {
        Record::PoolCreate(Call {
            pool: Some(pool),
            mem,
            device: mem.is_none().then_some(0),
            ..s.call(api)
        })
    };
    let recs = vec![
        s.ctx_create(0xc0, 0),
        s.ctx_current("cuCtxSetCurrent", 0xc0),
        s.pool_create(0xb3, None),
        learned(&mut s, "cuDeviceSetMemPool", 0xb3, None),
        // cuMemAllocAsync now takes from 0xb3: its free is held there, and a trim of 0xb3
        // gives it back.
        s.alloc_async(0x30_0000, MIB, None),
        s.free_async(0x30_0000),
        s.trim(0xb3, 0),
        // A host pool learned from CUDA 13's entry point by location, known or not.
        learned(
            &mut s,
            "cuMemGetDefaultMemPool",
            0xc1,
            Some(Mem::HostPinned),
        ),
        learned(&mut s, "cuMemGetMemPool", 0xb3, None),
        s.alloc_async(0x40_0000, 2 * MIB, Some(0xc1)),
    ];
    apply_all(&mut l, recs);
    let p = proc(&l, 1);
    assert_eq!(p.usage.pool_held_bytes, 0);
    assert_eq!(p.usage.host_bytes, 2 * MIB);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// A machine-wide recording finds processes that were already running: the Ledger says so
/// (their earlier allocations are unseen), as it does for the PIDs of `record -p`; a process
/// started after the recording began is whole.
#[test]
fn processes_running_before_the_recording_are_told_apart() {
    let header = |all: bool, pids: Vec<u32>| {
        Record::Header(Box::new(crate::trace::Header {
            scope: crate::trace::Scope {
                all,
                pids,
                ..Default::default()
            },
            // The recording started 100 s after boot.
            start_monotonic_ns: 100_000_000_000,
            ..Default::default()
        }))
    };
    let process = |id: u32, pid: u32, start_ticks: u64| {
        Record::Process(crate::trace::Process {
            id,
            pid,
            start_time: Some(start_ticks),
            ..Default::default()
        })
    };
    let mut l = Ledger::new();
    // 90 s after boot, 100.5 s after boot, 99.995 s (within a tick of the start).
    apply_all(
        &mut l,
        [
            header(true, vec![]),
            process(1, 10, 9_000),
            process(2, 11, 10_050),
            process(3, 12, 9_999),
        ],
    );
    assert!(proc(&l, 1).running_before);
    assert!(!proc(&l, 2).running_before);
    assert!(!proc(&l, 3).running_before, "a tick of doubt is not before");

    let mut l = Ledger::new();
    apply_all(
        &mut l,
        [
            header(false, vec![20]),
            process(1, 20, 10_050),
            process(2, 21, 1),
        ],
    );
    assert!(proc(&l, 1).running_before, "named by -p");
    assert!(!proc(&l, 2).running_before, "a child started since");
}

/// NVML's per-process figure is of its sample's moment: what it counts beyond the traced
/// allocations is set against what was traced then, not at the failure. On the H100's OOM
/// the sample was 35 ms old: 28 MiB by NVML, 2 MiB traced then, 72 GiB at the failure.
#[test]
fn an_ooms_untraced_bytes_are_measured_at_nvmls_sample() {
    use crate::ledger::process::{NvmlAtOom, Oom};
    let at = |traced_then| Oom {
        device_bytes: 72 * 1024 * MIB,
        nvml: Some(NvmlAtOom {
            process_used_bytes: Some(28 * MIB),
            process_traced_bytes: traced_then,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(at(Some(2 * MIB)).untraced_bytes(), Some(26 * MIB));
    // Not known what was traced then: the failure's figure, which can only say nothing.
    assert_eq!(at(None).untraced_bytes(), Some(0));
}

/// Graph memory is live from the launch that runs its alloc node until its free node runs;
/// the device's graph pool keeps what it reserved until a trim, serving later launches from
/// it, and the driver's figures are kept beside the Ledger's.
#[test]
fn graph_memory_lives_from_launch_to_free_and_its_pool_holds_until_trim() {
    use crate::api::graph_mem_attr::{RESERVED_MEM_CURRENT, RESERVED_MEM_HIGH, USED_MEM_CURRENT};
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    apply_all(
        &mut l,
        [
            s.process("graphs"),
            // Graph 1 allocates A (8 MiB) and B (4 MiB) and frees B; graph 2 frees A.
            s.graph_alloc_node(0x10, 0xa000_0000, 8 * MIB),
            s.graph_alloc_node(0x10, 0xb000_0000, 4 * MIB),
            s.graph_free_node(0x10, 0xb000_0000),
            s.graph_free_node(0x20, 0xa000_0000),
            s.graph_instantiate(0x10, 0x100),
            s.graph_instantiate(0x20, 0x200),
        ],
    );
    // Adding nodes and instantiating allocates nothing.
    assert_eq!(proc(&l, 1).usage.device_bytes, 0);
    l.apply(&s.graph_launch(0x100));
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 8 * MIB);
    assert_eq!(p.usage.pool_held_bytes, 4 * MIB);
    let a = p.live_at(0xa000_0000).expect("A is live");
    assert_eq!((a.mem, a.device), (Mem::Graph, Some(0)));
    assert!(!a.freed_with_context());
    let pool = p.graph_pools().next().expect("device 0's graph pool").1;
    assert_eq!((pool.used, pool.reserved), (8 * MIB, 12 * MIB));

    // Graph 2 frees A: all 12 MiB stay reserved, held by the pool.
    l.apply(&s.graph_launch(0x200));
    let p = proc(&l, 1);
    assert_eq!(
        (p.usage.device_bytes, p.usage.pool_held_bytes),
        (0, 12 * MIB)
    );
    assert_eq!(p.ended[EndCause::PoolFree.index()].bytes, 12 * MIB);
    // Launching graph 1 again takes from what the pool holds, reserving nothing new.
    apply_all(
        &mut l,
        [
            s.graph_launch(0x100),
            s.graph_attr(false, USED_MEM_CURRENT, 8 * MIB),
            s.graph_attr(false, RESERVED_MEM_CURRENT, 12 * MIB),
        ],
    );
    let p = proc(&l, 1);
    assert_eq!(
        (p.usage.device_bytes, p.usage.pool_held_bytes),
        (8 * MIB, 4 * MIB)
    );
    let reports: Vec<_> = p
        .graph_mem_reports()
        .map(|(d, attr, r)| (d, attr, r.driver, r.ledger))
        .collect();
    assert_eq!(
        reports,
        [
            (Some(0), USED_MEM_CURRENT, 8 * MIB, 8 * MIB),
            (Some(0), RESERVED_MEM_CURRENT, 12 * MIB, 12 * MIB)
        ]
    );

    // A trim gives back what is not in use; cuMemFree of graph memory ends it too.
    apply_all(&mut l, [s.graph_trim(), s.free(0xa000_0000)]);
    let p = proc(&l, 1);
    assert_eq!(
        (p.usage.device_bytes, p.usage.pool_held_bytes),
        (0, 8 * MIB)
    );
    // Resetting the high-water mark brings it down to what is reserved now.
    apply_all(
        &mut l,
        [
            s.graph_attr(true, RESERVED_MEM_HIGH, 0),
            s.graph_attr(false, RESERVED_MEM_HIGH, 8 * MIB),
        ],
    );
    let p = proc(&l, 1);
    let high = p
        .graph_mem_reports()
        .find(|r| r.1 == RESERVED_MEM_HIGH)
        .unwrap()
        .2;
    assert_eq!((high.driver, high.ledger), (8 * MIB, 8 * MIB));
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
    assert_eq!(l.totals().usage.pool_held_bytes, 8 * MIB);

    // At exit the pool goes with the process.
    l.apply(&Record::Exit(crate::trace::Exit {
        proc: 1,
        pid: 100,
        ts_ns: s.ts + 10,
    }));
    assert_eq!(l.totals().usage.pool_held_bytes, 0);
}

/// A failed launch (the driver refuses one whose allocations are still live) changes
/// nothing.
#[test]
fn graph_launch_failures_change_nothing() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let mut failed = s.graph_launch(0x100);
    if let Record::GraphLaunch(c) = &failed {
        failed = Record::Failed(Call {
            ret: 1,
            ..c.clone()
        });
    }
    apply_all(
        &mut l,
        [
            s.process("graphs"),
            s.graph_alloc_node(0x10, 0xa000_0000, 8 * MIB),
            s.graph_instantiate(0x10, 0x100),
            failed,
        ],
    );
    let p = proc(&l, 1);
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(p.graph_pools().count(), 0);
}

/// The driver reserves graph memory in chunks (32 MiB on an H100 with driver 580, for 8 MiB of
/// nodes) that no call shows; its `RESERVED_MEM_CURRENT`, read by the process, is what the
/// pool has from then on: the report keeps the Ledger's figure before the reading beside it.
#[test]
fn a_graph_pools_reserved_bytes_read_from_the_driver_set_what_it_holds() {
    use crate::api::graph_mem_attr::RESERVED_MEM_CURRENT;
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    apply_all(
        &mut l,
        [
            s.process("graphs"),
            s.graph_alloc_node(0x10, 0xa000_0000, 8 * MIB),
            s.graph_instantiate(0x10, 0x100),
            s.graph_launch(0x100),
        ],
    );
    assert_eq!(proc(&l, 1).usage.pool_held_bytes, 0);
    l.apply(&s.graph_attr(false, RESERVED_MEM_CURRENT, 32 * MIB));
    let p = proc(&l, 1);
    assert_eq!(
        (p.usage.device_bytes, p.usage.pool_held_bytes),
        (8 * MIB, 24 * MIB)
    );
    let pool = p.graph_pools().next().expect("device 0's graph pool").1;
    assert_eq!((pool.used, pool.reserved), (8 * MIB, 32 * MIB));
    let report: Vec<_> = p
        .graph_mem_reports()
        .map(|(_, _, r)| (r.driver, r.ledger))
        .collect();
    assert_eq!(
        report,
        [(32 * MIB, 8 * MIB)],
        "the Ledger's figure before the reading"
    );
    // A reading below what is in use cannot free live memory.
    l.apply(&s.graph_attr(false, RESERVED_MEM_CURRENT, 4 * MIB));
    let p = proc(&l, 1);
    assert_eq!(
        (p.usage.device_bytes, p.usage.pool_held_bytes),
        (8 * MIB, 0)
    );
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}
