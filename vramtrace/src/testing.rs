//! What the unit and property tests share: a builder of driver calls as the converter writes
//! them ([`Sim`]) and random sequences of them over several processes ([`sequence`]), so that
//! every consumer of the Ledger can be held to agree with it on the same input.

use proptest::prelude::*;

#[path = "../tests/common/nvidia.rs"]
pub mod nvidia;

use crate::trace::{
    Call, Exit, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Frame, Header, Mem, Process, Record, Stack,
};

/// Runs `f` with the id of a thread whose root is `dir` (`unshare(CLONE_FS)`, then `chroot`),
/// as a container's process has a root of its own; the thread ends once `f` returns. Needs
/// root, as CI is.
pub fn with_own_root<R>(dir: &std::path::Path, f: impl FnOnce(u32) -> R) -> R {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test chroots a thread: run it as root"
    );
    let root = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare, chroot and gettid touch only this thread's own fs state and the
        // NUL-terminated path, which lives through the calls.
        let ok = unsafe { libc::unshare(libc::CLONE_FS) == 0 && libc::chroot(root.as_ptr()) == 0 };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let _ = tid_tx.send(ok.then_some(tid as u32));
        let _ = done_rx.recv();
    });
    let tid = tid_rx
        .recv()
        .expect("the thread")
        .expect("unshare and chroot");
    let result = f(tid);
    let _ = done_tx.send(());
    thread.join().expect("the thread");
    result
}

/// Processes in a random sequence.
pub const PROCS: u32 = 2;
/// A mebibyte.
pub const MIB: u64 = 1 << 20;
/// Stacks allocations come from.
pub const STACKS: u32 = 3;

/// A header of the current format and nothing else: what a trace written by a test needs.
pub fn header() -> Header {
    Header {
        format: FORMAT_NAME.into(),
        version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        ..Header::default()
    }
}

/// Builds calls for one process and thread, with a clock that ticks on every call.
pub struct Sim {
    pub proc: u32,
    pub pid: u32,
    pub tid: u32,
    pub ts: u64,
}

impl Sim {
    pub fn new(proc: u32, pid: u32) -> Self {
        Sim {
            proc,
            pid,
            tid: pid,
            ts: 1_000,
        }
    }

    pub fn call(&mut self, api: &str) -> Call {
        self.ts += 10;
        Call {
            api: api.into(),
            proc: self.proc,
            pid: self.pid,
            tid: self.tid,
            ts_ns: self.ts,
            ..Default::default()
        }
    }

    pub fn process(&self, comm: &str) -> Record {
        Record::Process(Process {
            id: self.proc,
            pid: self.pid,
            comm: comm.into(),
            ..Default::default()
        })
    }

