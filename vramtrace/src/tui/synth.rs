//! Synthetic records with known contents: the fixtures of the view's tests, its benchmark
//! and its terminal test. Not a workload model; only what the view needs to show.

use std::path::Path;

use crate::trace::{
    Call, Exit, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Frame, Header, Mem, Process, Record,
    Scope, Stack,
    write::{TraceWriter, WriteError},
};

/// Where synthetic traces start on the trace clock.
pub const T0: u64 = 1_000_000_000_000;
const SEC: u64 = 1_000_000_000;

/// A header that readers accept.
pub fn header() -> Header {
    Header {
        format: FORMAT_NAME.into(),
        version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        tool_version: "test".into(),
        host: "host".into(),
        kernel: "6.18".into(),
        start_monotonic_ns: T0,
        scope: Scope {
            all: true,
            ..Scope::default()
        },
        ..Header::default()
    }
}

pub fn process(id: u32, pid: u32, comm: &str) -> Record {
    Record::Process(Process {
        id,
        pid,
        comm: comm.into(),
        ..Process::default()
    })
}

/// Frame `i` of a stack in libtorch_cuda.so, named `sym`.
fn torch_frame(i: usize, sym: &str) -> Frame {
    Frame {
        addr: 0x5555_0000_1000 + i as u64 * 0x40,
        file: Some("/usr/lib/python3/libtorch_cuda.so".into()),
        offset: Some(0x1000 + i as u64 * 0x40),
        sym: Some(sym.into()),
        ..Frame::default()
    }
}

pub fn stack(id: u32, syms: &[&str]) -> Record {
    Record::Stack(Stack {
        id,
        frames: syms
            .iter()
            .enumerate()
            .map(|(i, s)| torch_frame(i, s))
            .collect(),
        truncated: None,
    })
}

/// A PyTorch allocation: the caching allocator, the interpreter, then the Python frames.
pub fn torch_stack(id: u32) -> Record {
    let mut frames = vec![
        torch_frame(0, "c10::cuda::CUDACachingAllocator::malloc"),
        torch_frame(1, "at::empty"),
        Frame {
            file: Some("/usr/bin/python3.12".into()),
            ..torch_frame(2, "_PyEval_EvalFrameDefault")
        },
    ];
    for (line, sym) in [(88, "Model.forward"), (120, "main")] {
        frames.push(Frame {
            file: Some("/home/me/train.py".into()),
            sym: Some(sym.into()),
            src: Some(format!("/home/me/train.py:{line}")),
            python: true,
            ..Frame::default()
        });
    }
    Record::Stack(Stack {
        id,
        frames,
        truncated: None,
    })
}

/// A call of `api` by `proc` (pid `proc + 1000`, tid = pid) on device 0.
pub fn call(proc: u32, ts_ns: u64, api: &str) -> Call {
    Call {
        api: api.into(),
        proc,
        pid: proc + 1000,
        tid: proc + 1000,
        ts_ns,
        device: Some(0),
        ..Call::default()
    }
}

pub fn alloc(proc: u32, ts_ns: u64, addr: u64, bytes: u64, stack: Option<u32>) -> Record {
    Record::Alloc(Call {
        addr: Some(addr),
        bytes: Some(bytes),
        mem: Some(Mem::Device),
        stack,
        ..call(proc, ts_ns, "cuMemAlloc_v2")
    })
}

pub fn host_alloc(proc: u32, ts_ns: u64, addr: u64, bytes: u64) -> Record {
    Record::Alloc(Call {
        addr: Some(addr),
        bytes: Some(bytes),
        mem: Some(Mem::HostPinned),
        device: None,
        ..call(proc, ts_ns, "cuMemHostAlloc")
    })
}

pub fn free(proc: u32, ts_ns: u64, addr: u64) -> Record {
    Record::Free(Call {
        addr: Some(addr),
        ..call(proc, ts_ns, "cuMemFree_v2")
    })
}

pub fn oom(proc: u32, ts_ns: u64, bytes: u64) -> Record {
    Record::Failed(Call {
        ret: 2,
        bytes: Some(bytes),
        mem: Some(Mem::Device),
        ..call(proc, ts_ns, "cuMemAlloc_v2")
    })
}

pub fn exit(proc: u32, ts_ns: u64) -> Record {
    Record::Exit(Exit {
        proc,
        pid: proc + 1000,
        ts_ns,
    })
}

/// Two processes over `seconds`: `trainer` loads 4 weights of 1 GiB in its first second,
/// then allocates and frees 16 MiB buffers ten times a second; `server` holds 2 GiB and
/// falls back to pinned host memory once; at the end `trainer` runs out of memory once.
pub fn scenario(seconds: u64) -> Vec<Record> {
    let mut r = vec![
        process(1, 1001, "trainer"),
        process(2, 1002, "server"),
        torch_stack(1),
        stack(
            2,
            &["ggml_backend_cuda_buffer_alloc", "llama_load_model", "main"],
        ),
    ];
    for i in 0..4u64 {
        r.push(alloc(
            1,
            T0 + i * SEC / 8,
            0x7f00_0000_0000 + i * (1 << 30),
            1 << 30,
            Some(1),
        ));
    }
    r.push(alloc(2, T0 + SEC / 2, 0x7e00_0000_0000, 2 << 30, Some(2)));
    r.push(host_alloc(2, T0 + SEC * 3 / 4, 0x5600_0000_0000, 64 << 20));
    for t in 0..seconds * 10 {
        let ts = T0 + SEC + t * SEC / 10;
        let addr = 0x7f10_0000_0000 + (t % 4) * (16 << 20);
        if t >= 4 {
            r.push(free(1, ts, addr));
        }
        r.push(alloc(1, ts + 1, addr, 16 << 20, Some(1)));
    }
    r.push(oom(1, T0 + (seconds + 1) * SEC, 8 << 30));
    r
}

/// One process holding `n` live allocations (of varied sizes, from 64 stacks), made one
/// per microsecond from [`T0`].
pub fn many(n: usize) -> Vec<Record> {
    let mut r = vec![process(1, 1001, "bigmodel")];
    for s in 0..64 {
        r.push(stack(s, &["alloc", "layer", "main"]));
    }
    for i in 0..n as u64 {
        r.push(alloc(
            1,
            T0 + i * 1000,
            0x7f00_0000_0000 + i * (1 << 21),
            (1 + i % 512) << 12,
            Some((i % 64) as u32),
        ));
    }
    r
}

/// Writes a sealed trace of `records` (a header first).
pub fn write_trace(path: &Path, records: &[Record]) -> Result<(), WriteError> {
    let mut w = TraceWriter::create(path)?;
    w.write(&Record::Header(Box::new(header())))?;
    let mut end = T0;
    for rec in records {
        if let Some(ts) = rec.ts_ns() {
            end = end.max(ts);
        }
        w.write(rec)?;
    }
    w.finish(end, 0, 0).map(|_| ())
}
