//! Wire types shared by the eBPF programs and user space: what a probe sends through the ring
//! buffer, what the attach cookie encodes, and the indices of the loss counters.
//!
//! Everything here is `#[repr(C)]`, plain integers, and size-checked at compile time, so that
//! the kernel side and user space agree byte for byte. No `bool` and no Rust enums cross the
//! boundary: codes are `u32` constants with a conversion on the user side.
#![no_std]

/// `CallEvent::kind`: a driver call, sent at its return, or flagged `flags::NO_RETURN` once
/// it is known never to return.
pub const EVENT_CALL: u32 = 1;
/// `ExitEvent::kind`: a traced process ended (its last thread exited).
pub const EVENT_EXIT: u32 = 2;
/// `StackSample::kind`: a copy of a call's user stack, sent at its entry.
pub const EVENT_STACK: u32 = 3;
/// `ExitEvent::kind` reused: a new process was stopped (`SIGSTOP`) at its first driver call
/// (`HOLD_NEW`); user space reads it, then lets it go on (`SIGCONT`).
pub const EVENT_HOLD: u32 = 4;

/// `SEEN` values: what is known of a process.
pub mod seen {
    /// Stopped at its first call (`EVENT_HOLD` sent); no event delivered yet.
    pub const HELD: u32 = 2;
    /// An event was delivered.
    pub const DELIVERED: u32 = 1;
}

/// Number of argument registers captured at entry (x86-64 SysV: rdi, rsi, rdx, rcx, r8, r9).
pub const MAX_ARGS: usize = 6;
/// Words of a struct read at entry through one pointer argument (a `CUmemAllocationProp`,
/// an array descriptor, pool properties). 40 bytes cover the largest one read.
pub const BLOB_WORDS: usize = 5;
/// Words of the second, wider window read through the same pointer argument, for structs whose
/// fields of interest lie apart (`CUDA_MEMCPY2D`, `CUDA_MEMCPY3D`: the source near the start,
/// the destination and extent near the end).
pub const WIDE_WORDS: usize = 8;
/// Frames kept per user stack. The kernel's `perf_event_max_stack` default is 127.
pub const MAX_STACK_DEPTH: usize = 127;
/// API ids are below this: the bound of the loop that clears a thread's in-flight entries at
/// its exit. User space refuses to hook more symbols than this.
pub const MAX_API_IDS: u32 = 256;

/// The attach cookie of every driver-call probe. One entry program and one return program
/// serve every hooked symbol; the cookie tells them which symbol fired and what to read.
///
/// Bits 0..16 hold the API id (an index into user space's table of hooked functions).
pub mod cookie {
    /// Mask of the API id.
    pub const API_MASK: u64 = 0xffff;
    /// At return, read a `u64` through the pointer in argument 0 into `CallEvent::out[0]`.
    pub const DEREF_ARG0: u64 = 1 << 16;
    /// At return, read a `u64` through the pointer in argument 1 into `CallEvent::out[1]`.
    pub const DEREF_ARG1: u64 = 1 << 17;
    /// At return, read a `u64` through the pointer in argument 2 into `CallEvent::out[1]`
    /// (never together with `DEREF_ARG1`): a value an entry point reads or writes through
    /// its third argument (`cuMemPoolSetAttribute` / `cuMemPoolGetAttribute`).
    pub const DEREF_ARG2: u64 = 1 << 18;
    /// Shift of the 3-bit field that names the pointer argument (index + 1) whose pointee is
    /// copied into `CallEvent::blob` at entry; 0 means none.
    pub const BLOB_ARG_SHIFT: u32 = 20;
    pub const BLOB_ARG_MASK: u64 = 0x7 << BLOB_ARG_SHIFT;
    /// Capture the user stack of this call.
    pub const STACK: u64 = 1 << 24;
    /// The call places memory in host RAM (managed, pinned, registered memory). Under the
    /// vram-only policy with a signal configured, the calling thread is signalled at entry.
    pub const HOST_MEMORY: u64 = 1 << 25;
    /// `cuMemCreate`: host memory only when the location type in the blob says so; the
    /// probe checks `blob` word 1 (location type) at entry.
    pub const HOST_IF_LOCATION: u64 = 1 << 26;