    pub fn alloc(&mut self, addr: u64, bytes: u64) -> Record {
        Record::Alloc(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            mem: Some(Mem::Device),
            ..self.call("cuMemAlloc_v2")
        })
    }

    pub fn alloc_mem(&mut self, api: &str, mem: Mem, addr: u64, bytes: u64) -> Record {
        Record::Alloc(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            mem: Some(mem),
            ..self.call(api)
        })
    }

    pub fn free(&mut self, addr: u64) -> Record {
        Record::Free(Call {
            addr: Some(addr),
            ..self.call("cuMemFree_v2")
        })
    }

    pub fn alloc_async(&mut self, addr: u64, bytes: u64, pool: Option<u64>) -> Record {
        let api = if pool.is_some() {
            "cuMemAllocFromPoolAsync"
        } else {
            "cuMemAllocAsync"
        };
        Record::Alloc(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            mem: Some(Mem::DeviceAsync),
            stream: Some(7),
            pool,
            ..self.call(api)
        })
    }

    pub fn free_async(&mut self, addr: u64) -> Record {
        Record::Free(Call {
            addr: Some(addr),
            mem: Some(Mem::DeviceAsync),
            stream: Some(7),
            ..self.call("cuMemFreeAsync")
        })
    }

    /// `cuMemPoolCreate` of a pool whose memory is `mem` (`None`: device memory).
    pub fn pool_create(&mut self, pool: u64, mem: Option<Mem>) -> Record {
        Record::PoolCreate(Call {
            pool: Some(pool),
            mem,
            device: mem.is_none().then_some(0),
            ..self.call("cuMemPoolCreate")
        })
    }

    pub fn trim(&mut self, pool: u64, keep: u64) -> Record {
        Record::PoolTrim(Call {
            pool: Some(pool),
            bytes: Some(keep),
            ..self.call("cuMemPoolTrimTo")
        })
    }

    /// `cuMemPoolSetAttribute` (`get`: `cuMemPoolGetAttribute`) of `attr` with `value`.
    pub fn pool_attr(&mut self, get: bool, pool: u64, attr: u32, value: u64) -> Record {
        let api = if get {
            "cuMemPoolGetAttribute"
        } else {
            "cuMemPoolSetAttribute"
        };
        Record::PoolAttr(Call {
            pool: Some(pool),
            attr: Some(attr),
            value: Some(value),
            ..self.call(api)
        })
    }

    /// A synchronization (`cuStreamSynchronize`, `cuCtxSynchronize`, ...).
    pub fn sync(&mut self, api: &str) -> Record {
        Record::Sync(self.call(api))
    }

    /// `cuGraphAddMemAllocNode` of `bytes` at `addr` on device 0 in `graph`.
    pub fn graph_alloc_node(&mut self, graph: u64, addr: u64, bytes: u64) -> Record {
        Record::GraphAllocNode(Call {
            graph: Some(graph),
            addr: Some(addr),
            bytes: Some(bytes),
            mem: Some(Mem::Graph),
            device: Some(0),
            ..self.call("cuGraphAddMemAllocNode")
        })
    }

    /// `cuGraphAddMemFreeNode` of `addr` in `graph`.
    pub fn graph_free_node(&mut self, graph: u64, addr: u64) -> Record {
        Record::GraphFreeNode(Call {
            graph: Some(graph),
            addr: Some(addr),
            mem: Some(Mem::Graph),
            ..self.call("cuGraphAddMemFreeNode")
        })
    }

    /// `cuGraphInstantiateWithFlags` of `graph` into `exec`.
    pub fn graph_instantiate(&mut self, graph: u64, exec: u64) -> Record {
        Record::GraphInstantiate(Call {
            graph: Some(graph),
            handle: Some(exec),
            ..self.call("cuGraphInstantiateWithFlags")
        })
    }

    /// `cuGraphLaunch` of `exec`.
    pub fn graph_launch(&mut self, exec: u64) -> Record {
        Record::GraphLaunch(Call {
            handle: Some(exec),
            stream: Some(7),
            ..self.call("cuGraphLaunch")
        })
    }

    /// `cuDeviceGraphMemTrim` of device 0.
    pub fn graph_trim(&mut self) -> Record {
        Record::GraphMemTrim(Call {
            device: Some(0),
            ..self.call("cuDeviceGraphMemTrim")
        })
    }

    /// `cuDeviceGetGraphMemAttribute` of device 0 (`set`: `cuDeviceSetGraphMemAttribute`).
    pub fn graph_attr(&mut self, set: bool, attr: u32, value: u64) -> Record {
        let api = if set {
            "cuDeviceSetGraphMemAttribute"
        } else {
            "cuDeviceGetGraphMemAttribute"
        };
        Record::GraphMemAttr(Call {
            device: Some(0),
            attr: Some(attr),
            value: Some(value),
            ..self.call(api)
        })
    }

    pub fn vmm_create(&mut self, handle: u64, bytes: u64) -> Record {
        Record::VmmCreate(Call {
            handle: Some(handle),
            bytes: Some(bytes),
            mem: Some(Mem::VmmDevice),
            device: Some(0),
            ..self.call("cuMemCreate")
        })
    }

    pub fn vmm_release(&mut self, handle: u64) -> Record {
        Record::VmmRelease(Call {
            handle: Some(handle),
            ..self.call("cuMemRelease")
        })
    }

    pub fn vmm_map(&mut self, addr: u64, bytes: u64, handle: u64) -> Record {
        Record::VmmMap(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            offset: Some(0),
            handle: Some(handle),
            ..self.call("cuMemMap")
        })
    }

    pub fn vmm_unmap(&mut self, addr: u64, bytes: u64) -> Record {
        Record::VmmUnmap(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            ..self.call("cuMemUnmap")
        })
    }

    pub fn ctx_create(&mut self, ctx: u64, device: i32) -> Record {
        Record::CtxCreate(Call {
            handle: Some(ctx),
            device: Some(device),
            ..self.call("cuCtxCreate_v2")
        })
    }

    pub fn ctx_current(&mut self, api: &str, ctx: u64) -> Record {
        Record::CtxCurrent(Call {
            handle: Some(ctx),
            ..self.call(api)
        })
    }

    pub fn exit(&mut self) -> Record {
        self.ts += 10;
        Record::Exit(Exit {
            proc: self.proc,
            pid: self.pid,
            ts_ns: self.ts,
        })
    }
}

