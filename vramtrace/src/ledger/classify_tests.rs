//! The classifier on hand-built record streams shaped like real workloads, and the invariant
//! that every live byte has exactly one class.

use proptest::prelude::*;

use super::tests::Sim;
use super::*;
use crate::trace::{Call, Mem};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn copy(s: &mut Sim, addr: u64, bytes: u64) -> Record {
    Record::Copy(Call {
        addr: Some(addr),
        bytes: Some(bytes),
        ..s.call("cuMemcpyHtoD_v2")
    })
}

fn class_of(l: &Ledger, proc: u32, addr: u64) -> Class {
    l.live_allocations(proc)
        .find(|a| a.addr == Some(addr))
        .map(|a| a.class)
        .expect("allocation is live")
}

fn classes(l: &Ledger, proc: u32) -> ClassBytes {
    l.process(proc).expect("known").classes()
}

/// Weights loaded and filled; the KV cache in a few large allocations; then activation churn.
#[test]
fn llm_server_shape() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let mut addr = 0x1000_0000u64;
    let mut weights = Vec::new();
    for _ in 0..10 {
        l.apply(&s.alloc(addr, 64 * MIB));
        l.apply(&copy(&mut s, addr, 64 * MIB));
        weights.push(addr);
        addr += GIB;
    }
    let kv = addr;
    l.apply(&s.alloc(kv, 4 * GIB));
    addr += 8 * GIB;
    assert_eq!(class_of(&l, 1, weights[0]), Class::Weights);
    assert_eq!(class_of(&l, 1, kv), Class::KvCache);
    let p = l.process(1).expect("known");
    assert_eq!(p.classifier.phase, Phase::Load);

    for i in 0..40u64 {
        let act = addr + (i % 3) * GIB;
        l.apply(&s.alloc(act, 8 * MIB));
        if i == 39 {
            // The last activation is still live: dynamic.
            break;
        }
        l.apply(&s.free(act));
    }
    let p = l.process(1).expect("known");
    assert_eq!(p.classifier.phase, Phase::Steady);
    let c = classes(&l, 1);
    assert_eq!(c.get(Class::Weights), 640 * MIB);
    assert_eq!(c.get(Class::KvCache), 4 * GIB);
    assert_eq!(c.get(Class::Dynamic), 8 * MIB);
    let w = l
        .live_allocations(1)
        .find(|a| a.addr == Some(weights[0]))
        .expect("live");
    let evidence: Vec<String> = w.evidence.iter().map(ToString::to_string).collect();
    assert_eq!(
        evidence,
        ["allocated in load phase", "filled from host: 100%"]
    );
}

/// vLLM's order: weights, a profiling pass that allocates and frees, then the KV cache as one
/// huge tensor; it reads as dynamic until it has outlived the churn, then as KV cache.
#[test]
fn kv_cache_after_profiling_becomes_long_lived() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    l.apply(&s.alloc(0x1000, GIB));
    l.apply(&copy(&mut s, 0x1000, GIB));
    for i in 0..10u64 {
        let a = 0x10_0000_0000 + i * GIB;
        l.apply(&s.alloc(a, 100 * MIB));
        l.apply(&s.free(a));
    }
    let kv = 0x20_0000_0000;
    l.apply(&s.alloc(kv, 20 * GIB));
    assert_eq!(class_of(&l, 1, kv), Class::Dynamic);
    for i in 0..classify::SURVIVE_FREES {
        let a = 0x30_0000_0000 + i * GIB;
        l.apply(&s.alloc(a, 10 * MIB));
        l.apply(&s.free(a));
    }
    assert_eq!(class_of(&l, 1, kv), Class::KvCache);
    assert_eq!(class_of(&l, 1, 0x1000), Class::Weights);
    let c = classes(&l, 1);
    assert_eq!(c.get(Class::KvCache), 20 * GIB);
    assert_eq!(c.get(Class::Dynamic), 0);
}

fn ctx_destroy(s: &mut Sim, ctx: u64) -> Record {
    Record::CtxDestroy(Call {
        handle: Some(ctx),
        ..s.call("cuCtxDestroy_v2")
    })
}