    /// Shift of the 5-bit field that counts the words skipped before the blob window.
    pub const BLOB_SKIP_SHIFT: u32 = 27;
    pub const BLOB_SKIP_MASK: u64 = 0x1f << BLOB_SKIP_SHIFT;
    /// Shift of the 6-bit field that names where the wide window starts (words skipped + 1)
    /// in the struct the blob argument points at; 0 means no wide window.
    pub const WIDE_SHIFT: u32 = 32;
    pub const WIDE_MASK: u64 = 0x3f << WIDE_SHIFT;
    /// At entry, read the wide window from the caller's stack just above the return address
    /// (`[rsp+8 ..]`): a struct of more than 16 bytes passed by value (x86-64 SysV passes it
    /// in memory), as `cuIpcOpenMemHandle`'s 64-byte `CUipcMemHandle`.
    pub const WIDE_FROM_STACK: u64 = 1 << 38;
    /// Read the wide window at return, not at entry, and only when the call succeeded: a
    /// struct the driver filled, through the blob argument at the wide window's skip
    /// (`CUDA_MEM_ALLOC_NODE_PARAMS::dptr` of `cuGraphAddMemAllocNode`), or through argument
    /// 0 from its start when the cookie names no blob argument (`cuIpcGetMemHandle`'s handle,
    /// `cuMemPoolExportPointer`'s export data). A read that faults sets `BLOB_FAULT`.
    pub const WIDE_AT_RETURN: u64 = 1 << 39;
    /// At entry, read the first [`BATCH_READ`] elements of the three arrays that arguments
    /// 0, 1 and 2 point at (`cuMemcpyBatchAsync`'s `dsts`, `srcs`, `sizes`; argument 3 is
    /// their length): `dsts` into `wide[0..4]`, `srcs` into `wide[4..8]`, `sizes` into
    /// `blob[0..4]`. Elements past the length are not read. A read that faults sets
    /// `BLOB_FAULT`.
    pub const BATCH_ARRAYS: u64 = 1 << 40;
    /// Elements of each array that [`BATCH_ARRAYS`] reads.
    pub const BATCH_READ: usize = 4;
    /// At return, when the call succeeded and argument 2 (the handle type) is
    /// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` (1): find the open file (`struct file`)
    /// behind the descriptor in the calling process's table and put its kernel address in
    /// `out[1]`. The descriptor is what argument 0 points at (`out[0]`, an `int`) with
    /// [`FD_IN_OUT0`], else argument 1's value. Not found (the kernel's offsets unknown, no
    /// such descriptor) sets `FILE_UNKNOWN`.
    pub const FILE_OF_FD: u64 = 1 << 41;
    /// With [`FILE_OF_FD`]: the descriptor is the `int` argument 0 points at
    /// (`cuMemExportToShareableHandle`), not argument 1 (`cuMemImportFromShareableHandle`).
    pub const FD_IN_OUT0: u64 = 1 << 42;

    /// Builds a cookie.
    pub const fn make(api: u16, flags: u64) -> u64 {
        api as u64 | flags
    }
    /// The argument index whose pointee becomes the blob, if any.
    pub const fn blob_arg(c: u64) -> Option<usize> {
        let v = ((c & BLOB_ARG_MASK) >> BLOB_ARG_SHIFT) as usize;
        if v == 0 { None } else { Some(v - 1) }
    }
    /// Words skipped before the blob window.
    pub const fn blob_skip(c: u64) -> usize {
        ((c & BLOB_SKIP_MASK) >> BLOB_SKIP_SHIFT) as usize
    }
    /// The cookie bits that start the blob window `words` words into the struct.
    pub const fn with_blob_skip(words: usize) -> u64 {
        ((words as u64) << BLOB_SKIP_SHIFT) & BLOB_SKIP_MASK
    }
    /// Words skipped before the wide window, if there is one.
    pub const fn wide_skip(c: u64) -> Option<usize> {
        let v = ((c & WIDE_MASK) >> WIDE_SHIFT) as usize;
        if v == 0 { None } else { Some(v - 1) }
    }
    /// The cookie bits that read the wide window `words` words into the struct.
    pub const fn with_wide_skip(words: usize) -> u64 {
        ((words as u64 + 1) << WIDE_SHIFT) & WIDE_MASK
    }
    /// The cookie bits that select `arg` as the blob source.
    pub const fn with_blob_arg(arg: usize) -> u64 {
        ((arg as u64 + 1) << BLOB_ARG_SHIFT) & BLOB_ARG_MASK
    }
}