/// One driver call, or an exit, of a random sequence.
#[derive(Clone, Debug)]
pub enum Op {
    Alloc {
        slot: u64,
        bytes: u64,
        mem: Mem,
    },
    AllocAsync {
        slot: u64,
        bytes: u64,
        pool: bool,
    },
    Free {
        slot: u64,
        is_async: bool,
    },
    Fill {
        slot: u64,
        bytes: u64,
    },
    /// A unified copy (`cuMemcpy`) into slot `slot` from slot `from` (device memory when it
    /// is live, host memory otherwise) or, with `from` `None`, from a host address; or, with
    /// `to_host`, from slot `slot` to a host address.
    UnifiedCopy {
        slot: u64,
        from: Option<u64>,
        bytes: u64,
        to_host: bool,
    },
    Array {
        handle: u64,
        bytes: u64,
    },
    ArrayDestroy {
        handle: u64,
    },
    Vmm {
        handle: u64,
        bytes: u64,
        host: bool,
    },
    Map {
        slot: u64,
        handle: u64,
    },
    Unmap {
        slot: u64,
    },
    Release {
        handle: u64,
    },
    Trim {
        keep: u64,
    },
    /// The explicit pool created anew, of device, managed or pinned host memory.
    PoolCreate {
        mem: Option<Mem>,
    },
    PoolDestroy,
    CtxCreate {
        ctx: u64,
        device: i32,
    },
    CtxDestroy {
        ctx: u64,
    },
    /// A CUDA graph's alloc node at allocation slot `slot`.
    GraphAllocNode {
        graph: u64,
        slot: u64,
        bytes: u64,
    },
    GraphFreeNode {
        graph: u64,
        slot: u64,
    },
    GraphInstantiate {
        graph: u64,
        exec: u64,
    },
    GraphLaunch {
        exec: u64,
    },
    GraphTrim,
    Exit,
}

