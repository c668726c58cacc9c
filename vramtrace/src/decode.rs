//! The one converter from raw probe events to trace records, used by recording and the live
//! view alike (replay reads records and never comes here).
//!
//! [`parse`] checks and copies a ring-buffer item; [`Converter`] interprets its registers by
//! the decoder of its entry point's row in [`crate::api::APIS`], assigns process and stack
//! ids, and emits the `process` and `stack` records the first time each is referred to.

use std::collections::HashMap;

use thiserror::Error;
use vramtrace_common::{
    CallEvent, EVENT_CALL, EVENT_EXIT, EVENT_HOLD, EVENT_STACK, ExitEvent, MAX_PY_FRAMES,
    PyFrameRaw, STACK_COPY_BYTES, StackSample, flags,
};

use crate::api::{Args, Hooked};
use crate::stacks::python::PyInsert;
use crate::stacks::unwind::Unwound;
use crate::trace::{Call, Exit, Frame, Process, Record, Stack};

/// A ring-buffer item that could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer item of {len} bytes is too short for its kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("ring buffer item of {0} bytes has no kind")]
    NoKind(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// One decoded ring-buffer item.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is a call: boxing it would allocate per event on the draining path"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Call(CallEvent),
    Exit(ExitEvent),
    /// A new process was stopped at its first driver call (`--hold-new`); whoever drains
    /// the ring reads it and lets it go on. The converter ignores it.
    Hold(ExitEvent),
}

/// Decodes one ring-buffer item, checking its length against its kind.
pub fn parse(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let kind_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::NoKind(bytes.len()))?;
    let kind = u32::from_ne_bytes(kind_bytes);
    match kind {
        EVENT_CALL => Ok(RawEvent::Call(read_pod::<CallEvent>(bytes, kind)?)),
        EVENT_EXIT => Ok(RawEvent::Exit(read_pod::<ExitEvent>(bytes, kind)?)),
        EVENT_HOLD => Ok(RawEvent::Hold(read_pod::<ExitEvent>(bytes, kind)?)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// A stack copy ([`StackSample`]) read in place from its ring-buffer item: the copy is
/// unwound from there and never copied again.
#[derive(Clone, Copy, Debug)]
pub struct SampleView<'a> {
    pub ts_entry_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Address of `stack[0]`.
    pub base: u64,
    /// The user memory copied: `len` bytes from `base`.
    pub stack: &'a [u8],
    /// `py_status::*` of the Python frames read with the copy.
    pub py_status: u32,
    /// Those frames, as the wire has them (`PyFrameRaw`, innermost first).
    pub py: &'a [u8],
}

impl SampleView<'_> {
    /// The Python frames read with the copy, innermost first.
    pub fn py_frames(&self) -> Vec<PyFrameRaw> {
        let word = |c: &[u8; 24], at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&c[at..at + 8]);
            u64::from_ne_bytes(w)
        };
        const _: () = assert!(size_of::<PyFrameRaw>() == 24);
        self.py
            .as_chunks::<24>()
            .0
            .iter()
            .map(|c| PyFrameRaw {
                code: word(c, 0),
                instr: word(c, 8),
                flags: word(c, 16),
            })
            .collect()
    }
}

/// Whether a ring-buffer item is a stack copy.
pub fn is_sample(bytes: &[u8]) -> bool {
    bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        == Some(EVENT_STACK)
}

/// Reads a stack copy in place, checking its length and the length it claims.
pub fn parse_sample(bytes: &[u8]) -> Result<SampleView<'_>, DecodeError> {
    // The length is checked first: every read below is within the item.
    let header = std::mem::offset_of!(StackSample, stack);
    if bytes.len() < size_of::<StackSample>() {
        return Err(DecodeError::Short {
            kind: EVENT_STACK,
            len: bytes.len(),
        });
    }
    let u32_at =
        |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    use std::mem::offset_of;
    let len = (u32_at(offset_of!(StackSample, len)) as usize).min(STACK_COPY_BYTES);
    let py_count = (u32_at(offset_of!(StackSample, py_count)) as usize).min(MAX_PY_FRAMES);
    let py = offset_of!(StackSample, py);
    Ok(SampleView {
        ts_entry_ns: u64_at(offset_of!(StackSample, ts_entry_ns)),
        pid: u32_at(offset_of!(StackSample, pid)),
        tid: u32_at(offset_of!(StackSample, tid)),
        ip: u64_at(offset_of!(StackSample, ip)),
        sp: u64_at(offset_of!(StackSample, sp)),
        bp: u64_at(offset_of!(StackSample, bp)),
        base: u64_at(offset_of!(StackSample, base)),
        stack: &bytes[header..header + len],
        py_status: u32_at(offset_of!(StackSample, py_status)),
        py: &bytes[py..py + py_count * size_of::<PyFrameRaw>()],
    })
}

fn read_pod<T: aya::Pod>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
        });
    }
    // SAFETY: the length was checked above; T is Pod (plain integers, every bit pattern
    // valid), and read_unaligned copes with the ring buffer's 8-byte alignment or any other.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// What the converter needs from the live system. Recording implements it over `/proc`, the
/// BPF stack map and the symbolizer; tests implement it by hand.
pub trait Environment {
    /// What `/proc` says about `pid`, when it still can.
    fn process(&mut self, pid: u32) -> Option<Process>;
    /// The user stack recorded under `stack_id` in the kernel's stack map, innermost first.
    fn stack(&mut self, stack_id: u32) -> Option<Vec<u64>>;
    /// The stack unwound from the copy sent for the call that thread `tid` entered at
    /// `ts_entry_ns` (`--stacks dwarf`), once; `None` when no copy arrived.
    fn unwound(&mut self, _tid: u32, _ts_entry_ns: u64) -> Option<Unwound> {
        None
    }
    /// Normalizes addresses of process `pid` (file, build ID, offset). Symbols may come with
    /// them or later: recording fills them in off the draining path.
    fn frames(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame>;
    /// Process `pid` ended: what was kept about it can go.
    fn exited(&mut self, _pid: u32) {}
}

/// What makes two frames the same: the file and offset when normalized, else the address;
/// for a Python frame, its code object's address, name, line and why it has none.
type FrameKey = (
    Option<String>,
    Option<u64>,
    u64,
    Option<(Option<String>, Option<String>, Option<String>)>,
);

/// Interprets raw events. Keeps the process generation of every PID (a PID seen again after
/// its exit is a new process) and the stacks already written.
pub struct Converter {
    apis: Vec<Hooked>,
    procs: HashMap<u32, u32>,
    next_proc: u32,
    /// (proc id, caller, kernel stack id) → trace stack id.
    stack_ids: HashMap<(u32, u64, i64), u32>,
    /// (proc id, unwound stack with its Python frames) → trace stack id, for copied stacks.
    unwound_ids: HashMap<(u32, Unwound), u32>,
    /// Normalized frames → trace stack id, so that one stack seen from several processes or
    /// kernel ids is written once.
    stack_by_frames: HashMap<Vec<FrameKey>, u32>,
    next_stack: u32,
    /// The signal the probes send on host-memory calls (0: none): what a `SIGNALLED` flag
    /// means.
    host_signal: u32,
    /// Events whose API id is not in the table (never expected; counted, not fatal).
    pub unknown_api: u64,
}

impl Converter {
    /// A converter for the hooked symbols `apis` (index = API id).
    pub fn new(apis: Vec<Hooked>) -> Self {
        Converter {
            apis,
            procs: HashMap::new(),
            next_proc: 1,
            stack_ids: HashMap::new(),
            unwound_ids: HashMap::new(),
            stack_by_frames: HashMap::new(),
            next_stack: 1,
            host_signal: 0,
            unknown_api: 0,
        }
    }