/// `CallEvent::flags` bits: what could not be read. A set bit means the matching field is
/// unknown, not zero.
pub mod flags {
    /// Reading `out[0]` through argument 0 faulted.
    pub const OUT0_FAULT: u32 = 1 << 0;
    /// Reading `out[1]` through argument 1 (or argument 2, `DEREF_ARG2`) faulted.
    pub const OUT1_FAULT: u32 = 1 << 1;
    /// Copying the blob or the wide window (at entry, or at return for `WIDE_AT_RETURN`)
    /// faulted.
    pub const BLOB_FAULT: u32 = 1 << 2;
    /// The return address could not be read at entry.
    pub const CALLER_FAULT: u32 = 1 << 3;
    /// A stack was asked for and could not be captured (`stack_id` holds the error).
    pub const STACK_FAULT: u32 = 1 << 4;
    /// The probe sent a signal to the calling thread (vram-only policy).
    pub const SIGNALLED: u32 = 1 << 5;
    /// The call never returned: its thread ended inside it, or the same thread entered the
    /// same entry point again first (a signal handler that never returned, a `longjmp` out
    /// of the driver). `ts_ns` is when that was seen; `ret` and `out` mean nothing.
    pub const NO_RETURN: u32 = 1 << 6;
    /// A copy of the user stack was sent for this call ([`StackSample`], keyed by `tid` and
    /// `ts_entry_ns`), to be unwound in user space from its CFI.
    pub const STACK_COPIED: u32 = 1 << 7;
    /// `FILE_OF_FD` was asked for and the open file behind the descriptor was not found.
    pub const FILE_UNKNOWN: u32 = 1 << 8;
}

/// `STACK_MODE` values: how user stacks are captured.
pub mod stack_mode {
    /// No stacks; the immediate caller only.
    pub const OFF: u32 = 0;
    /// The kernel's frame-pointer walk (`bpf_get_stackid`), deduplicated in its stack map.
    pub const FRAME_POINTERS: u32 = 1;
    /// A copy of the stack and the registers, unwound in user space (CFI, then frame
    /// pointers where a module has no CFI).
    pub const COPY: u32 = 2;
}

/// Indices into the per-CPU `COUNTERS` array. Each counts one kind of loss (or delivery); the
/// programs add to them atomically.
pub mod counter {
    /// An event was dropped because the ring buffer was full.
    pub const LOST_RINGBUF: u32 = 0;
    /// An entry could not be remembered (the in-flight map was full): its call is lost.
    pub const LOST_ENTRY: u32 = 1;
    /// A stack capture failed (the event is delivered without a stack).
    pub const STACK_FAILED: u32 = 2;
    /// A return arrived whose entry was never seen: the process became traced, or the probes
    /// were attached, while the call was in flight. The return of a call whose entry was
    /// dropped for a full in-flight map is not counted again here.
    pub const RETURN_WITHOUT_ENTRY: u32 = 3;
    /// Events written to the ring buffer.
    pub const SUBMITTED: u32 = 4;
    /// A process-exit event was dropped because the ring buffer was full.
    pub const LOST_EXIT: u32 = 5;
    /// The fork tracepoint could not add a child (process or thread) to a full `FILTER`: a
    /// child process so left out is not traced at all.
    pub const FILTER_FULL: u32 = 6;
    /// An event of a process that the full `SEEN` map could not remember was delivered: the
    /// process's exit will not be.
    pub const SEEN_FULL: u32 = 7;
    /// A call by a thread that the full `THREADS` map could not remember: if it never
    /// returns, its entry is not cleared at the thread's exit and the call is not reported.
    pub const THREADS_FULL: u32 = 8;
    /// A probe fired with an API id outside the hooked table; the call is dropped.
    pub const UNKNOWN_API: u32 = 9;
    /// A stack copy was dropped because its ring buffer was full (the call is delivered
    /// with its immediate caller only).
    pub const LOST_SAMPLE: u32 = 10;
    /// Number of counters.
    pub const COUNT: u32 = 11;
}

