//! eBPF integration tests on the simulated driver: the real programs, attached for real,
//! recording workloads whose ground truth is known exactly.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::truth::{
    as_map, check_against_truth, check_calls, check_calls_against_truth, check_exit_against_truth,
};
use common::{Recorded, record, record_env, sim};
use serde_json::Value;
use vramtrace::trace::Record;

#[test]
fn llm_server_with_four_threads() {
    let (lib, _) = sim();
    let r = record(lib, "llm-server", &["--threads", "4"]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().unwrap() as u32;
    let tids: BTreeSet<u32> = r
        .records
        .iter()
        .filter_map(|rec| rec.call())
        .filter(|c| c.pid == pid && &*c.api == "cuMemAlloc_v2")
        .map(|c| c.tid)
        .collect();
    assert!(tids.len() >= 4, "allocations from 4+ threads, got {tids:?}");
    // Weights are filled from host: every copy lands inside a traced allocation.
    let copies = r
        .records
        .iter()
        .filter(|rec| matches!(rec, Record::Copy(_)))
        .count();
    assert!(copies > 0);
}

#[test]
fn training_with_pitch_and_arrays() {
    let (lib, _) = sim();
    let r = record(lib, "training", &[]);
    check_against_truth(&r);
    assert!(
        r.records
            .iter()
            .any(|rec| matches!(rec, Record::Alloc(c) if c.pitch.is_some()))
    );
}

#[test]
fn stream_ordered_pools() {
    let (lib, _) = sim();
    check_against_truth(&record(lib, "pools", &[]));
}

/// The synchronization entry points that `pid` called and that succeeded, as traced.
fn synchronizations(r: &Recorded, pid: u32) -> BTreeSet<&str> {
    r.records
        .iter()
        .filter_map(|rec| match rec {
            Record::Sync(c) if c.pid == pid && c.ret == 0 => Some(&*c.api),
            _ => None,
        })
        .collect()
}

/// Stream, per-thread stream, event and context synchronizations.
fn every_synchronization() -> BTreeSet<&'static str> {
    BTreeSet::from([
        "cuCtxSynchronize",
        "cuEventSynchronize",
        "cuStreamSynchronize",
        "cuStreamSynchronize_ptsz",
    ])
}