    /// Tells the converter which signal the probes were configured to send (vram-only
    /// policy), so that calls flagged `SIGNALLED` carry it.
    pub fn set_host_signal(&mut self, signal: u32) {
        self.host_signal = signal;
    }

    /// The PIDs seen with a traced call whose exit has not been seen, in order.
    pub fn running(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.procs.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// Processes seen so far (every PID generation counts once).
    pub fn processes_seen(&self) -> u64 {
        u64::from(self.next_proc - 1)
    }

    /// Converts one raw event, appending the records it yields (a `process` or `stack`
    /// record first when this is its first mention).
    pub fn convert(&mut self, raw: &RawEvent, env: &mut dyn Environment, out: &mut Vec<Record>) {
        match raw {
            RawEvent::Hold(_) => {}
            RawEvent::Exit(e) => {
                // A process that exits without a single traced call is of no interest.
                env.exited(e.pid);
                if let Some(proc) = self.procs.remove(&e.pid) {
                    out.push(Record::Exit(Exit {
                        proc,
                        pid: e.pid,
                        ts_ns: e.ts_ns,
                    }));
                }
            }
            RawEvent::Call(ev) => {
                let Some(api) = self.apis.get(ev.api as usize) else {
                    self.unknown_api += 1;
                    return;
                };
                let (decode, args) = (api.decode, Args::new(ev, api.legacy32, api.version));
                let symbol = api.symbol.clone();
                let proc = self.proc_id(ev.pid, &ev.comm, env, out);
                let stack = self.stack_id(proc, ev, env, out);
                let mut call = Call {
                    api: symbol,
                    proc,
                    pid: ev.pid,
                    tid: ev.tid,
                    ts_ns: ev.ts_ns,
                    dur_ns: ev.ts_ns.saturating_sub(ev.ts_entry_ns),
                    ret: ev.ret,
                    stack,
                    signalled: (ev.flags & flags::SIGNALLED != 0 && self.host_signal != 0)
                        .then_some(self.host_signal),
                    ..Call::default()
                };
                out.push(decode(&args, &mut call));
            }
        }
    }

    fn proc_id(
        &mut self,
        pid: u32,
        comm: &[u8; 16],
        env: &mut dyn Environment,
        out: &mut Vec<Record>,
    ) -> u32 {
        if let Some(&id) = self.procs.get(&pid) {
            return id;
        }
        let id = self.next_proc;
        self.next_proc += 1;
        self.procs.insert(pid, id);
        // The name the probe captured stands in when /proc no longer has the process.
        let captured = {
            let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
            crate::procinfo::sanitize(&String::from_utf8_lossy(&comm[..len]))
        };
        let mut p = env.process(pid).unwrap_or_else(|| Process {
            pid,
            comm: if captured.is_empty() {
                "?".into()
            } else {
                captured
            },
            ..Process::default()
        });
        p.id = id;
        p.pid = pid;
        out.push(Record::Process(p));
        id
    }

    fn stack_id(
        &mut self,
        proc: u32,
        ev: &CallEvent,
        env: &mut dyn Environment,
        out: &mut Vec<Record>,
    ) -> Option<u32> {
        let has_caller = ev.flags & flags::CALLER_FAULT == 0 && ev.caller != 0;
        if ev.flags & flags::STACK_COPIED != 0 {
            let unwound = env
                .unwound(ev.tid, ev.ts_entry_ns)
                .unwrap_or_else(|| Unwound {
                    addrs: Vec::new(),
                    truncated: Some("the stack copy of this call was not received".into()),
                    python: Vec::new(),
                });
            let mut unwound = unwound;
            if unwound.addrs.is_empty() && has_caller {
                // Nothing unwound: the return address read at entry is still the caller.
                unwound.addrs.push(ev.caller);
                if let Some(why) = unwound.truncated.as_mut() {
                    why.push_str("; immediate caller only");
                }
            }
            if unwound.addrs.is_empty() {
                return None;
            }
            let key = (proc, unwound);
            if let Some(&id) = self.unwound_ids.get(&key) {
                return Some(id);
            }
            let (proc, unwound) = key;
            let id = self.emit_stack(
                ev.pid,
                &unwound.addrs,
                &unwound.python,
                unwound.truncated.clone(),
                env,
                out,
            );
            self.unwound_ids.insert((proc, unwound), id);
            return Some(id);
        }
        if ev.stack_id < 0 && !has_caller {
            return None;
        }
        let key = (proc, ev.caller, ev.stack_id);
        if let Some(&id) = self.stack_ids.get(&key) {
            return Some(id);
        }
        let mut addrs = Vec::with_capacity(32);
        if has_caller {
            addrs.push(ev.caller);
        }
        let mut truncated = None;
        if ev.stack_id >= 0 {
            match env.stack(ev.stack_id as u32) {
                Some(walk) => {
                    // The walk's first entry is where the probe fired (the driver entry
                    // point); then it follows the caller's frame pointer, which starts at
                    // the caller's caller: the caller itself was read at entry.
                    let mut rest = walk.into_iter().skip(1).filter(|&a| a != 0).peekable();
                    if has_caller && rest.peek() == Some(&ev.caller) {
                        rest.next();
                    }
                    addrs.extend(rest);
                }
                None => truncated = Some("stack no longer in the kernel's stack map".into()),
            }
        } else if ev.flags & flags::STACK_FAULT != 0 && -ev.stack_id == i64::from(libc::ENOSPC) {
            truncated = Some(
                "stack not captured: the ring buffer was more than half full; immediate caller only"
                    .into(),
            );
        } else if ev.flags & flags::STACK_FAULT != 0 {
            truncated = Some(format!(
                "stack capture failed (errno {}); immediate caller only",
                -ev.stack_id
            ));
        }
        let id = self.emit_stack(ev.pid, &addrs, &[], truncated, env, out);
        self.stack_ids.insert(key, id);
        Some(id)
    }

    /// The trace id of the stack `addrs` of process `pid`: normalized, the Python frames put
    /// in place of the eval-loop frames they ran in, then written once (one stack seen from
    /// several processes or captures is written once) unless it is truncated.
    fn emit_stack(
        &mut self,
        pid: u32,
        addrs: &[u64],
        python: &[PyInsert],
        truncated: Option<String>,
        env: &mut dyn Environment,
        out: &mut Vec<Record>,
    ) -> u32 {
        let frames = interleave(env.frames(pid, addrs), python);
        let content: Vec<_> = frames
            .iter()
            .map(|f| {
                (
                    f.file.clone(),
                    f.offset,
                    if f.file.is_some() && !f.python {
                        0
                    } else {
                        f.addr
                    },
                    // Python frames are told apart by name and line, not by file offset.
                    f.python
                        .then(|| (f.sym.clone(), f.src.clone(), f.unknown.clone())),
                )
            })
            .collect();
        if truncated.is_none()
            && let Some(&id) = self.stack_by_frames.get(&content)
        {
            return id;
        }
        let id = self.next_stack;
        self.next_stack += 1;
        if truncated.is_none() {
            self.stack_by_frames.insert(content, id);
        }
        out.push(Record::Stack(Stack {
            id,
            frames,
            truncated,
        }));
        id
    }
}

/// Puts each group of Python frames in place of the native frame it ran in.
fn interleave(native: Vec<Frame>, python: &[PyInsert]) -> Vec<Frame> {
    if python.is_empty() {
        return native;
    }
    let mut out = Vec::with_capacity(native.len() + python.len() * 2);
    let mut inserts = python.iter().peekable();
    for (i, frame) in native.into_iter().enumerate() {
        match inserts.next_if(|p| p.at == i) {
            Some(p) => out.extend(p.frames.iter().cloned()),
            None => out.push(frame),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{APIS, ArrayShape, Hooked, array_bytes, graph_params};
    use crate::trace::{CopySrc, Mem};

    struct FakeEnv;
    impl Environment for FakeEnv {
        fn process(&mut self, pid: u32) -> Option<Process> {
            Some(Process {
                pid,
                comm: "fake".into(),
                ..Process::default()
            })
        }
        fn stack(&mut self, _id: u32) -> Option<Vec<u64>> {
            // The probed instruction, then the frame-pointer walk.
            Some(vec![0x7f00_0000, 0x1000, 0x2000])
        }
        fn frames(&mut self, _pid: u32, addrs: &[u64]) -> Vec<Frame> {
            addrs
                .iter()
                .map(|&addr| Frame {
                    addr,
                    file: Some("/bin/app".into()),
                    offset: Some(addr - 0x100),
                    ..Frame::default()
                })
                .collect()
        }
    }

    fn table(symbols: &[&str]) -> Vec<Hooked> {
        symbols
            .iter()
            .map(|s| {
                let def = APIS
                    .iter()
                    .find(|d| crate::api::is_variant(s, d.base))
                    .expect("known symbol");
                Hooked::new(def, s)
            })
            .collect()
    }

    fn call(api: u32, args: [u64; 6], out0: u64, ret: i32) -> RawEvent {
        RawEvent::Call(CallEvent {
            kind: EVENT_CALL,
            api,
            pid: 42,
            tid: 43,
            ts_entry_ns: 100,
            ts_ns: 150,
            args,
            out: [out0, 0],
            caller: 0x1234,
            stack_id: 7,
            ret,
            ..CallEvent::default()
        })
    }

    /// `ev`, a call event, as `edit` changes it (its windows, out-parameters, flags).
    fn edited(ev: RawEvent, edit: impl FnOnce(&mut CallEvent)) -> RawEvent {
        match ev {
            RawEvent::Call(mut c) => {
                edit(&mut c);
                RawEvent::Call(c)
            }
            other => other,
        }
    }

    /// The records of one call of `symbol` (the process and stack records left out).
    fn decode_one(symbol: &str, ev: RawEvent) -> Record {
        let mut conv = Converter::new(table(&[symbol]));
        let mut out = Vec::new();
        conv.convert(&ev, &mut FakeEnv, &mut out);
        out.pop().expect("a call record")
    }

    #[test]
    fn shared_memory_calls_are_decoded_by_their_signatures() {
        // cuIpcOpenMemHandle_v2(pdptr, handle by value, Flags): Flags in the second
        // register, the handle in the wide window read from the stack.
        let mut wide = [0u64; 8];
        wide[0] = u64::from_le_bytes(*b"handle!!");
        wide[7] = 0xff;
        let with_wide = |ev: RawEvent, flags: u32| {
            edited(ev, |c| {
                c.wide = wide;
                c.flags |= flags;
            })
        };
        // In memory order: word 7's low byte is byte 56.
        let hex = format!(
            "{}{}ff{}",
            hex_of(b"handle!!"),
            "00".repeat(48),
            "00".repeat(7)
        );
        let ev = with_wide(call(0, [0x7ff0, 1, 0, 0, 0, 0], 0x9000, 0), 0);
        let Record::Import(c) = decode_one("cuIpcOpenMemHandle_v2", ev) else {
            panic!("an import");
        };
        assert_eq!((c.addr, c.flags), (Some(0x9000), Some(1)));
        assert_eq!(c.share.as_deref(), Some(hex.as_str()));
        // A failed open still says which handle it was given.
        let ev = with_wide(call(0, [0x7ff0, 1, 0, 0, 0, 0], 0, 201), 0);
        let Record::Failed(c) = decode_one("cuIpcOpenMemHandle", ev) else {
            panic!("a failure");
        };
        assert_eq!((c.ret, c.addr), (201, None));
        assert_eq!(c.share.as_deref(), Some(hex.as_str()));
        // A handle that could not be read is said to be so, never taken for zeros.
        let ev = with_wide(
            call(0, [0x7ff0, 1, 0, 0, 0, 0], 0x9000, 0),
            flags::BLOB_FAULT,
        );
        let Record::Import(c) = decode_one("cuIpcOpenMemHandle_v2", ev) else {
            panic!("an import");
        };
        assert_eq!((c.share, c.unreadable), (None, vec!["share".to_owned()]));
        // cuIpcGetMemHandle(pHandle, dptr): the handle read at return.
        let ev = with_wide(call(0, [0x7ff0, 0x5000, 0, 0, 0, 0], 0, 0), 0);
        let Record::Export(c) = decode_one("cuIpcGetMemHandle", ev) else {
            panic!("an export");
        };
        assert_eq!(
            (c.addr, c.share.as_deref()),
            (Some(0x5000), Some(hex.as_str()))
        );
        // cuMemImportFromShareableHandle(handle*, osHandle, type): a descriptor by value.
        let ev = call(0, [0x7ff0, 0xffff_ffff_0000_0007, 1, 0, 0, 0], 0x55, 0);
        let Record::Import(c) = decode_one("cuMemImportFromShareableHandle", ev) else {
            panic!("an import");
        };
        assert_eq!(
            (c.handle, c.os_handle, c.handle_type),
            (Some(0x55), Some(7), Some(1))
        );
        // cuMemPoolExportToShareableHandle(handle_out, pool, type, flags): the descriptor
        // written; cuMemPoolImportFromShareableHandle(pool_out, handle, type, flags): a pool
        // learned, not memory.
        let ev = call(0, [0x7ff0, 0xa000, 1, 0, 0, 0], 0xffff_ffff_0000_0009, 0);
        let Record::Export(c) = decode_one("cuMemPoolExportToShareableHandle", ev) else {
            panic!("an export");
        };
        assert_eq!(
            (c.pool, c.os_handle, c.handle_type, c.addr),
            (Some(0xa000), Some(9), Some(1), None)
        );
        let ev = call(0, [0x7ff0, 9, 1, 0, 0, 0], 0xb000, 0);
        let Record::PoolCreate(c) = decode_one("cuMemPoolImportFromShareableHandle", ev) else {
            panic!("a pool");
        };
        assert_eq!((c.pool, c.os_handle), (Some(0xb000), Some(9)));
        let ev = call(0, [0x7ff0, 9, 1, 0, 0, 0], 0xb000, 1);
        assert!(matches!(
            decode_one("cuMemPoolImportFromShareableHandle", ev),
            Record::Failed(c) if c.pool.is_none() && c.os_handle == Some(9)
        ));
        // cuMemRetainAllocationHandle(handle*, addr) and cuIpcCloseMemHandle(dptr).
        let ev = call(0, [0x7ff0, 0x9000, 0, 0, 0, 0], 0x55, 0);
        let Record::Retain(c) = decode_one("cuMemRetainAllocationHandle", ev) else {
            panic!("a retain");
        };
        assert_eq!((c.handle, c.addr), (Some(0x55), Some(0x9000)));
        let ev = call(0, [0x9000, 0, 0, 0, 0, 0], 0, 0);
        assert!(matches!(
            decode_one("cuIpcCloseMemHandle", ev),
            Record::ImportClose(c) if c.addr == Some(0x9000)
        ));
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn parse_checks_length_and_kind() {
        assert_eq!(parse(&[1, 0]), Err(DecodeError::NoKind(2)));
        assert_eq!(parse(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
        assert!(matches!(
            parse(&[1, 0, 0, 0, 0, 0]),
            Err(DecodeError::Short { kind: 1, len: 6 })
        ));
        let ev = CallEvent {
            kind: EVENT_CALL,
            api: 3,
            ..CallEvent::default()
        };
        // SAFETY: CallEvent is plain integers without padding; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<CallEvent>())
        };
        assert_eq!(parse(bytes), Ok(RawEvent::Call(ev)));
    }

    #[test]
    fn alloc_emits_process_stack_then_call_once() {
        let mut conv = Converter::new(table(&["cuMemAlloc_v2"]));
        let mut out = Vec::new();
        conv.convert(
            &call(0, [0x7000, 4096, 0, 0, 0, 0], 0xdead_0000, 0),
            &mut FakeEnv,
            &mut out,
        );
        conv.convert(
            &call(0, [0x7000, 8192, 0, 0, 0, 0], 0xdead_2000, 0),
            &mut FakeEnv,
            &mut out,
        );
        let kinds: Vec<_> = out.iter().map(Record::kind).collect();
        assert_eq!(kinds, ["process", "stack", "alloc", "alloc"]);
        let Record::Stack(s) = &out[1] else { panic!() };
        assert_eq!(
            s.frames.iter().map(|f| f.addr).collect::<Vec<_>>(),
            [0x1234, 0x1000, 0x2000]
        );
        let Record::Alloc(c) = &out[2] else { panic!() };
        assert_eq!(
            (c.addr, c.bytes, c.mem, &*c.api),
            (
                Some(0xdead_0000),
                Some(4096),
                Some(Mem::Device),
                "cuMemAlloc_v2"
            )
        );
        assert_eq!(c.dur_ns, 50);
    }

    #[test]
    fn the_probe_captured_name_stands_in_for_a_process_gone_from_proc() {
        struct GoneEnv;
        impl Environment for GoneEnv {
            fn process(&mut self, _pid: u32) -> Option<Process> {
                None
            }
            fn stack(&mut self, _id: u32) -> Option<Vec<u64>> {
                None
            }
            fn frames(&mut self, _pid: u32, _addrs: &[u64]) -> Vec<Frame> {
                Vec::new()
            }
        }
        let mut conv = Converter::new(table(&["cuMemAlloc_v2"]));
        let mut out = Vec::new();
        let mut ev = call(0, [0x7000, 4096, 0, 0, 0, 0], 0x10, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.comm[..8].copy_from_slice(b"train\x1b[2");
        }
        conv.convert(&ev, &mut GoneEnv, &mut out);
        let Record::Process(p) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(p.comm, "train", "captured, escape sequence removed");
    }

    #[test]
    fn every_cu_ctx_create_variant_is_read_by_its_own_signature() {
        // Flags 4 (CU_CTX_SCHED_BLOCKING_SYNC) on device 3, in each variant's argument order.
        let mut conv = Converter::new(table(&[
            "cuCtxCreate",
            "cuCtxCreate_v2",
            "cuCtxCreate_v3",
            "cuCtxCreate_v4",
        ]));
        let calls = [
            [0x7000, 4, 3, 0, 0, 0],
            [0x7000, 4, 3, 0, 0, 0],
            [0x7000, 0x8000, 1, 4, 3, 0],
            [0x7000, 0x8000, 4, 3, 0, 0],
        ];
        for (api, args) in calls.into_iter().enumerate() {
            let mut out = Vec::new();
            conv.convert(&call(api as u32, args, 0xc0, 0), &mut FakeEnv, &mut out);
            let Some(Record::CtxCreate(c)) = out.last() else {
                panic!("{out:?}")
            };
            assert_eq!(
                (c.device, c.flags, c.handle),
                (Some(3), Some(4), Some(0xc0)),
                "{}",
                c.api
            );
        }
    }

    #[test]
    fn green_context_calls_are_read_by_their_own_signatures() {
        let mut conv = Converter::new(table(&[
            "cuGreenCtxCreate",
            "cuCtxFromGreenCtx",
            "cuGreenCtxDestroy",
        ]));
        // cuGreenCtxCreate(&g, desc, dev 2, CU_GREEN_CTX_DEFAULT_STREAM) made green 0x91.
        let calls = [
            [0x7000, 0x8000, 2, 1, 0, 0],
            [0x7000, 0x91, 0, 0, 0, 0],
            [0x91, 0, 0, 0, 0, 0],
        ];
        let outs = [0x91, 0xc1, 0];
        let mut got = Vec::new();
        for (api, (args, out)) in calls.into_iter().zip(outs).enumerate() {
            let mut out_recs = Vec::new();
            conv.convert(&call(api as u32, args, out, 0), &mut FakeEnv, &mut out_recs);
            let c = out_recs.last().and_then(Record::call).expect("a call");
            got.push((c.green, c.handle, c.device, c.flags));
        }
        assert_eq!(
            got,
            [
                (Some(0x91), None, Some(2), Some(1)),
                (Some(0x91), Some(0xc1), None, None),
                (Some(0x91), None, None, None),
            ]
        );
    }

    #[test]
    fn failed_call_is_never_an_allocation() {
        let mut conv = Converter::new(table(&["cuMemAlloc_v2"]));
        let mut out = Vec::new();
        conv.convert(
            &call(0, [0x7000, 1 << 30, 0, 0, 0, 0], 0x55, 2),
            &mut FakeEnv,
            &mut out,
        );
        let Record::Failed(c) = out.last().unwrap() else {
            panic!("{out:?}")
        };
        assert_eq!((c.ret, c.bytes, c.addr), (2, Some(1 << 30), None));
        assert_eq!(c.mem, Some(crate::trace::Mem::Device));
        assert!(c.is_oom());
    }

    #[test]
    fn a_refused_cu_mem_create_is_not_an_oom() {
        // Driver 580 refuses PyTorch's first cuMemCreate (expandable segments) with
        // CUDA_ERROR_NOT_PERMITTED (800) before any memory is used: a failure, not an OOM.
        let mut c = crate::trace::Call {
            api: "cuMemCreate".into(),
            ret: 800,
            bytes: Some(2 << 20),
            mem: Some(crate::trace::Mem::VmmDevice),
            ..Default::default()
        };
        assert!(!c.is_oom());
        c.ret = crate::api::CUDA_ERROR_OUT_OF_MEMORY;
        assert!(c.is_oom());
    }

    #[test]
    fn legacy_abi_masks_upper_halves() {
        let mut conv = Converter::new(table(&["cuMemAlloc"]));
        let mut out = Vec::new();
        conv.convert(
            &call(
                0,
                [0x7000, 0xffff_ffff_0000_1000, 0, 0, 0, 0],
                0xaaaa_bbbb_0010_0000,
                0,
            ),
            &mut FakeEnv,
            &mut out,
        );
        let Record::Alloc(c) = out.last().unwrap() else {
            panic!()
        };
        assert_eq!((c.bytes, c.addr), (Some(0x1000), Some(0x0010_0000)));
    }

    #[test]
    fn pitch_is_read_at_return() {
        let mut conv = Converter::new(table(&["cuMemAllocPitch_v2"]));
        let mut out = Vec::new();
        let mut ev = call(0, [0x7000, 0x7008, 1000, 300, 4, 0], 0xbeef_0000, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.out[1] = 1024;
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Record::Alloc(c) = out.last().unwrap() else {
            panic!()
        };
        assert_eq!((c.bytes, c.pitch), (Some(1024 * 300), Some(1024)));
    }

    /// The value of a pool attribute is read at return through the third argument: a
    /// `cuuint64_t` for the byte counts, an `int` for the reuse policies (the upper half is
    /// not the caller's).
    #[test]
    fn pool_attributes_are_read_by_their_type() {
        let mut conv = Converter::new(table(&[
            "cuMemPoolSetAttribute",
            "cuMemPoolGetAttribute",
            "cuStreamSynchronize_ptsz",
            "cuEventSynchronize",
            "cuCtxSynchronize",
        ]));
        let mut out = Vec::new();
        let cases = [(0, 4, 5 << 32), (1, 5, 3 << 30), (1, 2, 0xdead_0000_0001)];
        for (api, attr, raw) in cases {
            let mut ev = call(api, [0x5600, attr, 0x7000, 0, 0, 0], 0, 0);
            if let RawEvent::Call(c) = &mut ev {
                c.out[1] = raw;
            }
            conv.convert(&ev, &mut FakeEnv, &mut out);
        }
        let got: Vec<_> = out
            .iter()
            .filter_map(|r| match r {
                Record::PoolAttr(c) => Some((&*c.api, c.pool, c.attr, c.value)),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "cuMemPoolSetAttribute",
                    Some(0x5600),
                    Some(4),
                    Some(5 << 32)
                ),
                (
                    "cuMemPoolGetAttribute",
                    Some(0x5600),
                    Some(5),
                    Some(3 << 30)
                ),
                ("cuMemPoolGetAttribute", Some(0x5600), Some(2), Some(1)),
            ]
        );
        // A value that could not be read is said so, not taken for 0.
        let mut ev = call(1, [0x5600, 4, 0x7000, 0, 0, 0], 0, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.flags |= flags::OUT1_FAULT;
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Record::PoolAttr(c) = out.last().unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.value, c.unreadable.clone()),
            (None, vec!["value".into()])
        );

        for (api, stream, handle) in [
            (2, Some(0x99), None),
            (3, None, Some(0x99)),
            (4, None, None),
        ] {
            conv.convert(
                &call(api, [0x99, 0, 0, 0, 0, 0], 0, 0),
                &mut FakeEnv,
                &mut out,
            );
            let Record::Sync(c) = out.last().unwrap() else {
                panic!()
            };
            assert_eq!((c.stream, c.handle), (stream, handle));
        }
    }

    /// Graph memory nodes: the alloc node's device from the pool properties read at entry,
    /// its size and the address the driver chose from the params read at return; the exec
    /// an instantiation made; the attribute values as `cuuint64_t`.
    #[test]
    fn graph_memory_calls_are_decoded_by_their_signatures() {
        let mut conv = Converter::new(table(&[
            "cuGraphAddMemAllocNode",
            "cuGraphAddMemFreeNode",
            "cuGraphInstantiateWithParams_ptsz",
            "cuGraphLaunch_ptsz",
            "cuDeviceGetGraphMemAttribute",
            "cuGraphExecDestroy",
            "cuGraphDestroy",
            "cuDeviceGraphMemTrim",
        ]));
        let mut out = Vec::new();
        // CU_MEM_LOCATION_TYPE_DEVICE (1), id 1.
        let mut node = call(0, [0x5000, 0x6000, 0, 0, 0x7000, 0], 0, 0);
        if let RawEvent::Call(c) = &mut node {
            c.blob[1] = 1 | (1 << 32);
            c.wide[graph_params::WIDE_BYTESIZE] = 8 << 20;
            c.wide[graph_params::WIDE_DPTR] = 0xa000_0000;
        }
        for ev in [
            node,
            call(1, [0x5001, 0x6000, 0, 0, 0xa000_0000, 0], 0, 0),
            call(2, [0x7100, 0x6000, 0x7200, 0, 0, 0], 0x8000, 0),
            call(3, [0x8000, 0x99, 0, 0, 0, 0], 0, 0),
            call(4, [1, 2, 0x7300, 0, 0, 0], 0, 0),
            call(5, [0x8000, 0, 0, 0, 0, 0], 0, 0),
            call(6, [0x6000, 0, 0, 0, 0, 0], 0, 0),
            call(7, [1, 0, 0, 0, 0, 0], 0, 0),
        ] {
            conv.convert(&ev, &mut FakeEnv, &mut out);
        }
        let calls: Vec<&Record> = out
            .iter()
            .filter(|r| !matches!(r, Record::Stack(_) | Record::Process(_)))
            .collect();
        let [alloc, free, inst, launch, attr, exec_gone, graph_gone, trim] = calls[..] else {
            panic!("{calls:?}")
        };
        let Record::GraphAllocNode(c) = alloc else {
            panic!("{alloc:?}")
        };
        assert_eq!(
            (c.graph, c.addr, c.bytes, c.device, c.mem),
            (
                Some(0x6000),
                Some(0xa000_0000),
                Some(8 << 20),
                Some(1),
                Some(Mem::Graph)
            )
        );
        let Record::GraphFreeNode(c) = free else {
            panic!("{free:?}")
        };
        assert_eq!((c.graph, c.addr), (Some(0x6000), Some(0xa000_0000)));
        let Record::GraphInstantiate(c) = inst else {
            panic!("{inst:?}")
        };
        assert_eq!((c.graph, c.handle), (Some(0x6000), Some(0x8000)));
        let Record::GraphLaunch(c) = launch else {
            panic!("{launch:?}")
        };
        assert_eq!((c.handle, c.stream), (Some(0x8000), Some(0x99)));
        let Record::GraphMemAttr(c) = attr else {
            panic!("{attr:?}")
        };
        // No value was read (`out[1]` is 0 in this event): 0 is what the driver wrote.
        assert_eq!((c.device, c.attr, c.value), (Some(1), Some(2), Some(0)));
        let Record::GraphDestroy(c) = exec_gone else {
            panic!("{exec_gone:?}")
        };
        assert_eq!((c.handle, c.graph), (Some(0x8000), None));
        let Record::GraphDestroy(c) = graph_gone else {
            panic!("{graph_gone:?}")
        };
        assert_eq!((c.handle, c.graph), (None, Some(0x6000)));
        let Record::GraphMemTrim(c) = trim else {
            panic!("{trim:?}")
        };
        assert_eq!(c.device, Some(1));

        // A failed alloc node has no address: the params were not read at return.
        let failed = call(0, [0x5000, 0x6000, 0, 0, 0x7000, 0], 0, 2);
        conv.convert(&failed, &mut FakeEnv, &mut out);
        let Some(Record::Failed(c)) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert_eq!((c.addr, c.bytes, c.ret), (None, None, 2));
    }

    #[test]
    fn host_located_vmm_is_host_memory() {
        let mut conv = Converter::new(table(&["cuMemCreate"]));
        let mut out = Vec::new();
        let mut ev = call(0, [0x7000, 2 << 20, 0x7100, 0, 0, 0], 77, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.blob = [0, 2, 0, 0, 0]; // location type HOST, id 0
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Record::VmmCreate(c) = out.last().unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.mem, c.handle, c.bytes),
            (Some(Mem::VmmHost), Some(77), Some(2 << 20))
        );
        if let RawEvent::Call(c) = &mut ev {
            c.blob = [0, 1 | (3 << 32), 0, 0, 0]; // device 3
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Record::VmmCreate(c) = out.last().unwrap() else {
            panic!()
        };
        assert_eq!((c.mem, c.device), (Some(Mem::VmmDevice), Some(3)));
    }

    #[test]
    fn signalled_calls_carry_the_configured_signal() {
        let mut conv = Converter::new(table(&["cuMemAllocManaged"]));
        conv.set_host_signal(10);
        let mut out = Vec::new();
        let mut ev = call(0, [0, 4096, 1, 0, 0, 0], 0x7f00_0000, 0);
        conv.convert(&ev, &mut FakeEnv, &mut out);
        assert_eq!(out.last().and_then(|r| r.call()).unwrap().signalled, None);
        if let RawEvent::Call(c) = &mut ev {
            c.flags |= flags::SIGNALLED;
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        assert_eq!(
            out.last().and_then(|r| r.call()).unwrap().signalled,
            Some(10)
        );
    }

    #[test]
    fn a_call_that_never_returned_is_unreturned_with_what_it_asked() {
        let mut conv = Converter::new(table(&["cuMemAllocManaged", "cuMemAllocPitch_v2"]));
        conv.set_host_signal(6);
        let mut out = Vec::new();
        // Whatever the return registers hold, a call that never returned has no result.
        let mut ev = call(0, [0x7000, 4096, 1, 0, 0, 0], 0x7f00_0000_0000, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.flags |= flags::NO_RETURN | flags::SIGNALLED;
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Some(Record::Unreturned(c)) = out.last() else {
            panic!("not unreturned: {out:?}");
        };
        assert_eq!(
            (c.bytes, c.mem, c.addr, c.ret, c.signalled),
            (Some(4096), Some(Mem::Managed), None, 0, Some(6))
        );
        // The pitch is an out-parameter too: the request is width x height.
        let mut ev = call(1, [0x7000, 0x7008, 100, 10, 4, 0], 0, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.flags |= flags::NO_RETURN;
            c.out[1] = 512;
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Some(Record::Unreturned(c)) = out.last() else {
            panic!("not unreturned: {out:?}");
        };
        assert_eq!((c.bytes, c.pitch, c.addr), (Some(1000), None, None));
    }

    #[test]
    fn unified_copies_carry_both_addresses() {
        let mut conv = Converter::new(table(&["cuMemcpy", "cuMemcpyAsync_ptsz"]));
        let mut out = Vec::new();
        conv.convert(
            &call(1, [0xd000, 0x5000, 4096, 0x99, 0, 0], 0, 0),
            &mut FakeEnv,
            &mut out,
        );
        let Some(Record::Copy(c)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (c.addr, c.src, c.src_mem, c.bytes, c.stream),
            (
                Some(0xd000),
                Some(0x5000),
                Some(CopySrc::Unified),
                Some(4096),
                Some(0x99)
            )
        );
    }

    #[test]
    fn batches_carry_the_copies_read_and_their_count() {
        let windows = |ev: RawEvent, wide: [u64; 8], blob: [u64; 5]| {
            edited(ev, |c| (c.wide, c.blob) = (wide, blob))
        };
        // Six copies, four read: dsts in wide[0..4], srcs in wide[4..8], sizes in the blob.
        let ev = windows(
            call(0, [0x7f00, 0x7f80, 0x7fc0, 6, 0, 0], 0, 0),
            [0xa0, 0xa1, 0xa2, 0xa3, 0x50, 0x51, 0x52, 0x53],
            [10, 11, 12, 13, 0],
        );
        let Record::Copy(c) = decode_one("cuMemcpyBatchAsync_v2", ev) else {
            panic!("a copy");
        };
        assert_eq!(
            (c.addr, c.src, c.bytes, c.count),
            (Some(0xa0), Some(0x50), Some(10), Some(6))
        );
        let rest: Vec<(Option<u64>, Option<u64>, u64)> = c
            .copies
            .iter()
            .flat_map(|b| b.iter())
            .map(|b| (b.addr, b.src, b.bytes))
            .collect();
        assert_eq!(
            rest,
            [
                (Some(0xa1), Some(0x51), 11),
                (Some(0xa2), Some(0x52), 12),
                (Some(0xa3), Some(0x53), 13)
            ]
        );
        // One copy: no more than it has is taken.
        let ev = windows(
            call(0, [0x7f00, 0x7f80, 0x7fc0, 1, 0, 0], 0, 0),
            [0xa0, 0xdead, 0, 0, 0x50, 0xbeef, 0, 0],
            [10, 99, 0, 0, 0],
        );
        let Record::Copy(c) = decode_one("cuMemcpyBatchAsync", ev) else {
            panic!("a copy");
        };
        assert_eq!((c.addr, c.copies, c.count), (Some(0xa0), None, Some(1)));
        // cuMemcpy3DBatchAsync_v2: the first operation, pointer to pointer, 1 KiB x 8 rows.
        let ev = windows(
            call(0, [2, 0x7f00, 0, 0, 0, 0], 0, 0),
            [1, 0xb000, 1024, 1, 0, 1024, 8, 1],
            [1, 0x6000, 1024, 1, 0],
        );
        let Record::Copy(c) = decode_one("cuMemcpy3DBatchAsync_v2", ev) else {
            panic!("a copy");
        };
        assert_eq!(
            (c.addr, c.src, c.src_mem, c.bytes, c.count),
            (
                Some(0xb000),
                Some(0x6000),
                Some(CopySrc::Unified),
                Some(8192),
                Some(2)
            )
        );
    }

    #[test]
    fn array_maps_multicast_binds_and_descriptor_files_are_decoded_by_signature() {
        use crate::trace::{ArrayRegion, Bound};
        use vramtrace_common::flags::FILE_UNKNOWN;
        let with = |ev: RawEvent, wide: [u64; 8], blob: [u64; 5], out1: u64, flags: u32| {
            edited(ev, |c| {
                (c.wide, c.blob, c.out[1], c.flags) = (wide, blob, out1, flags);
            })
        };
        // CUarrayMapInfo words 0..5 in the blob, 4..12 in the wide window: an array, a region
        // of level 1 (x 64, y 32, 128 x 16 x 1), MAP of handle 0x77 from offset 4096.
        let sub = |lo: u64, hi: u64| lo | (hi << 32);
        let ev = with(
            call(0, [0x7000, 3, 0x55, 0, 0, 0], 0, 0),
            [sub(64, 32), sub(0, 128), sub(16, 1), 1, 0x77, 4096, 0, 0],
            [0, 0xa11, 0, sub(1, 0), sub(64, 32)],
            0,
            0,
        );
        let Record::ArrayMap(c) = decode_one("cuMemMapArrayAsync", ev) else {
            panic!("an array map");
        };
        assert_eq!(
            (c.handle, c.count, c.stream),
            (Some(0xa11), Some(3), Some(0x55))
        );
        assert_eq!(
            c.region.as_deref(),
            Some(&ArrayRegion {
                miptail: false,
                level: 1,
                layer: 0,
                offset: [64, 32, 0],
                extent: [128, 16, 1],
            })
        );
        assert_eq!(
            c.bound.as_deref(),
            Some(&Bound {
                handle: 0x77,
                offset: 4096
            })
        );
        // An UNMAP of the mip tail: layer 2, 64 KiB from 8 KiB.
        let ev = with(
            call(0, [0x7000, 1, 0, 0, 0, 0], 0, 0),
            [8192, 65536, 0, 2, 0, 0, 0, 0],
            [0, 0xa11, 1, 2, 8192],
            0,
            0,
        );
        let Record::ArrayUnmap(c) = decode_one("cuMemMapArrayAsync_ptsz", ev) else {
            panic!("an array unmap");
        };
        let r = c.region.unwrap();
        assert_eq!(
            (r.miptail, r.layer, r.offset[0], r.extent[0]),
            (true, 2, 8192, 65536)
        );
        assert!(c.bound.is_none());
        // cuMulticastBindMem_v2(mc, dev, mcOffset, memHandle, memOffset, size, flags): the
        // device second, the flags on the stack (not read).
        let ev = call(0, [0xc, 1, 2 << 20, 0xa, 0, 4 << 20], 0, 0);
        let Record::MulticastBind(c) = decode_one("cuMulticastBindMem_v2", ev) else {
            panic!("a bind");
        };
        assert_eq!(
            (c.handle, c.device, c.offset, c.bytes, c.flags),
            (Some(0xc), Some(1), Some(2 << 20), Some(4 << 20), None)
        );
        assert_eq!(
            c.bound.as_deref(),
            Some(&Bound {
                handle: 0xa,
                offset: 0
            })
        );
        // The unversioned bind: no device, flags in the sixth register.
        let ev = call(0, [0xc, 2 << 20, 0xa, 0, 4 << 20, 0], 0, 0);
        let Record::MulticastBind(c) = decode_one("cuMulticastBindMem", ev) else {
            panic!("a bind");
        };
        assert_eq!(
            (c.device, c.offset, c.flags),
            (None, Some(2 << 20), Some(0))
        );
        // A descriptor's open file: the same kernel address gives the same identity, never
        // the address itself; one the probe did not find is said.
        let export = |file: u64, flags: u32| {
            let ev = with(
                call(0, [0x7fff, 0xa, 1, 0, 0, 0], 9, 0),
                [0; 8],
                [0; 5],
                file,
                flags,
            );
            let Record::Export(c) = decode_one("cuMemExportToShareableHandle", ev) else {
                panic!("an export");
            };
            c
        };
        let (a, b, other) = (
            export(0xffff_8880_1234_5600, 0),
            export(0xffff_8880_1234_5600, 0),
            export(0xffff_8880_1234_5700, 0),
        );
        assert_eq!((a.os_handle, a.handle_type), (Some(9), Some(1)));
        assert_eq!(a.file, b.file);
        assert_ne!(a.file, other.file);
        assert_ne!(a.file, Some(0xffff_8880_1234_5600));
        let unknown = export(0, FILE_UNKNOWN);
        assert_eq!(unknown.file, None);
        assert_eq!(unknown.unreadable, ["file"]);
    }

    #[test]
    fn copy_descriptors_are_read_from_their_windows() {
        let mut conv = Converter::new(table(&[
            "cuMemcpy2DAsync_v2",
            "cuMemcpy3D_v2",
            "cuMemcpy2D",
        ]));
        let mut out = Vec::new();
        // CUDA_MEMCPY2D words 2..7: srcMemoryType HOST, srcHost, srcDevice, srcArray, srcPitch;
        // words 8..16: dstY 2, dstMemoryType DEVICE, dstHost, dstDevice, dstArray, dstPitch
        // 1024, WidthInBytes 1000, Height 30.
        let mut ev = call(0, [0x7000, 0x77, 0, 0, 0, 0], 0, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.blob = [1, 0x5000, 0, 0, 1000];
            c.wide = [2, 2, 0, 0xd000, 0, 1024, 1000, 30];
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Some(Record::Copy(c)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (c.addr, c.src, c.src_mem, c.bytes, c.pitch, c.stream),
            (
                Some(0xd000 + 2048),
                Some(0x5000),
                Some(CopySrc::Host),
                Some(30_000),
                Some(1024),
                Some(0x77)
            )
        );
        // CUDA_MEMCPY3D words 4..9: srcMemoryType UNIFIED, srcHost, srcDevice; words 17..25:
        // dstDevice, dstArray, reserved1, dstPitch, dstHeight, WidthInBytes, Height, Depth.
        let mut ev = call(1, [0x7000, 0, 0, 0, 0, 0], 0, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.blob = [4, 0, 0xe000, 0, 0];
            c.wide = [0xd000, 0, 0, 64, 8, 64, 8, 4];
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Some(Record::Copy(c)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (c.addr, c.src, c.src_mem, c.bytes),
            (
                Some(0xd000),
                Some(0xe000),
                Some(CopySrc::Unified),
                Some(64 * 8 * 4)
            )
        );
        // A device source, a host destination (no device address).
        let mut ev = call(0, [0x7000, 0, 0, 0, 0, 0], 0, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.blob = [2, 0, 0xd000, 0, 0];
            c.wide = [0, 1, 0x5000, 0, 0, 0, 100, 1];
        }
        conv.convert(&ev, &mut FakeEnv, &mut out);
        let Some(Record::Copy(c)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (c.addr, c.src, c.src_mem),
            (None, Some(0xd000), Some(CopySrc::Device))
        );
        // The CUDA 3.x descriptor is not decoded.
        conv.convert(
            &call(2, [0x7000, 0, 0, 0, 0, 0], 0, 0),
            &mut FakeEnv,
            &mut out,
        );
        let Some(Record::Copy(c)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!((c.addr, c.src_mem, c.unreadable.len()), (None, None, 1));
    }

    #[test]
    fn pool_props_say_where_the_pool_memory_lives() {
        let mut conv = Converter::new(table(&["cuMemPoolCreate"]));
        let mut out = Vec::new();
        // allocType, handleTypes | location { type, id }.
        for (word0, word1, mem, device) in [
            (1, 1 | (2 << 32), None, Some(2)),
            (2, 1, Some(Mem::Managed), Some(0)),
            (1, 2, Some(Mem::HostPinned), None),
            (1, 3 | (1 << 32), Some(Mem::HostPinned), None),
        ] {
            let mut ev = call(0, [0x7000, 0x7100, 0, 0, 0, 0], 0xb00, 0);
            if let RawEvent::Call(c) = &mut ev {
                c.blob = [word0, word1, 0, 0, 0];
            }
            conv.convert(&ev, &mut FakeEnv, &mut out);
            let Some(Record::PoolCreate(c)) = out.last() else {
                panic!("{out:?}")
            };
            assert_eq!((c.mem, c.device, c.pool), (mem, device, Some(0xb00)));
        }
    }

    #[test]
    fn pools_by_location_and_the_current_pool() {
        let mut conv = Converter::new(table(&[
            "cuMemGetDefaultMemPool",
            "cuMemSetMemPool",
            "cuDeviceSetMemPool",
            "cuDeviceGetMemPool",
        ]));
        let mut out = Vec::new();
        let mut last = |ev: RawEvent| {
            conv.convert(&ev, &mut FakeEnv, &mut out);
            let Some(Record::PoolCreate(c)) = out.last() else {
                panic!("{out:?}")
            };
            (c.mem, c.device, c.pool)
        };
        // cuMemGetDefaultMemPool(&pool, &{HOST, 0}, PINNED).
        let mut ev = call(0, [0x7000, 0x7100, 1, 0, 0, 0], 0xc1, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.blob = [2, 0, 0, 0, 0];
        }
        assert_eq!(last(ev), (Some(Mem::HostPinned), None, Some(0xc1)));
        // cuMemSetMemPool(&{DEVICE, 1}, PINNED, pool).
        let mut ev = call(1, [0x7100, 1, 0xb3, 0, 0, 0], 0, 0);
        if let RawEvent::Call(c) = &mut ev {
            c.blob = [1 | (1 << 32), 0, 0, 0, 0];
        }
        assert_eq!(last(ev), (None, Some(1), Some(0xb3)));
        assert_eq!(
            last(call(2, [1, 0xb3, 0, 0, 0, 0], 0, 0)),
            (None, Some(1), Some(0xb3))
        );
        assert_eq!(
            last(call(3, [0x7000, 2, 0, 0, 0, 0], 0xb4, 0)),
            (None, Some(2), Some(0xb4))
        );
    }

    #[test]
    fn array_bytes_follow_the_descriptor() {
        // 2D float4, 100 x 50.
        let blob = [100, 50, 0x20 | (4 << 32), 0, 0];
        assert_eq!(
            array_bytes(ArrayShape::TwoD, false, &blob, 0),
            100 * 50 * 4 * 4
        );
        // 3D u8, 10 x 10 x 10, 1 channel.
        let blob = [10, 10, 10, 0x01 | (1 << 32), 0];
        assert_eq!(array_bytes(ArrayShape::ThreeD, false, &blob, 0), 1000);
        // Legacy 2D: unsigned int Width, Height, Format, NumChannels.
        let blob = [100 | (50 << 32), 0x20 | (4 << 32), 0, 0, 0];
        assert_eq!(array_bytes(ArrayShape::TwoD, true, &blob, 0), 100 * 50 * 16);
    }

    #[test]
    fn exit_ends_a_pid_generation() {
        let mut conv = Converter::new(table(&["cuMemAlloc_v2"]));
        let mut out = Vec::new();
        conv.convert(
            &call(0, [0x7000, 1, 0, 0, 0, 0], 1, 0),
            &mut FakeEnv,
            &mut out,
        );
        conv.convert(
            &RawEvent::Exit(ExitEvent {
                kind: EVENT_EXIT,
                pid: 42,
                tid: 42,
                _pad: 0,
                ts_ns: 9,
            }),
            &mut FakeEnv,
            &mut out,
        );
        conv.convert(
            &call(0, [0x7000, 1, 0, 0, 0, 0], 1, 0),
            &mut FakeEnv,
            &mut out,
        );
        let procs: Vec<u32> = out
            .iter()
            .filter_map(|r| {
                if let Record::Process(p) = r {
                    Some(p.id)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(procs, [1, 2]);
        assert!(
            out.iter()
                .any(|r| matches!(r, Record::Exit(e) if e.proc == 1))
        );
    }
}