/// `FILTER` map values: which processes are traced when the PID filter is on.
pub mod filter {
    /// Trace this process and follow its children.
    pub const TRACE: u32 = 1;
    /// Do not trace this process, but trace its children (the tracer itself, for `-- CMD`).
    pub const FOLLOW_ONLY: u32 = 2;
}

/// Pages of user stack copied per sample, from the page that holds the stack pointer upwards.
pub const STACK_COPY_PAGES: usize = 4;
/// Bytes of one stack copy.
pub const STACK_COPY_BYTES: usize = STACK_COPY_PAGES * 4096;

/// The user stack of one call at its entry: registers and a copy of the stack memory, for
/// unwinding in user space. Sent through the same ring buffer as the call, at entry, so it
/// always comes before the call's [`CallEvent`], which refers to it by `tid` and
/// `ts_entry_ns` (flag [`flags::STACK_COPIED`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackSample {
    /// Always `EVENT_STACK`.
    pub kind: u32,
    /// Bytes of `stack` that hold user memory: whole pages, from the page that holds `sp`
    /// up to the first page that cannot be read (the top of the stack) or the copy's size.
    pub len: u32,
    /// `CallEvent::ts_entry_ns` of the call.
    pub ts_entry_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// Instruction pointer, stack pointer and frame pointer at the probe.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Address of `stack[0]`: the start of the page that holds `sp`.
    pub base: u64,
    /// `py_status::*`: whether the calling thread's CPython frames were read.
    pub py_status: u32,
    /// Entries of `py` that hold frames, innermost first.
    pub py_count: u32,
    /// The calling thread's CPython frames, as the interpreter held them at entry.
    pub py: [PyFrameRaw; MAX_PY_FRAMES],
    pub stack: [u8; STACK_COPY_BYTES],
}
const _: () = assert!(
    core::mem::size_of::<StackSample>()
        == 64 + MAX_PY_FRAMES * core::mem::size_of::<PyFrameRaw>() + STACK_COPY_BYTES
);

/// CPython frames read per stack copy, at most (entry shims included).
pub const MAX_PY_FRAMES: usize = 128;

/// `StackSample::py_status` values.
pub mod py_status {
    /// The process has no CPython layout in `PY_PROCS` (not Python, or not detected yet).
    pub const NONE: u32 = 0;
    /// Every frame of the thread was read.
    pub const OK: u32 = 1;
    /// No thread state of the interpreter belongs to the calling thread.
    pub const NO_THREAD: u32 = 2;
    /// Reading the interpreter's memory failed; the frames before the fault were kept.
    pub const FAULT: u32 = 3;
    /// The thread had more frames than `MAX_PY_FRAMES`; the innermost were kept.
    pub const TRUNCATED: u32 = 4;
}

/// `PyFrameRaw::flags` bits.
pub mod py_frame {
    /// The frame is the first one its call of the eval loop ran (3.11 `is_entry`).
    pub const ENTRY: u64 = 1 << 0;
    /// A shim frame that the eval loop pushes at its start (3.12+ `FRAME_OWNED_BY_CSTACK`):
    /// it marks where one call of the eval loop begins and is not a frame of the program.
    pub const SHIM: u64 = 1 << 1;
}

/// One CPython frame as read in the kernel: resolved to a function, file and line in user
/// space, from the code object's memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRaw {
    /// Address of the frame's code object (`f_code`, `f_executable`).
    pub code: u64,
    /// The instruction: 3.10 `f_lasti` (an index in code units); 3.11+ the address of the
    /// instruction (`prev_instr`, `instr_ptr`).
    pub instr: u64,
    /// `py_frame::*` bits.
    pub flags: u64,
}
const _: () = assert!(core::mem::size_of::<PyFrameRaw>() == 24);

