//! Invariants of the ledger over random event sequences, checked against small models.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::tests::Sim;
use super::*;
use crate::trace::{Call, Mem};

const PROCS: u32 = 3;
const PAGE: u64 = 0x20_0000;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        proc: u32,
        slot: u64,
        bytes: u64,
        mem: Mem,
    },
    Free {
        proc: u32,
        slot: u64,
        is_async: bool,
    },
    Exit {
        proc: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let mem = prop_oneof![
        Just(Mem::Device),
        Just(Mem::DeviceAsync),
        Just(Mem::HostPinned),
        Just(Mem::Managed),
    ];
    prop_oneof![
        8 => (0..PROCS, 0..12u64, 0..(1u64 << 34), mem)
            .prop_map(|(proc, slot, bytes, mem)| Op::Alloc { proc, slot, bytes, mem }),
        8 => (0..PROCS, 0..16u64, any::<bool>())
            .prop_map(|(proc, slot, is_async)| Op::Free { proc, slot, is_async }),
        1 => (0..PROCS).prop_map(|proc| Op::Exit { proc }),
    ]
}

/// What each process holds, by the plain rules.
#[derive(Default)]
struct AllocModel {
    live: HashMap<u64, (u64, Mem)>,
    /// Freed stream-ordered blocks still held by the (one, default) pool.
    pool_blocks: Vec<u64>,
}

impl AllocModel {
    fn device(&self) -> u64 {
        self.live
            .values()
            .filter(|(_, m)| !m.is_host())
            .map(|(b, _)| b)
            .sum()
    }
    fn host(&self) -> u64 {
        self.live
            .values()
            .filter(|(_, m)| m.is_host())
            .map(|(b, _)| b)
            .sum()
    }
}

proptest! {
    #[test]
    fn live_bytes_are_allocations_minus_frees(ops in prop::collection::vec(op(), 1..200)) {
        let mut ledger = Ledger::new();
        let mut sims: Vec<Sim> = (0..PROCS).map(|p| Sim::new(p, 1000 + p)).collect();
        let mut models: Vec<AllocModel> = (0..PROCS).map(|_| AllocModel::default()).collect();
        let mut peaks = vec![0u64; PROCS as usize];

        for op in ops {
            match op {
                Op::Alloc { proc, slot, bytes, mem } => {
                    let (s, m) = (&mut sims[proc as usize], &mut models[proc as usize]);
                    let addr = 0x1000 + slot * PAGE;
                    let rec = if mem == Mem::DeviceAsync {
                        s.alloc_async(addr, bytes, None)
                    } else {
                        s.alloc_mem("alloc", mem, addr, bytes)
                    };
                    // An allocation over a live one drops the old one (no pool return).
                    m.live.remove(&addr);
                    if mem == Mem::DeviceAsync {
                        // Best fit: the smallest held block that fits; its rest stays held.
                        if let Some(i) = (0..m.pool_blocks.len())
                            .filter(|&i| m.pool_blocks[i] >= bytes)
                            .min_by_key(|&i| (m.pool_blocks[i], i))
                        {
                            let block = m.pool_blocks.remove(i);
                            if block > bytes {
                                m.pool_blocks.push(block - bytes);
                            }
                        }
                    }
                    m.live.insert(addr, (bytes, mem));
                    ledger.apply(&rec);
                }
                Op::Free { proc, slot, is_async } => {
                    let (s, m) = (&mut sims[proc as usize], &mut models[proc as usize]);
                    let addr = 0x1000 + slot * PAGE;
                    let rec = if is_async { s.free_async(addr) } else { s.free(addr) };
                    if let Some((bytes, mem)) = m.live.remove(&addr)
                        && mem == Mem::DeviceAsync
                    {
                        m.pool_blocks.push(bytes);
                    }
                    ledger.apply(&rec);
                }
                Op::Exit { proc } => {
                    let rec = sims[proc as usize].exit();
                    models[proc as usize] = AllocModel::default();
                    ledger.apply(&rec);
                }
            }

            let mut total_device = 0u64;
            let mut total_host = 0u64;
            for p in 0..PROCS {
                let m = &models[p as usize];
                let Some(st) = ledger.process(p) else { continue };
                let u = &st.usage;
                prop_assert_eq!(u.device_bytes, m.device());
                prop_assert_eq!(u.host_bytes, m.host());
                prop_assert_eq!(u.pool_held_bytes, m.pool_blocks.iter().sum::<u64>());
                prop_assert!(u.peak_device_bytes >= u.device_bytes);
                prop_assert!(u.peak_host_bytes >= u.host_bytes);
                prop_assert!(u.peak_device_and_pool_bytes >= u.device_and_pool_bytes());
                prop_assert!(u.peak_device_bytes >= peaks[p as usize], "peaks never fall");
                peaks[p as usize] = u.peak_device_bytes;
                prop_assert_eq!(st.live_allocations().count(), m.live.len());
                let dev_sum: u64 = st.devices.values().map(|d| d.device_bytes).sum();
                prop_assert_eq!(dev_sum, u.device_bytes);
                prop_assert!(!st.anomalies.contains_key("accounting_underflow"));
                total_device += m.device();
                total_host += m.host();
            }
            let t = ledger.totals();
            prop_assert_eq!(t.usage.device_bytes, total_device);
            prop_assert_eq!(t.usage.host_bytes, total_host);
            prop_assert!(t.usage.peak_device_bytes >= t.usage.device_bytes);
        }
    }
}