/// A scratch context made and destroyed with its allocations while loading (the `contexts`
/// workload): teardown, not the process's frees. The weights and the KV cache made after it
/// are still made in the load phase.
#[test]
fn ctx_destroy_does_not_end_loading() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    l.apply(&s.ctx_create(0xc0, 0));
    l.apply(&s.ctx_create(0xc1, 0));
    for i in 0..classify::STEADY_FREES {
        l.apply(&s.alloc(0x10_0000_0000 + i * GIB, 8 * MIB));
    }
    l.apply(&ctx_destroy(&mut s, 0xc1));
    let p = l.process(1).expect("known");
    assert_eq!(p.classifier.phase, Phase::Load);
    assert_eq!((p.classifier.frees, p.classifier.load_end_ts_ns), (0, None));
    assert_eq!(p.frees["cuCtxDestroy_v2"].count, classify::STEADY_FREES);

    l.apply(&s.alloc(0x1000, 64 * MIB));
    l.apply(&copy(&mut s, 0x1000, 64 * MIB));
    l.apply(&s.alloc(0x20_0000_0000, GIB));
    assert_eq!(class_of(&l, 1, 0x1000), Class::Weights);
    assert_eq!(class_of(&l, 1, 0x20_0000_0000), Class::KvCache);

    // The process's own free ends loading.
    l.apply(&s.alloc(0x30_0000_0000, MIB));
    l.apply(&s.free(0x30_0000_0000));
    let p = l.process(1).expect("known");
    assert_eq!((p.classifier.phase, p.classifier.frees), (Phase::Warmup, 1));
    let c = classes(&l, 1);
    assert_eq!(c.get(Class::Weights), 64 * MIB);
    assert_eq!(c.get(Class::KvCache), GIB);
    assert_eq!(c.get(Class::Dynamic), 0);
}

/// A context destroyed in steady state takes its allocations without ageing anything: a buffer
/// made in steady state is long-lived only once the process's own churn has gone past it.
#[test]
fn ctx_destroy_does_not_age_young_allocations() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    l.apply(&s.ctx_create(0xc0, 0));
    for i in 0..classify::STEADY_FREES {
        let a = 0x10_0000_0000 + i * GIB;
        l.apply(&s.alloc(a, MIB));
        l.apply(&s.free(a));
    }
    let young = 0x20_0000_0000;
    l.apply(&s.alloc(young, 256 * MIB));
    l.apply(&s.ctx_create(0xc1, 0));
    for i in 0..2 * classify::SURVIVE_FREES {
        l.apply(&s.alloc(0x30_0000_0000 + i * GIB, MIB));
    }
    l.apply(&ctx_destroy(&mut s, 0xc1));
    let p = l.process(1).expect("known");
    assert_eq!(p.classifier.frees, classify::STEADY_FREES);
    assert_eq!(class_of(&l, 1, young), Class::Dynamic);
    for i in 0..classify::SURVIVE_FREES {
        let a = 0x40_0000_0000 + i * GIB;
        l.apply(&s.alloc(a, MIB));
        l.apply(&s.free(a));
    }
    assert_eq!(class_of(&l, 1, young), Class::KvCache);
}

fn evidence(l: &Ledger, proc: u32, addr: u64) -> Vec<String> {
    l.live_allocations(proc)
        .find(|a| a.addr == Some(addr))
        .expect("allocation is live")
        .evidence
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A buffer with only a header copied in stays a long-lived buffer; filling it later turns it
/// into weights.
#[test]
fn fill_changes_the_class() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    l.apply(&s.alloc(0x1000, 100 * MIB));
    l.apply(&copy(&mut s, 0x1000, 4096));
    assert_eq!(class_of(&l, 1, 0x1000), Class::KvCache);
    assert_eq!(
        evidence(&l, 1, 0x1000),
        ["allocated in load phase", "filled from host: under 1%"]
    );
    l.apply(&copy(&mut s, 0x1000 + 10 * MIB, 60 * MIB));
    assert_eq!(class_of(&l, 1, 0x1000), Class::Weights);
    assert_eq!(classes(&l, 1).get(Class::Weights), 100 * MIB);
    assert_eq!(classes(&l, 1).get(Class::KvCache), 0);
}