/// How to find a CPython process's thread states and walk their frames: addresses and field
/// offsets of that interpreter's version, filled by user space (`PY_PROCS`, keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyConfig {
    /// Address of the runtime's pointer to its first interpreter (`_PyRuntime.interpreters.head`).
    pub interp_head: u64,
    /// `PyInterpreterState::next`.
    pub interp_next: u32,
    /// `PyInterpreterState` → its first thread state (`tstate_head`, `threads.head`).
    pub interp_threads: u32,
    /// `PyThreadState::next`.
    pub tstate_next: u32,
    /// `PyThreadState` → the thread's id: `native_thread_id` (3.11+) or `thread_id` (a
    /// `pthread_t`, when `pthread_tid` is nonzero).
    pub tstate_tid: u32,
    /// Nonzero: `tstate_tid` holds a `pthread_t` (glibc: the thread's `struct pthread`) and
    /// the kernel's thread id is the `u32` at this offset in it.
    pub pthread_tid: u32,
    /// `PyThreadState` → the current frame (3.10 `frame`, 3.13 `current_frame`) or the
    /// `_PyCFrame` (3.11, 3.12 `cframe`).
    pub tstate_frame: u32,
    /// Nonzero: `tstate_frame` points at a `_PyCFrame` and the current frame is at this
    /// offset plus one in it.
    pub cframe_frame: u32,
    /// Frame → the calling frame (`f_back`, `previous`).
    pub frame_previous: u32,
    /// Frame → its code object (`f_code`, `f_executable`).
    pub frame_code: u32,
    /// Frame → its instruction (`f_lasti`, `prev_instr`, `instr_ptr`).
    pub frame_instr: u32,
    /// Bytes of that field: 4 (`int f_lasti`) or 8 (a pointer).
    pub instr_size: u32,
    /// `py_frame::*` flag that `entry_byte` marks (0: none, as in 3.10).
    pub entry_flag: u32,
    /// Frame → the byte that marks an entry frame (`is_entry`, `owner`).
    pub entry_offset: u32,
    /// The value of that byte that marks it (`true`, `FRAME_OWNED_BY_CSTACK`).
    pub entry_value: u32,
}
const _: () = assert!(core::mem::size_of::<PyConfig>() == 64);

/// One driver call, captured at entry and completed at return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallEvent {
    /// Always `EVENT_CALL`.
    pub kind: u32,
    /// API id from the attach cookie.
    pub api: u32,
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` at entry (CLOCK_MONOTONIC).
    pub ts_entry_ns: u64,
    /// `bpf_ktime_get_ns()` at return.
    pub ts_ns: u64,
    /// Argument registers at entry.
    pub args: [u64; MAX_ARGS],
    /// Out-parameters read at return, as the cookie asked.
    pub out: [u64; 2],
    /// A struct read through a pointer argument at entry, as the cookie asked.
    pub blob: [u64; BLOB_WORDS],
    /// The wide window of the same struct, when the cookie asks for one.
    pub wide: [u64; WIDE_WORDS],
    /// The return address at entry: the instruction after the call into the driver.
    pub caller: u64,
    /// Id in the `STACKS` map, or a negative errno, or -1 when no stack was asked for.
    pub stack_id: i64,
    /// The driver's return code (`CUresult`; 0 is success, 2 is out of memory).
    pub ret: i32,
    /// `flags::*` bits.
    pub flags: u32,
    /// The thread's name (`task->comm`), NUL-padded, in the first event of each process only
    /// (all zero otherwise): a process that is gone before user space reads `/proc` keeps
    /// its name.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<CallEvent>() == 240); // no hidden padding

/// A traced process ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    /// Always `EVENT_EXIT`.
    pub kind: u32,
    /// Process id.
    pub pid: u32,
    /// Id of the last thread to exit.
    pub tid: u32,
    /// Always zero.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` at exit.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 24);

/// Key of the in-flight entry map: one slot per thread and API, so that threads calling the
/// driver concurrently, and a driver entry point that calls another hooked one, never clobber
/// each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryKey {
    pub pid_tgid: u64,
    pub api: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EntryKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with no padding (sizes asserted above); every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::CallEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EntryKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackSample {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PyConfig {}
}