#[derive(Clone, Debug)]
enum VmmOp {
    Create { handle: u64, bytes: u64 },
    Release { handle: u64 },
    Map { slot: u64, handle: u64 },
    Unmap { slot: u64, pages: u64 },
}

fn vmm_op() -> impl Strategy<Value = VmmOp> {
    prop_oneof![
        (0..6u64, 1..(1u64 << 32)).prop_map(|(handle, bytes)| VmmOp::Create { handle, bytes }),
        (0..6u64).prop_map(|handle| VmmOp::Release { handle }),
        (0..10u64, 0..6u64).prop_map(|(slot, handle)| VmmOp::Map { slot, handle }),
        (0..10u64, 1..4u64).prop_map(|(slot, pages)| VmmOp::Unmap { slot, pages }),
    ]
}

/// CUDA's rule, written out plainly: a handle's memory lives until it is released and no
/// mapping of it is left.
#[derive(Default)]
struct VmmModel {
    /// handle → (bytes, released, mappings)
    handles: HashMap<u64, (u64, bool, u32)>,
    /// address → (handle, counted on the handle)
    maps: BTreeMap<u64, (u64, bool)>,
}

impl VmmModel {
    fn unmap_at(&mut self, addr: u64) {
        let Some((h, counted)) = self.maps.remove(&addr) else {
            return;
        };
        if !counted {
            return;
        }
        if let Some(v) = self.handles.get_mut(&h) {
            v.2 -= 1;
            if v.1 && v.2 == 0 {
                self.handles.remove(&h);
            }
        }
    }

    fn physical(&self) -> u64 {
        self.handles.values().map(|v| v.0).sum()
    }
}

proptest! {
    #[test]
    fn vmm_physical_until_released_and_unmapped(ops in prop::collection::vec(vmm_op(), 1..200)) {
        let mut ledger = Ledger::new();
        let mut s = Sim::new(1, 100);
        let mut m = VmmModel::default();
        let base = 0x7000_0000_0000u64;

        for op in ops {
            let rec = match op {
                VmmOp::Create { handle, bytes } => {
                    if m.handles.remove(&handle).is_some() {
                        for v in m.maps.values_mut() {
                            if v.0 == handle {
                                v.1 = false;
                            }
                        }
                    }
                    m.handles.insert(handle, (bytes, false, 0));
                    s.vmm_create(handle, bytes)
                }
                VmmOp::Release { handle } => {
                    if let Some(v) = m.handles.get_mut(&handle)
                        && !v.1
                    {
                        v.1 = true;
                        if v.2 == 0 {
                            m.handles.remove(&handle);
                        }
                    }
                    s.vmm_release(handle)
                }
                VmmOp::Map { slot, handle } => {
                    let addr = base + slot * PAGE;
                    m.unmap_at(addr);
                    let counted = match m.handles.get_mut(&handle) {
                        Some(v) if !v.1 => {
                            v.2 += 1;
                            true
                        }
                        _ => false,
                    };
                    m.maps.insert(addr, (handle, counted));
                    s.vmm_map(addr, PAGE, handle)
                }
                VmmOp::Unmap { slot, pages } => {
                    let addr = base + slot * PAGE;
                    let starts: Vec<u64> =
                        m.maps.range(addr..addr + pages * PAGE).map(|(a, _)| *a).collect();
                    for a in starts {
                        m.unmap_at(a);
                    }
                    s.vmm_unmap(addr, pages * PAGE)
                }
            };
            ledger.apply(&rec);
            let st = ledger.process(1).expect("known");
            prop_assert_eq!(st.usage.device_bytes, m.physical());
            prop_assert_eq!(ledger.totals().usage.device_bytes, m.physical());
            prop_assert!(st.usage.peak_device_bytes >= st.usage.device_bytes);
            prop_assert_eq!(st.live_allocations().count(), m.handles.len());
            prop_assert!(!st.anomalies.contains_key("accounting_underflow"));
        }
    }
}

#[test]
fn free_of_unknown_never_underflows() {
    let mut ledger = Ledger::new();
    let mut s = Sim::new(1, 100);
    for addr in [1u64, 2, 3] {
        ledger.apply(&s.free(addr));
        ledger.apply(&Record::Free(Call {
            addr: Some(addr),
            mem: Some(Mem::DeviceAsync),
            ..s.call("cuMemFreeAsync")
        }));
    }
    let st = ledger.process(1).expect("known");
    assert_eq!(st.usage.device_bytes, 0);
    assert_eq!(st.anomalies["free_unknown_address"].count, 6);
}