/// Weight buffers filled only partly through host copies while loading (12% and 6% of each
/// 96 MiB buffer, the rest by other paths) are weights; a KV cache with a 4 KiB header copied
/// in, and one never filled, are not.
#[test]
fn partly_filled_while_loading_is_weights() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let buf = 96 * MIB;
    let mut weights = Vec::new();
    for i in 0..4u64 {
        let a = 0x10_0000_0000 + i * GIB;
        l.apply(&s.alloc(a, buf));
        let part = buf * if i < 2 { 12 } else { 6 } / 100;
        for q in 0..4 {
            l.apply(&copy(&mut s, a + q * buf / 4, part / 4));
        }
        weights.push(a);
    }
    let (kv_header, kv) = (0x20_0000_0000, 0x30_0000_0000);
    l.apply(&s.alloc(kv_header, 384 * MIB));
    l.apply(&copy(&mut s, kv_header, 4096));
    l.apply(&s.alloc(kv, 256 * MIB));
    for &w in &weights {
        assert_eq!(class_of(&l, 1, w), Class::Weights);
    }
    assert_eq!(
        evidence(&l, 1, weights[0]),
        ["allocated in load phase", "filled from host: 11%"]
    );
    assert_eq!(class_of(&l, 1, kv_header), Class::KvCache);
    assert_eq!(class_of(&l, 1, kv), Class::KvCache);
    // Serving churn changes none of it.
    for i in 0..2 * classify::SURVIVE_FREES {
        let a = 0x40_0000_0000 + i * GIB;
        l.apply(&s.alloc(a, 16 * MIB));
        l.apply(&s.free(a));
    }
    let c = classes(&l, 1);
    assert_eq!(c.get(Class::Weights), 4 * buf);
    assert_eq!(c.get(Class::KvCache), 640 * MIB);
    assert_eq!(c.get(Class::Dynamic), 0);
}

/// The low share counts only copies made while loading: a buffer made in the load phase and
/// filled in part by copies after it (inputs staged into a persistent buffer, a KV cache
/// restored from host while serving) stays a long-lived buffer until it is half filled.
#[test]
fn copies_after_loading_need_half() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let (buf, early) = (0x1000, 0x10_0000_0000);
    l.apply(&s.alloc(buf, 300 * MIB));
    l.apply(&s.alloc(early, 100 * MIB));
    l.apply(&copy(&mut s, early, 2 * MIB));
    l.apply(&s.alloc(0x20_0000_0000, MIB));
    l.apply(&s.free(0x20_0000_0000));
    for i in 0..30 {
        l.apply(&copy(&mut s, buf + i * MIB, MIB));
        l.apply(&copy(&mut s, early + 2 * MIB + i * MIB, MIB));
    }
    assert_eq!(class_of(&l, 1, buf), Class::KvCache);
    assert_eq!(
        evidence(&l, 1, buf),
        [
            "allocated in load phase",
            "filled from host: 10%",
            "not filled while loading"
        ]
    );
    // 2% filled while loading: weights, whatever came after.
    assert_eq!(class_of(&l, 1, early), Class::Weights);
    assert_eq!(
        evidence(&l, 1, early)[1..],
        ["filled from host: 32%", "filled while loading: 2%"]
    );
    l.apply(&copy(&mut s, buf + 30 * MIB, 120 * MIB));
    assert_eq!(class_of(&l, 1, buf), Class::Weights);
}

/// Pool-held bytes are `pool`; host memory is `host_fallback` and a finding.
#[test]
fn pool_and_host_classes() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    l.apply(&s.alloc_async(0x1000, 8 * MIB, None));
    l.apply(&s.alloc_async(0x100_0000, 4 * MIB, None));
    l.apply(&s.free_async(0x1000));
    l.apply(&Record::Alloc(Call {
        addr: Some(0x7f00_0000_0000),
        bytes: Some(32 * MIB),
        mem: Some(Mem::HostPinned),
        flags: Some(1),
        stack: Some(3),
        ..s.call("cuMemHostAlloc")
    }));
    let c = classes(&l, 1);
    assert_eq!(c.get(Class::Pool), 8 * MIB);
    assert_eq!(c.get(Class::HostFallback), 32 * MIB);
    assert_eq!(c.get(Class::Dynamic), 0, "made in the load phase");
    assert_eq!(c.get(Class::KvCache), 4 * MIB);
    let p = l.process(1).expect("known");
    assert_eq!(p.host_fallback.len(), 1);
    let h = &p.host_fallback[0];
    assert_eq!(
        (h.api.as_str(), h.bytes, h.flags, h.stack),
        ("cuMemHostAlloc", 32 * MIB, Some(1), Some(3))
    );
    let u = &p.usage;
    assert_eq!(c.total(), u.device_bytes + u.pool_held_bytes + u.host_bytes);
}