/// A call of one of [`PROCS`] processes.
pub fn op() -> impl Strategy<Value = (u32, Op)> {
    let mem = prop_oneof![Just(Mem::Device), Just(Mem::HostPinned), Just(Mem::Managed),];
    let op = prop_oneof![
        8 => (0..10u64, 1..64u64, mem).prop_map(|(slot, m, mem)| Op::Alloc { slot, bytes: m * MIB, mem }),
        4 => (0..10u64, 1..64u64, any::<bool>())
            .prop_map(|(slot, m, pool)| Op::AllocAsync { slot: slot + 16, bytes: m * MIB, pool }),
        8 => (0..30u64, any::<bool>()).prop_map(|(slot, is_async)| Op::Free { slot, is_async }),
        4 => (0..26u64, 1..64u64).prop_map(|(slot, m)| Op::Fill { slot, bytes: m * MIB }),
        3 => (0..26u64, prop::option::of(0..26u64), 1..64u64, any::<bool>()).prop_map(
            |(slot, from, m, to_host)| Op::UnifiedCopy { slot, from, bytes: m * MIB, to_host }
        ),
        2 => (0..4u64, 1..64u64).prop_map(|(handle, m)| Op::Array { handle, bytes: m * MIB }),
        2 => (0..4u64).prop_map(|handle| Op::ArrayDestroy { handle }),
        2 => (0..4u64, 1..64u64, any::<bool>())
            .prop_map(|(handle, m, host)| Op::Vmm { handle, bytes: m * MIB, host }),
        2 => (0..4u64, 0..4u64).prop_map(|(slot, handle)| Op::Map { slot, handle }),
        2 => (0..4u64).prop_map(|slot| Op::Unmap { slot }),
        2 => (0..4u64).prop_map(|handle| Op::Release { handle }),
        1 => (0..64u64).prop_map(|m| Op::Trim { keep: m * MIB }),
        1 => Just(Op::PoolDestroy),
        1 => prop_oneof![Just(None), Just(Some(Mem::Managed)), Just(Some(Mem::HostPinned))]
            .prop_map(|mem| Op::PoolCreate { mem }),
        2 => (0..3u64, 0..2i32).prop_map(|(ctx, device)| Op::CtxCreate { ctx, device }),
        1 => (0..3u64).prop_map(|ctx| Op::CtxDestroy { ctx }),
        2 => (0..2u64, 26..30u64, 1..64u64)
            .prop_map(|(graph, slot, m)| Op::GraphAllocNode { graph, slot, bytes: m * MIB }),
        1 => (0..2u64, 26..30u64).prop_map(|(graph, slot)| Op::GraphFreeNode { graph, slot }),
        1 => (0..2u64, 0..2u64).prop_map(|(graph, exec)| Op::GraphInstantiate { graph, exec }),
        3 => (0..2u64).prop_map(|exec| Op::GraphLaunch { exec }),
        1 => Just(Op::GraphTrim),
        1 => Just(Op::Exit),
    ];
    (0..PROCS, op)
}

/// The device address of allocation slot `slot`.
pub fn addr(slot: u64) -> u64 {
    0x7f00_0000_0000 + slot * (1 << 30)
}

/// The VMM virtual address of mapping slot `slot`.
pub fn vaddr(slot: u64) -> u64 {
    0x6000_0000_0000 + slot * (1 << 30)
}

/// The one explicit pool's handle.
pub const POOL: u64 = 0xb00;