/// A pool keeps its release threshold of reserved bytes through stream, per-thread stream,
/// event and context synchronizations; the default pool keeps nothing. The held bytes at
/// exit (the threshold, plus a block freed after the last synchronization) are exact.
#[test]
fn pool_release_thresholds_at_synchronizations() {
    let (lib, _) = sim();
    let r = record(lib, "pool-release", &[]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    assert_eq!(synchronizations(&r, pid), every_synchronization());
    assert_eq!(
        r.truth["pool_held_bytes_at_exit"].as_u64(),
        Some(18 << 20),
        "the 12 MiB threshold and the 6 MiB block freed after the last synchronization"
    );
}

/// `probe-all` on the simulated driver: every hooked entry point at each CUDA version,
/// against the workload's ground truth, what it holds at exit included; the pool's release
/// threshold and the synchronizations decide what the default pool holds at exit.
#[test]
fn probe_all_matches_its_ground_truth_at_every_cuda_version() {
    let (lib, _) = sim();
    for version in ["12000", "12050", "13000"] {
        let r = record(lib, "probe-all", &["--cuda-version", version]);
        // probe-all ends by releasing the primary context: what that frees (device, pinned,
        // managed and registered memory) and what it leaves (stream-ordered memory) decide
        // the exit totals.
        let pid = check_calls_against_truth(&r);
        check_exit_against_truth(&r, pid);
        let procs = r.analysis["processes"].as_array().expect("processes");
        let p = procs
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
            .expect("the workload in the analysis");
        assert_eq!(
            (
                p["device_bytes_at_exit"].as_u64(),
                p["host_bytes_at_exit"].as_u64()
            ),
            (Some(2 << 20), Some(0)),
            "cudaVersion {version}: two 1 MiB stream-ordered allocations outlive the primary \
             context; its pinned, managed and registered host memory went with it"
        );
        let attrs: Vec<(Option<u32>, Option<u64>)> = r
            .records
            .iter()
            .filter_map(|rec| match rec {
                Record::PoolAttr(c) if c.pid == pid => Some((c.attr, c.value)),
                _ => None,
            })
            .collect();
        // Threshold set to 1 MiB, read back, the reserved bytes read (nothing held after
        // the trim), the threshold set to 0, then to 1 MiB again: 1 MiB held at exit.
        assert_eq!(
            attrs,
            vec![
                (Some(4), Some(1 << 20)),
                (Some(4), Some(1 << 20)),
                (Some(5), Some(0)),
                (Some(4), Some(0)),
                (Some(4), Some(1 << 20)),
            ],
            "cudaVersion {version}"
        );
        assert_eq!(p["pool_held_bytes_at_exit"].as_u64(), Some(1 << 20));
        // probe-all also calls cuCtxSynchronize_v2, which takes the context to wait for.
        let mut want = every_synchronization();
        want.insert("cuCtxSynchronize_v2");
        assert_eq!(synchronizations(&r, pid), want, "cudaVersion {version}");
    }
}

#[test]
fn virtual_memory_management() {
    let (lib, _) = sim();
    check_against_truth(&record(lib, "vmm", &[]));
}

#[test]
fn host_memory() {
    let (lib, _) = sim();
    check_against_truth(&record(lib, "host", &[]));
}

#[test]
fn out_of_memory_is_a_failure_not_an_allocation() {
    let (lib, _) = sim();
    let r = record(lib, "oom", &[]);
    assert_eq!(r.status, 1, "vramtrace exits with the command's status");
    check_against_truth(&r);
    assert!(
        r.records
            .iter()
            .any(|rec| matches!(rec, Record::Failed(c) if c.ret == 2))
    );
}

/// A destroyed context takes its device, pinned and managed memory; a stream-ordered
/// allocation made in it outlives it and is freed later, into its pool, as any other.
#[test]
fn context_destroy_frees_its_allocations() {
    let (lib, _) = sim();
    let r = record(lib, "contexts", &[]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().expect("pid");
    let p = r.analysis["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(pid))
        .expect("the workload in the analysis");
    assert_eq!(
        p["anomalies"].as_object().map(|a| a.len()),
        Some(0),
        "the stream-ordered free after the destroy is of a live allocation: {}",
        p["anomalies"]
    );
    assert_eq!(
        p["ended"]["pool_free"]["bytes"].as_u64(),
        Some(1 << 20),
        "{}",
        p["ended"]
    );
}

#[test]
fn a_context_made_by_cu_ctx_create_v4_books_its_memory_on_its_device() {
    let (lib, _) = sim();
    let r = record_env(lib, &[], &[("SIMCUDA_DEVICES", "2")], "ctx-v4", &[]);
    check_against_truth(&r);
    let truth = &r.truth["ctx_v4"];
    assert_eq!(truth["api"].as_str(), Some("cuCtxCreate_v4"), "{truth}");
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    // The call is read by its own signature: flags 4 on device 1, not device 4.
    let created: Vec<_> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::CtxCreate(c) if c.pid == pid && &*c.api == "cuCtxCreate_v4" => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    let c = created[0];
    assert_eq!(
        (c.device, c.flags, c.handle),
        (
            truth["device"].as_i64().map(|d| d as i32),
            truth["flags"].as_u64(),
            truth["ctx"].as_u64()
        ),
        "{c:?}"
    );
    // What was allocated in it is on device 1; the primary context's on device 0.
    check_device_bytes_at_exit(&r, pid, &truth["device_bytes"]);
}

/// Each device's bytes at exit in the analysis of the workload `pid` are `want`'s
/// (`{"ORDINAL": bytes}`).
fn check_device_bytes_at_exit(r: &Recorded, pid: u32, want: &Value) {
    let p = r.analysis["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .expect("the workload in the analysis");
    let by_device: BTreeMap<i64, u64> = p["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["device"].as_i64().expect("a known device"),
                d["device_bytes_at_exit"].as_u64().expect("bytes"),
            )
        })
        .collect();
    let want: BTreeMap<i64, u64> = as_map(want)
        .into_iter()
        .map(|(d, b)| (d.parse().expect("ordinal"), b))
        .collect();
    assert_eq!(by_device, want, "{:#}", p["devices"]);
}

/// Memory allocated while a green context's `CUcontext` is current is on the green
/// context's device, and is the primary context's: destroying the green context leaves it.
#[test]
fn green_context_memory_is_on_its_device_and_outlives_it() {
    let (lib, _) = sim();
    let r = record_env(lib, &[], &[("SIMCUDA_DEVICES", "2")], "green-ctx", &[]);
    check_against_truth(&r);
    let truth = &r.truth["green_ctx"];
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    // Each call is read by its own signature: the green handle, the device, the CUcontext.
    let made: Vec<Value> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::CtxCreate(c) if c.pid == pid && &*c.api == "cuCtxFromGreenCtx" => {
                Some(serde_json::json!({"green": c.green, "ctx": c.handle}))
            }
            _ => None,
        })
        .collect();
    assert_eq!(&Value::from(made), &truth["contexts"]);
    let created: Vec<_> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::CtxCreate(c) if c.pid == pid && &*c.api == "cuGreenCtxCreate" => {
                Some((c.device, c.flags))
            }
            _ => None,
        })
        .collect();
    let device = truth["device"].as_i64().map(|d| d as i32);
    assert_eq!(created, [(device, Some(1)), (device, Some(1))]);
    check_device_bytes_at_exit(&r, pid, &truth["device_bytes"]);
}