/// VMM chunks: weights filled through their mapping, KV chunks not; host-located chunks are
/// host fallback; at exit the snapshot keeps the classes.
#[test]
fn vmm_chunks_and_exit_snapshot() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let va = 0x7000_0000_0000u64;
    for h in 0..4u64 {
        l.apply(&s.vmm_create(h + 1, 20 * MIB));
        l.apply(&s.vmm_map(va + h * 20 * MIB, 20 * MIB, h + 1));
        if h < 2 {
            l.apply(&copy(&mut s, va + h * 20 * MIB, 20 * MIB));
        }
    }
    l.apply(&Record::VmmCreate(Call {
        handle: Some(9),
        bytes: Some(2 * MIB),
        mem: Some(Mem::VmmHost),
        ..s.call("cuMemCreate")
    }));
    let peak = classes(&l, 1);
    l.apply(&s.exit());
    let p = l.process(1).expect("known");
    let at_exit = p.classes_at_exit();
    assert_eq!(at_exit.get(Class::Weights), 40 * MIB);
    assert_eq!(at_exit.get(Class::KvCache), 40 * MIB);
    assert_eq!(at_exit.get(Class::HostFallback), 2 * MIB);
    assert_eq!(p.classes().total(), 0, "nothing live after exit");
    assert_eq!(p.classes_at_peak.get(Class::Weights), 40 * MIB);
    assert_eq!(peak, at_exit);
    assert_eq!(p.host_fallback_total, 1);
}

/// An out-of-memory failure records the request, the process's classes and its neighbours.
#[test]
fn oom_records_what_was_held() {
    let mut l = Ledger::new();
    let mut a = Sim::new(1, 100);
    let mut b = Sim::new(2, 200);
    for s in [&mut a, &mut b] {
        let p = s.process("python");
        l.apply(&p);
        let ctx = s.ctx_create(0xc0 + u64::from(s.proc), 0);
        l.apply(&ctx);
    }
    l.apply(&a.alloc(0x1000, GIB));
    l.apply(&copy(&mut a, 0x1000, GIB));
    l.apply(&b.alloc(0x9000_0000, 3 * GIB));
    l.set_nvml_context(
        0,
        NvmlAtOom {
            ts_ns: 5,
            free_bytes: Some(MIB),
            used_bytes: Some(79 * GIB),
            total_bytes: Some(80 * GIB),
            traced_bytes: None,
            process_used_bytes: None,
            process_traced_bytes: None,
        },
    );
    let oom = l
        .apply(&Record::Failed(Call {
            ret: 2,
            bytes: Some(40 * GIB),
            mem: Some(Mem::Device),
            ..a.call("cuMemAlloc_v2")
        }))
        .to_vec();
    assert!(matches!(&oom[..], [Change::Oom { proc: 1, .. }]), "{oom:?}");
    // Not memory: no driver.
    let none = l.apply(&Record::Failed(Call {
        ret: 100,
        bytes: Some(GIB),
        mem: Some(Mem::VmmDevice),
        ..a.call("cuMemCreate")
    }));
    assert!(none.is_empty(), "{none:?}");
    // Nor a cuMemCreate the driver refuses (CUDA_ERROR_NOT_PERMITTED, seen on driver 580).
    let refused = l.apply(&Record::Failed(Call {
        ret: 800,
        bytes: Some(2 * MIB),
        mem: Some(Mem::VmmDevice),
        ..a.call("cuMemCreate")
    }));
    assert!(refused.is_empty(), "{refused:?}");
    // A cuMemCreate out of memory is one.
    l.apply(&Record::Failed(Call {
        ret: 2,
        bytes: Some(GIB),
        mem: Some(Mem::VmmDevice),
        ..a.call("cuMemCreate")
    }));
    let p = l.process(1).expect("known");
    assert_eq!(p.ooms.len(), 2);
    let o = &p.ooms[0];
    assert_eq!(o.requested_bytes, Some(40 * GIB));
    assert_eq!(o.device, Some(0));
    assert_eq!(o.device_bytes, GIB);
    assert_eq!(o.live_by_class[&Class::Weights], GIB);
    assert_eq!(o.live_by_class.len(), Class::ALL.len());
    assert_eq!(o.others.len(), 1);
    assert_eq!((o.others[0].pid, o.others[0].device_bytes), (200, 3 * GIB));
    assert_eq!(o.nvml.as_ref().and_then(|n| n.free_bytes), Some(MIB));
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { slot: u64, bytes: u64, mem: Mem },
    Free { slot: u64, is_async: bool },
    Fill { slot: u64, bytes: u64 },
    Vmm { handle: u64, bytes: u64, host: bool },
    Release { handle: u64 },
    Exit,
}

fn op() -> impl Strategy<Value = Op> {
    let mem = prop_oneof![
        Just(Mem::Device),
        Just(Mem::DeviceAsync),
        Just(Mem::HostPinned),
        Just(Mem::Managed),
    ];
    prop_oneof![
        8 => (0..12u64, 0..(1u64 << 32), mem).prop_map(|(slot, bytes, mem)| Op::Alloc { slot, bytes, mem }),
        8 => (0..14u64, any::<bool>()).prop_map(|(slot, is_async)| Op::Free { slot, is_async }),
        4 => (0..12u64, 0..(1u64 << 32)).prop_map(|(slot, bytes)| Op::Fill { slot, bytes }),
        2 => (0..4u64, 1..(1u64 << 30), any::<bool>()).prop_map(|(handle, bytes, host)| Op::Vmm { handle, bytes, host }),
        2 => (0..4u64).prop_map(|handle| Op::Release { handle }),
        1 => Just(Op::Exit),
    ]
}