/// The record `op` makes, from `s`'s process and thread; allocations come from one of
/// three stacks by slot.
pub fn record(s: &mut Sim, op: &Op) -> Record {
    match *op {
        Op::Alloc { slot, bytes, mem } => {
            let api = match mem {
                Mem::Device => "cuMemAlloc_v2",
                Mem::Managed => "cuMemAllocManaged",
                _ => "cuMemHostAlloc",
            };
            s.alloc_mem(api, mem, addr(slot), bytes)
        }
        Op::AllocAsync { slot, bytes, pool } => {
            s.alloc_async(addr(slot), bytes, pool.then_some(POOL))
        }
        Op::Free { slot, is_async } => {
            if is_async {
                s.free_async(addr(slot))
            } else {
                s.free(addr(slot))
            }
        }
        Op::Fill { slot, bytes } => Record::Copy(Call {
            addr: Some(addr(slot) + MIB / 2),
            bytes: Some(bytes),
            ..s.call("cuMemcpyHtoD_v2")
        }),
        Op::UnifiedCopy {
            slot,
            from,
            bytes,
            to_host,
        } => {
            let host = 0x5555_0000_0000;
            let (dst, src) = if to_host {
                (host, addr(slot))
            } else {
                (addr(slot) + MIB / 2, from.map_or(host, addr))
            };
            Record::Copy(Call {
                addr: Some(dst),
                src: Some(src),
                src_mem: Some(crate::trace::CopySrc::Unified),
                bytes: Some(bytes),
                ..s.call("cuMemcpy")
            })
        }
        Op::Array { handle, bytes } => Record::Alloc(Call {
            handle: Some(0xa000 + handle),
            bytes: Some(bytes),
            mem: Some(Mem::Array),
            ..s.call("cuArrayCreate_v2")
        }),
        Op::ArrayDestroy { handle } => Record::Free(Call {
            handle: Some(0xa000 + handle),
            mem: Some(Mem::Array),
            ..s.call("cuArrayDestroy")
        }),
        Op::Vmm {
            handle,
            bytes,
            host,
        } => Record::VmmCreate(Call {
            handle: Some(0x4000 + handle),
            bytes: Some(bytes),
            mem: Some(if host { Mem::VmmHost } else { Mem::VmmDevice }),
            device: Some(0),
            ..s.call("cuMemCreate")
        }),
        Op::Map { slot, handle } => s.vmm_map(vaddr(slot), MIB, 0x4000 + handle),
        Op::Unmap { slot } => s.vmm_unmap(vaddr(slot), MIB),
        Op::Release { handle } => s.vmm_release(0x4000 + handle),
        Op::Trim { keep } => s.trim(POOL, keep),
        Op::PoolCreate { mem } => s.pool_create(POOL, mem),
        Op::PoolDestroy => Record::PoolDestroy(Call {
            pool: Some(POOL),
            ..s.call("cuMemPoolDestroy")
        }),
        Op::CtxCreate { ctx, device } => s.ctx_create(0xc000 + ctx, device),
        Op::CtxDestroy { ctx } => Record::CtxDestroy(Call {
            handle: Some(0xc000 + ctx),
            ..s.call("cuCtxDestroy_v2")
        }),
        Op::GraphAllocNode { graph, slot, bytes } => {
            s.graph_alloc_node(0x6000 + graph, addr(slot), bytes)
        }
        Op::GraphFreeNode { graph, slot } => s.graph_free_node(0x6000 + graph, addr(slot)),
        Op::GraphInstantiate { graph, exec } => s.graph_instantiate(0x6000 + graph, 0x6100 + exec),
        Op::GraphLaunch { exec } => s.graph_launch(0x6100 + exec),
        Op::GraphTrim => s.graph_trim(),
        Op::Exit => s.exit(),
    }
}

/// A random sequence: each process's `process` record, the stacks, then the calls, exits
/// (a process that exits comes back under a new record id) and out-of-memory failures.
pub fn sequence(len: usize) -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec((op(), 0..40u8), 1..len).prop_map(|ops| {
        let mut out: Vec<Record> = (1..=STACKS)
            .map(|id| {
                Record::Stack(Stack {
                    id,
                    frames: vec![Frame {
                        addr: 0x1000 * u64::from(id),
                        sym: Some(format!("site{id}")),
                        ..Default::default()
                    }],
                    truncated: None,
                })
            })
            .collect();
        let mut sims: Vec<Sim> = (0..PROCS).map(|p| Sim::new(p, 1000 + p)).collect();
        for s in &sims {
            out.push(s.process("worker"));
        }
        for ((proc, op), oom) in ops {
            let s = &mut sims[proc as usize];
            if oom == 0 {
                out.push(Record::Failed(Call {
                    ret: 2,
                    bytes: Some(1 << 40),
                    mem: Some(Mem::Device),
                    stack: Some(1),
                    ..s.call("cuMemAlloc_v2")
                }));
            }
            let mut rec = record(s, &op);
            if let Record::Alloc(c) | Record::VmmCreate(c) = &mut rec {
                c.stack = Some(1 + (c.addr.or(c.handle).unwrap_or(0) >> 30) as u32 % STACKS);
            }
            out.push(rec);
            if matches!(op, Op::Exit) {
                s.proc += PROCS;
                s.pid += PROCS;
                out.push(s.process("worker"));
            }
        }
        out
    })
}