#[test]
fn exit_without_free() {
    let (lib, _) = sim();
    check_against_truth(&record(lib, "exit-without-free", &[]));
}

#[test]
fn stacks_name_the_calling_function() {
    let (lib, _) = sim();
    // Without `--hold-new`: named while the process runs, which the workload makes last a
    // second past its calls (it would otherwise end in some 40 ms, perhaps before a reader
    // on a loaded machine has read what it maps).
    let r = record(lib, "llm-server", &["--threads", "1", "--hold", "1"]);
    let stacks: Vec<_> = r
        .records
        .iter()
        .filter_map(|rec| {
            if let Record::Stack(s) = rec {
                Some(s)
            } else {
                None
            }
        })
        .collect();
    assert!(!stacks.is_empty(), "stacks are recorded");
    // Frame 0 is the immediate caller, inside the workload binary.
    let named = stacks.iter().any(|s| {
        s.frames.first().is_some_and(|f| {
            f.file
                .as_deref()
                .is_some_and(|p| p.ends_with("vramtrace-workload"))
                && f.offset.is_some()
        })
    });
    assert!(
        named,
        "a frame 0 normalized into the workload binary: {stacks:#?}"
    );
    let depth = stacks.iter().map(|s| s.frames.len()).max().unwrap_or(0);
    assert!(
        depth >= 3,
        "frame-pointer walk beyond the caller (max depth {depth})"
    );
}

/// The size of the allocation that springs the simulated driver's trap.
const TRAP_BYTES: u64 = 5 << 20;

#[test]
fn a_thread_that_ends_inside_a_call_leaves_an_unreturned_record() {
    let (lib, _) = sim();
    let trap_bytes = TRAP_BYTES.to_string();
    let r = record_env(
        lib,
        &[],
        &[
            ("SIMCUDA_TRAP", "exit-thread"),
            ("SIMCUDA_TRAP_BYTES", &trap_bytes),
        ],
        "trapped-call",
        &[],
    );
    // Counts, bytes, and exactly one call that never returned, as the workload says.
    check_against_truth(&r);
    let tid = r.truth["trapped_tid"].as_u64().expect("trapped_tid") as u32;
    let (at, call) = r
        .records
        .iter()
        .enumerate()
        .find_map(|(i, rec)| match rec {
            Record::Unreturned(c) => Some((i, c)),
            _ => None,
        })
        .expect("an unreturned record");
    assert_eq!(
        (&*call.api, call.tid, call.bytes, call.addr),
        ("cuMemAlloc_v2", tid, Some(TRAP_BYTES), None),
        "{call:?}"
    );
    // It was delivered when the thread ended, not when the process did: before the main
    // thread's allocation that waited for the thread to be gone.
    let after = r
        .records
        .iter()
        .position(|rec| matches!(rec, Record::Alloc(c) if c.bytes == Some(4 << 20)))
        .expect("the allocation after the thread ended");
    assert!(
        at < after,
        "unreturned at line {at}, after-allocation at {after}"
    );
    // Nothing was lost, nothing counted twice: no allocation of the trapped size either.
    assert!(
        !r.records
            .iter()
            .any(|rec| matches!(rec, Record::Alloc(c) if c.bytes == Some(TRAP_BYTES))),
        "the call that never returned is not an allocation"
    );
}