proptest! {
    /// Whatever happens, every live byte has exactly one class: the classes sum to the
    /// device, pool-held and host bytes, at every step and in every snapshot.
    #[test]
    fn every_live_byte_has_one_class(ops in prop::collection::vec(op(), 1..300)) {
        let mut l = Ledger::new();
        let mut s = Sim::new(1, 100);
        const PAGE: u64 = 1 << 33;
        for op in ops {
            let rec = match op {
                Op::Alloc { slot, bytes, mem } => {
                    let addr = 0x1000 + slot * PAGE;
                    if mem == Mem::DeviceAsync {
                        s.alloc_async(addr, bytes, None)
                    } else {
                        s.alloc_mem("alloc", mem, addr, bytes)
                    }
                }
                Op::Free { slot, is_async } => {
                    let addr = 0x1000 + slot * PAGE;
                    if is_async { s.free_async(addr) } else { s.free(addr) }
                }
                Op::Fill { slot, bytes } => copy(&mut s, 0x1000 + slot * PAGE, bytes),
                Op::Vmm { handle, bytes, host } => Record::VmmCreate(Call {
                    handle: Some(handle),
                    bytes: Some(bytes),
                    mem: Some(if host { Mem::VmmHost } else { Mem::VmmDevice }),
                    ..s.call("cuMemCreate")
                }),
                Op::Release { handle } => s.vmm_release(handle),
                Op::Exit => {
                    let e = s.exit();
                    l.apply(&e);
                    let p = l.process(1).expect("known");
                    let snap = p.exit.as_ref().expect("exited");
                    prop_assert_eq!(
                        snap.classes.total(),
                        snap.device_bytes + snap.pool_held_bytes + snap.host_bytes
                    );
                    // A new process generation for what follows.
                    s = Sim::new(s.proc + 1, s.pid + 1);
                    continue;
                }
            };
            l.apply(&rec);
            let p = l.process(s.proc).expect("known");
            let u = &p.usage;
            let c = p.classes();
            prop_assert_eq!(c.total(), u.device_bytes + u.pool_held_bytes + u.host_bytes);
            let by_alloc: u64 = p.live_allocations().map(|a| a.bytes).sum();
            prop_assert_eq!(by_alloc, u.device_bytes + u.host_bytes);
            for class in Class::ALL {
                let sum: u64 = p
                    .live_allocations()
                    .filter(|a| a.class == class)
                    .map(|a| a.bytes)
                    .sum();
                if class == Class::Pool {
                    prop_assert_eq!(sum, 0);
                } else {
                    prop_assert_eq!(sum, c.get(class), "{:?}", class);
                }
            }
            prop_assert!(
                p.classes_at_peak.total() - p.classes_at_peak.get(Class::HostFallback)
                    <= p.usage.peak_device_and_pool_bytes
            );
            prop_assert_eq!(l.classes().total(), {
                let t = &l.totals().usage;
                t.device_bytes + t.pool_held_bytes + t.host_bytes
            });
        }
    }
}

#[test]
fn free_at_a_failure_counts_what_was_taken_since_the_sample() {
    use crate::ledger::{NvmlAtOom, Oom, OomNeighbour};
    let oom = Oom {
        device_bytes: 72 * GIB,
        others: vec![OomNeighbour {
            device_bytes: GIB,
            pool_held_bytes: GIB,
            ..OomNeighbour::default()
        }],
        nvml: Some(NvmlAtOom {
            free_bytes: Some(79 * GIB),
            traced_bytes: Some(GIB),
            ..NvmlAtOom::default()
        }),
        ..Oom::default()
    };
    assert_eq!(oom.traced_on_device(), 74 * GIB);
    // 73 GiB taken since the sample, which saw 1 GiB traced and 79 GiB free.
    assert_eq!(oom.free_at_failure(), Some(6 * GIB));
    let unknown_then = Oom {
        nvml: Some(NvmlAtOom {
            free_bytes: Some(79 * GIB),
            traced_bytes: None,
            ..NvmlAtOom::default()
        }),
        ..oom.clone()
    };
    assert_eq!(
        unknown_then.free_at_failure(),
        Some(79 * GIB),
        "nothing known to subtract"
    );
    assert_eq!(Oom::default().free_at_failure(), None);
}