/// Unified, 2D and 3D copies: each traced under its own symbol with both of its addresses
/// decoded, the fills told from the device-to-device copies (the classes are checked in
/// `ebpf_classify`).
#[test]
fn unified_2d_and_3d_copies_are_decoded() {
    use vramtrace::trace::CopySrc;
    let (lib, _) = sim();
    let r = record(lib, "copies", &[]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    let copies: Vec<_> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::Copy(c) if c.pid == pid && c.api.starts_with("cuMemcpy") => Some(c),
            _ => None,
        })
        .collect();
    let of = |api: &str| copies.iter().filter(|c| &*c.api == api).collect::<Vec<_>>();
    for api in [
        "cuMemcpy",
        "cuMemcpyAsync_ptsz",
        "cuMemcpy2D_v2",
        "cuMemcpy2DAsync_v2",
        "cuMemcpy3D_v2",
        "cuMemcpy3DAsync_v2",
    ] {
        assert!(!of(api).is_empty(), "{api} traced");
        for c in of(api) {
            assert!(c.unreadable.is_empty(), "{api}: {:?}", c.unreadable);
            assert!(c.bytes.is_some_and(|b| b > 0), "{api} has its size");
        }
    }
    // The 2D fills: 4096 rows of 1 KiB from host memory into a 1 KiB pitch.
    for c in of("cuMemcpy2D_v2") {
        assert_eq!(
            (c.src_mem, c.bytes, c.pitch),
            (Some(CopySrc::Host), Some(4 << 20), Some(1024))
        );
    }
    // The 3D fills come from a unified host address, 64 × 256 × 1 KiB.
    for c in of("cuMemcpy3DAsync_v2") {
        assert_eq!(
            (c.src_mem, c.bytes),
            (Some(CopySrc::Unified), Some(16 << 20))
        );
        assert!(c.addr.is_some() && c.src.is_some());
    }
    // The device-to-device ones carry their device source.
    let [c2] = of("cuMemcpy2DAsync_v2")[..] else {
        panic!("one cuMemcpy2DAsync_v2")
    };
    assert_eq!(
        (c2.src_mem, c2.bytes),
        (Some(CopySrc::Device), Some(32 << 20))
    );
    let [c3] = of("cuMemcpy3D_v2")[..] else {
        panic!("one cuMemcpy3D_v2")
    };
    assert_eq!(c3.src_mem, Some(CopySrc::Unified));
    assert_eq!(c3.src, c2.src, "both from the first weight buffer");
}

/// The Ledger after every record before the first exit, and each allocation that ended on
/// the way, with the record that ended it.
fn replay_to_exit(
    r: &Recorded,
) -> (
    vramtrace::ledger::Ledger,
    Vec<(std::sync::Arc<vramtrace::ledger::LiveAllocation>, &Record)>,
) {
    let mut ledger = vramtrace::ledger::Ledger::new();
    let mut ended = Vec::new();
    for rec in r
        .records
        .iter()
        .take_while(|rec| !matches!(rec, Record::Exit(_)))
    {
        ledger.apply(rec);
        for ch in ledger.changes() {
            if let vramtrace::ledger::Change::Ended { alloc, .. } = ch {
                ended.push((alloc.clone(), rec));
            }
        }
    }
    (ledger, ended)
}

/// Sparse arrays: made without memory, each `cuMemMapArrayAsync` operation traced with its
/// array, region and the memory mapped there; the weights released while mapped end when
/// their region is unmapped, the KV cache when its array is destroyed, and the weights in the
/// deferred-mapping array's mip tail are held at exit by that mapping alone. No anomaly.
#[test]
fn sparse_arrays_hold_what_is_mapped_into_them() {
    let (lib, _) = sim();
    let r = record(lib, "sparse-arrays", &[]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    let arrays: Vec<u64> = r.truth["sparse"]["arrays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let ops: Vec<(&str, &str, Option<u64>, vramtrace::trace::ArrayRegion)> = r
        .records
        .iter()
        .filter(|rec| rec.kind().starts_with("array_"))
        .filter_map(|rec| {
            let c = rec.call()?;
            (c.pid == pid).then(|| (rec.kind(), &*c.api, c.handle, *c.region.clone().unwrap()))
        })
        .collect();
    let level = |x: u64| vramtrace::trace::ArrayRegion {
        miptail: false,
        level: 0,
        layer: 0,
        offset: [x, 0, 0],
        extent: [512, 1024, 1],
    };
    let tail = vramtrace::trace::ArrayRegion {
        miptail: true,
        level: 0,
        layer: 0,
        offset: [0; 3],
        extent: [2 << 20, 0, 0],
    };
    assert_eq!(
        ops,
        [
            ("array_map", "cuMemMapArrayAsync", Some(arrays[0]), level(0)),
            (
                "array_map",
                "cuMemMapArrayAsync_ptsz",
                Some(arrays[0]),
                level(512)
            ),
            (
                "array_unmap",
                "cuMemMapArrayAsync",
                Some(arrays[0]),
                level(0)
            ),
            ("array_map", "cuMemMapArrayAsync", Some(arrays[1]), tail),
        ]
    );
    let (ledger, ended) = replay_to_exit(&r);
    let ended: Vec<_> = ended
        .iter()
        .map(|(a, rec)| (a.mem, a.bytes, rec.kind()))
        .collect();
    use vramtrace::trace::Mem;
    let mib2 = 2 << 20;
    assert_eq!(
        ended,
        [
            (Mem::VmmDevice, mib2, "array_unmap"),
            // The destroy ends the array (no memory of its own), then what it held.
            (Mem::Array, 0, "free"),
            (Mem::VmmDevice, mib2, "free"),
        ]
    );
    let p = ledger.processes().find(|p| p.pid == pid).unwrap();
    assert_eq!(p.usage.device_bytes, mib2);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// Multicast objects: every call traced and decoded by its own signature (the `_v2` binds
/// name the device), the objects hold no memory, and what is bound stays while bound: the
/// weights released while bound end at their unbind, the KV cache released and unmapped ends
/// when its object (released while mapped) is unmapped, and the weights bound to the second
/// object are the only memory held at exit. No anomaly.
#[test]
fn multicast_bindings_keep_memory_and_the_objects_hold_none() {
    let (lib, _) = sim();
    let r = record(lib, "multicast", &[]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    let ours = |c: &vramtrace::trace::Call| c.pid == pid;
    let kinds: Vec<(&str, &str)> = r
        .records
        .iter()
        .filter(|rec| rec.call().is_some_and(ours) && rec.kind().starts_with("multicast"))
        .map(|rec| (rec.kind(), &*rec.call().unwrap().api))
        .collect();
    assert_eq!(
        kinds,
        [
            ("multicast_create", "cuMulticastCreate"),
            ("multicast_bind", "cuMulticastBindMem"),
            ("multicast_bind", "cuMulticastBindAddr_v2"),
            ("multicast_unbind", "cuMulticastUnbind"),
            ("multicast_create", "cuMulticastCreate"),
            ("multicast_bind", "cuMulticastBindMem_v2"),
        ]
    );
    let objects: Vec<u64> = r.truth["multicast"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let calls: Vec<&vramtrace::trace::Call> = r
        .records
        .iter()
        .filter(|rec| rec.kind().starts_with("multicast"))
        .filter_map(Record::call)
        .filter(|c| ours(c))
        .collect();
    let mib4 = 4 << 20;
    // Decoded by signature: the object, its offset, the bytes; the device where `_v2`
    // names it; the memory by handle (`bound`) or by address.
    assert_eq!(
        (calls[0].handle, calls[0].bytes, calls[0].count),
        (Some(objects[0]), Some(2 * mib4), Some(1))
    );
    assert_eq!(
        (
            calls[1].handle,
            calls[1].offset,
            calls[1].bytes,
            calls[1].device
        ),
        (Some(objects[0]), Some(0), Some(mib4), None)
    );
    assert!(calls[1].bound.is_some() && calls[1].addr.is_none());
    assert_eq!(
        (
            calls[2].handle,
            calls[2].offset,
            calls[2].bytes,
            calls[2].device
        ),
        (Some(objects[0]), Some(mib4), Some(mib4), Some(0))
    );
    assert!(calls[2].bound.is_none() && calls[2].addr.is_some());
    assert_eq!(
        (calls[5].handle, calls[5].offset, calls[5].device),
        (Some(objects[1]), Some(0), Some(0))
    );

    // The Ledger: the handles end where the bindings let them go.
    let (ledger, ended) = replay_to_exit(&r);
    let ended: Vec<_> = ended
        .iter()
        .map(|(a, rec)| (a.handle, rec.kind(), rec.call().map(|c| c.api.to_string())))
        .collect();
    let weights = calls[1].bound.as_ref().unwrap().handle;
    // The KV cache: the handle mapped where it was bound by address.
    let kv = r.records.iter().find_map(|rec| match rec {
        Record::VmmMap(c) if ours(c) && c.addr == calls[2].addr => c.handle,
        _ => None,
    });
    assert_eq!(
        ended,
        [
            (
                Some(weights),
                "multicast_unbind",
                Some("cuMulticastUnbind".into())
            ),
            (kv, "vmm_unmap", Some("cuMemUnmap".into())),
        ],
        "the weights end at their unbind, the KV cache at its object's unmapping"
    );
    let p = ledger.processes().find(|p| p.pid == pid).unwrap();
    let live: Vec<_> = p.live_allocations().map(|a| a.handle).collect();
    assert_eq!(live, [calls[5].bound.as_ref().map(|b| b.handle)]);
    assert_eq!(p.usage.device_bytes, mib4);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// Batches of copies: each traced as one `copy` record carrying the copies the probe read
/// (the first four of `cuMemcpyBatchAsync*`'s arrays, the first operation of
/// `cuMemcpy3DBatchAsync*`), as the workload made them, with the batch's length; the
/// weights they fill from host memory are weights, the KV cache written from the weights is
/// not filled; the batch of six is said to have two copies unread.
#[test]
fn batches_of_copies_fill_by_destination_and_say_what_was_not_read() {
    let (lib, _) = sim();
    let r = record(lib, "batch-copies", &[]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    let traced: Vec<_> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::Copy(c) if c.pid == pid && c.api.contains("Batch") => Some(c),
            _ => None,
        })
        .collect();
    let u = |v: &Value| v.as_u64().unwrap();
    let batches = r.truth["batch"]["batches"].as_array().unwrap();
    let plain: Vec<_> = traced.iter().filter(|c| !c.api.contains("3D")).collect();
    assert_eq!(plain.len(), batches.len());
    for (c, b) in plain.iter().zip(batches) {
        let dsts: Vec<u64> = b["dsts"].as_array().unwrap().iter().map(u).collect();
        let srcs: Vec<u64> = b["srcs"].as_array().unwrap().iter().map(u).collect();
        let sizes: Vec<u64> = b["sizes"].as_array().unwrap().iter().map(u).collect();
        assert_eq!(c.count, Some(dsts.len() as u64), "{}", b["name"]);
        let mut read = vec![(c.addr.unwrap(), c.src.unwrap(), c.bytes.unwrap())];
        for x in c.copies.iter().flat_map(|x| x.iter()) {
            read.push((x.addr.unwrap(), x.src.unwrap(), x.bytes));
        }
        let made: Vec<(u64, u64, u64)> = (0..dsts.len().min(4))
            .map(|i| (dsts[i], srcs[i], sizes[i]))
            .collect();
        assert_eq!(read, made, "{}", b["name"]);
    }
    let apis: Vec<&str> = traced.iter().map(|c| &*c.api).collect();
    assert_eq!(
        apis,
        [
            "cuMemcpyBatchAsync_v2",
            "cuMemcpyBatchAsync",
            "cuMemcpy3DBatchAsync_v2",
            "cuMemcpyBatchAsync_v2",
            "cuMemcpyBatchAsync_v2"
        ]
    );
    let op = &r.truth["batch"]["op3d"];
    let c3 = traced[2];
    assert_eq!(
        (c3.addr, c3.src, c3.bytes, c3.count),
        (
            op["dst"].as_u64(),
            op["src"].as_u64(),
            op["bytes"].as_u64(),
            Some(1)
        )
    );

    // The Ledger: every weight buffer filled, the KV cache not; two copies said unread.
    let mut ledger = vramtrace::ledger::Ledger::new();
    for rec in r
        .records
        .iter()
        .take_while(|rec| !matches!(rec, Record::Exit(_)))
    {
        ledger.apply(rec);
    }
    let proc = ledger.processes().find(|p| p.pid == pid).unwrap();
    let kv = u(&batches[2]["dsts"][0]);
    assert_eq!(proc.live_allocations().count(), 8);
    for a in proc.live_allocations() {
        if a.addr == Some(kv) {
            assert_eq!(a.filled_from_host, 0);
        } else {
            assert!(a.filled_from_host >= a.bytes, "{:?} filled", a.addr);
        }
    }
    let unread = &proc.anomalies["batch_copies_unread"];
    assert_eq!(unread.count, 1);
    assert!(
        unread.examples[0].contains("4 of 6 copies read"),
        "{:?}",
        unread.examples
    );
}

/// Allocations from pools of managed or host memory are host memory: the bytes at exit, by
/// where they live, are the workload's.
#[test]
fn managed_and_host_pools_hand_out_host_memory() {
    let (lib, _) = sim();
    let r = record(lib, "host-pools", &[]);
    check_against_truth(&r);
    assert!(
        r.truth["host_bytes_at_exit"].as_u64().unwrap_or(0) > 0,
        "some host-pool memory is live at exit"
    );
}

/// Two processes share memory by every way the driver offers (IPC handles opened with both
/// exported names, a pool pointer from a pool shared by descriptor, a shareable VMM handle):
/// each import is traced with the handle bytes read from the caller's stack, or with the open
/// file its descriptor is, matched to its export and attributed to the exporter; nothing is
/// counted twice; the 16 MiB the exporter frees while the importer
/// maps it stays booked until the importer's last close.
#[test]
fn memory_shared_between_processes_is_mapped_not_owned_and_attributed() {
    let (lib, _) = sim();
    let r = record(lib, "ipc", &[]);
    check_against_truth(&r);
    let ipc = &r.truth["ipc"];
    let exporter = r.truth["pid"].as_u64().unwrap() as u32;
    let importer = check_calls(&r, &ipc["importer"]);
    assert_ne!(importer, exporter);
    let mib = 1u64 << 20;

    // Every export and import carries the 64 bytes the workload had, whole.
    let shares = |kind: &str, pid: u32| -> BTreeMap<String, Vec<String>> {
        let mut m = BTreeMap::<String, Vec<String>>::new();
        for rec in &r.records {
            let Some(c) = rec.call() else { continue };
            if rec.kind() == kind && c.pid == pid && c.ret == 0 {
                m.entry(c.api.to_string())
                    .or_default()
                    .push(c.share.clone().unwrap_or_default());
            }
        }
        m
    };
    let h = |k: &str| ipc["handles"][k].as_str().unwrap().to_owned();
    let exported = shares("export", exporter);
    assert_eq!(exported["cuIpcGetMemHandle"], [h("a"), h("b")]);
    assert_eq!(exported["cuMemPoolExportPointer"], [h("p")]);
    let imported = shares("import", importer);
    assert_eq!(imported["cuIpcOpenMemHandle_v2"], [h("a"), h("a")]);
    assert_eq!(imported["cuIpcOpenMemHandle"], [h("b")]);
    assert_eq!(imported["cuMemPoolImportPointer"], [h("p")]);
    // The descriptor the exporter got, and the one the importer passed (inherited: the same).
    let fds: Vec<(String, Option<u64>)> = r
        .records
        .iter()
        .filter_map(|rec| rec.call())
        .filter(|c| c.api.contains("ShareableHandle"))
        .map(|c| (c.api.to_string(), c.os_handle))
        .collect();
    let (fd, pool_fd) = (ipc["fd"].as_u64(), ipc["pool_fd"].as_u64());
    assert_eq!(
        fds,
        [
            ("cuMemPoolExportToShareableHandle".to_owned(), pool_fd),
            ("cuMemExportToShareableHandle".to_owned(), fd),
            ("cuMemPoolImportFromShareableHandle".to_owned(), pool_fd),
            ("cuMemImportFromShareableHandle".to_owned(), fd)
        ]
    );
    // The exported pool is learned by the importer as a pool, not as memory.
    let pool_import = r
        .records
        .iter()
        .find(|rec| {
            rec.call()
                .is_some_and(|c| &*c.api == "cuMemPoolImportFromShareableHandle")
        })
        .unwrap();
    assert_eq!(pool_import.kind(), "pool_create");
    // The handle of no process failed, with the driver's code.
    let bad = r
        .records
        .iter()
        .find(|rec| matches!(rec, Record::Failed(c) if c.pid == importer))
        .and_then(|rec| rec.call())
        .expect("the failed open is traced");
    assert_eq!(bad.ret, 1);
    assert_eq!(bad.share.as_deref(), Some(&*"5a".repeat(64)));

    // The importer holds nothing of its own; its imports name their owner.
    let procs = r.analysis["processes"].as_array().unwrap();
    let of = |pid: u32| {
        procs
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
            .unwrap()
    };
    let imp = of(importer);
    assert_eq!(imp["peak_device_bytes"].as_u64(), Some(0));
    assert_eq!(imp["device_bytes_at_exit"].as_u64(), Some(0));
    let imports = imp["imports"].as_array().expect("imports in the analysis");
    let owned: BTreeMap<u64, (u64, String)> = imports
        .iter()
        .filter(|m| m["owner"]["addr"].is_u64())
        .map(|m| {
            (
                m["owner"]["addr"].as_u64().unwrap(),
                (
                    m["bytes"].as_u64().unwrap(),
                    m["from"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let from = format!("mapped from PID {exporter}");
    let addr = |k: &str| ipc["addrs"][k].as_u64().unwrap();
    assert_eq!(
        owned,
        BTreeMap::from([
            (addr("a"), (16 * mib, from.clone())),
            (addr("b"), (8 * mib, from.clone())),
            (addr("p"), (4 * mib, from.clone())),
        ])
    );
    // The shareable VMM handle: its descriptor is the same open file in both processes, so
    // the mapping names the exporter's handle (not mapped there: no address).
    let vmm: Vec<&Value> = imports
        .iter()
        .filter(|m| !m["owner"]["addr"].is_u64())
        .collect();
    assert_eq!(vmm.len(), 1);
    assert_eq!(vmm[0]["bytes"].as_u64(), Some(2 * mib));
    assert_eq!(vmm[0]["api"], "cuMemImportFromShareableHandle");
    assert_eq!(vmm[0]["from"], from);
    assert_eq!(vmm[0]["owner"]["pid"].as_u64(), Some(u64::from(exporter)));
    assert_eq!(vmm[0]["owner"]["api"], "cuMemCreate");
    let files: Vec<Option<u64>> = r
        .records
        .iter()
        .filter_map(|rec| rec.call())
        .filter(|c| c.api.contains("ShareableHandle"))
        .map(|c| c.file)
        .collect();
    assert!(files.iter().all(Option::is_some), "{files:?}");
    assert_eq!(
        files[0], files[2],
        "the pool's descriptor, exported and imported"
    );
    assert_eq!(
        files[1], files[3],
        "the handle's descriptor, exported and imported"
    );
    assert_ne!(files[0], files[1]);
    assert!(imports.iter().all(|m| m.get("end_ts_ns").is_some()));
    assert!(
        imp["anomalies"].as_object().is_none_or(|a| a.is_empty()),
        "{}",
        imp["anomalies"]
    );

    // Replayed: the machine never holds more than the exporter made (30 MiB), and the
    // 16 MiB freed while mapped stays until the importer's last close.
    let mut ledger = vramtrace::ledger::Ledger::new();
    let (mut peak, mut after_free, mut freed) = (0, None, false);
    for rec in &r.records {
        let changes = ledger.apply(rec).to_vec();
        peak = peak.max(ledger.totals().usage.device_bytes);
        if let Record::Free(c) = rec
            && c.pid == exporter
            && c.addr == Some(addr("a"))
        {
            after_free = Some(ledger.totals().usage.device_bytes);
        }
        for ch in changes {
            if let vramtrace::ledger::Change::Ended { alloc, .. } = ch
                && alloc.addr == Some(addr("a"))
            {
                assert!(matches!(rec, Record::ImportClose(c) if c.pid == importer));
                freed = true;
            }
        }
    }
    assert_eq!(peak, 30 * mib);
    assert_eq!(after_free, Some(30 * mib));
    assert!(
        freed,
        "the freed allocation ended at the importer's last close"
    );
}

/// CUDA graph memory nodes: alloc nodes traced with the address the driver fixed (read from
/// their params at return), graph memory live from the launch that runs its node until its
/// free runs, the device's graph pool holding what it reserved until the trim; a launch the
/// driver refused traced with its error. Every figure the driver gave
/// (`cuDeviceGetGraphMemAttribute`) is the workload's ground truth, and the Ledger's agrees.
#[test]
fn graph_memory_from_launch_to_free_with_the_drivers_figures() {
    let (lib, _) = sim();
    let r = record(lib, "graphs", &[]);
    check_against_truth(&r);
    let pid = r.truth["pid"].as_u64().expect("pid") as u32;
    let g = &r.truth["graphs"];
    assert_eq!(g["relaunch_refused"], true);

    let nodes: Vec<(Option<u64>, Option<u64>)> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::GraphAllocNode(c) if c.pid == pid => Some((c.bytes, c.addr)),
            _ => None,
        })
        .collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert_eq!(
        nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
        [Some(8 << 20), Some(4 << 20), Some(6 << 20)]
    );
    assert!(nodes.iter().all(|n| n.1.is_some_and(|a| a != 0)));
    let refused: Vec<i32> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::Failed(c) if c.pid == pid && c.api.starts_with("cuGraphLaunch") => Some(c.ret),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [1], "CUDA_ERROR_INVALID_VALUE: A was still live");

    // The driver's answers, as traced, are the ground truth's, in order.
    let traced: Vec<(u32, u64)> = r
        .records
        .iter()
        .filter_map(|rec| match rec {
            Record::GraphMemAttr(c)
                if c.pid == pid && c.api.starts_with("cuDeviceGetGraphMemAttribute") =>
            {
                Some((c.attr.expect("attr"), c.value.expect("value")))
            }
            _ => None,
        })
        .collect();
    let truth: Vec<(u32, u64)> = g["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .map(|v| {
            assert_eq!(
                v["driver"], v["expected"],
                "the driver against the book: {v}"
            );
            (
                v["attr"].as_u64().expect("attr") as u32,
                v["driver"].as_u64().expect("driver"),
            )
        })
        .collect();
    assert_eq!(traced, truth);

    // The Ledger agrees with each of the driver's last answers, and holds what the book does.
    let procs = r.analysis["processes"].as_array().expect("processes");
    let p = procs
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .expect("the workload in the analysis");
    let pools = p["graph_pools"].as_array().expect("graph_pools");
    assert_eq!(pools.len(), 1, "{pools:?}");
    let pool = &pools[0];
    assert_eq!(
        (pool["used_bytes"].as_u64(), pool["reserved_bytes"].as_u64()),
        (Some(6 << 20), Some(8 << 20)),
        "{pool}"
    );
    let readings = pool["driver"].as_array().expect("driver readings");
    assert_eq!(readings.len(), 4, "{readings:?}");
    for v in readings {
        assert_eq!(v["driver_bytes"], v["traced_bytes"], "{v}");
    }
    let largest = p["largest_at_exit"].as_array().expect("largest_at_exit");
    assert!(
        largest
            .iter()
            .any(|a| a["mem"] == "graph" && a["bytes"].as_u64() == Some(6 << 20)),
        "{largest:?}"
    );
    assert_eq!(
        p["anomalies"],
        Value::Object(Default::default()),
        "{}",
        p["anomalies"]
    );
}
