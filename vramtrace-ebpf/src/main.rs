//! vramtrace's kernel side: one entry and one return program serve every hooked CUDA driver
//! symbol (multi-uprobe links; the attach cookie says which symbol fired and what to read),
//! plus tracepoints for process exit and fork.
//!
//! Every loss is counted in `COUNTERS`: an event the ring buffer had no room for, an entry
//! the in-flight map had no room for, a return whose entry was never seen, a child the PID
//! filter had no room for, a process or thread the bookkeeping maps had no room for, an API
//! id outside the table. A call that never returns (its thread ended inside it) is still
//! delivered, flagged `NO_RETURN`, when its entry is cleared at the thread's exit.
//!
//! The programs capture; they do not interpret. Which argument is a size, a handle or an
//! out-pointer is decided in user space (`vramtrace/src/api.rs`), so the kernel side stays
//! small and the same for every entry point.
#![no_std]
#![no_main]
#![expect(
    unstable_features,
    reason = "the BPF target has no atomic read-modify-write in core: counters add with asm"
)]
#![feature(asm_experimental_arch)]

mod python;

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_EXIST, BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_send_signal, bpf_send_signal_thread,
        generated,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace, ring_buf::RingBufEntry},
    programs::{ProbeContext, RetProbeContext, TracePointContext, tracing::StackIdContext as _},
};
use vramtrace_common::{
    CallEvent, EVENT_CALL, EVENT_EXIT, EVENT_HOLD, EVENT_STACK, EntryKey, ExitEvent, MAX_API_IDS,
    MAX_ARGS, STACK_COPY_PAGES, StackSample, cookie, counter, filter, flags, seen, stack_mode,
};

/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`.
const POSIX_FD_HANDLE: u32 = 1;
/// `SIGSTOP` on Linux.
const SIGSTOP: u32 = 19;
/// `ENOSPC`: what a stack copy the ring buffer had no room for is flagged with.
const ENOSPC: i64 = 28;
/// `-EEXIST`, as map updates return it.
const EEXIST: i32 = -17;

/// Nonzero: trace only processes in `FILTER`.
#[unsafe(no_mangle)]
static FILTER_ENABLED: Global<u32> = Global::new(0);
/// How user stacks are captured for calls whose cookie asks for one (`stack_mode::*`).
#[unsafe(no_mangle)]
static STACK_MODE: Global<u32> = Global::new(stack_mode::FRAME_POINTERS);
/// Nonzero: stop a new process at its first driver call (`SIGSTOP`) and tell user space
/// (`EVENT_HOLD`), which reads it and lets it go on.
#[unsafe(no_mangle)]
static HOLD_NEW: Global<u32> = Global::new(0);
/// Signal sent to a thread that places memory in host RAM (vram-only policy); 0 = none.
#[unsafe(no_mangle)]
static HOST_SIGNAL: Global<u32> = Global::new(0);
/// Pending bytes in the ring buffer above which a submission wakes the reader. Below it,
/// submissions do not wake anyone and user space drains on its timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);
/// Offset of `child_pid` in the `sched_process_fork` record (read from tracefs at load).
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: Global<u32> = Global::new(20);
/// Offset of `group_dead` in the `sched_process_exit` record; 0 when the kernel has none
/// (then the thread-group leader's exit ends the process).
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: Global<u32> = Global::new(0);
/// Nonzero: the four offsets below are the running kernel's (read from its BTF), and
/// `cookie::FILE_OF_FD` can find the open file behind a descriptor.
#[unsafe(no_mangle)]
static FILE_OFFSETS_KNOWN: Global<u32> = Global::new(0);
/// Offset of `files` (`struct files_struct *`) in `struct task_struct`.
#[unsafe(no_mangle)]
static TASK_FILES_OFFSET: Global<u32> = Global::new(0);
/// Offset of `fdt` (`struct fdtable *`) in `struct files_struct`.
#[unsafe(no_mangle)]
static FILES_FDT_OFFSET: Global<u32> = Global::new(0);
/// Offset of `max_fds` (`unsigned int`) in `struct fdtable`.
#[unsafe(no_mangle)]
static FDT_MAX_FDS_OFFSET: Global<u32> = Global::new(0);
/// Offset of `fd` (`struct file **`) in `struct fdtable`.
#[unsafe(no_mangle)]
static FDT_FD_OFFSET: Global<u32> = Global::new(0);
/// Number of API ids in use (at most `MAX_API_IDS`): the bound of the loop that clears a
/// thread's in-flight entries.
#[unsafe(no_mangle)]
static API_COUNT: Global<u32> = Global::new(MAX_API_IDS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// In-flight calls: entry state kept until the matching return, or until the thread exits
/// (then the call is delivered flagged `NO_RETURN`). Not an LRU map: an LRU map evicts
/// without telling anyone, so an evicted call could be neither delivered nor counted, and
/// under pressure it would evict the entries of calls that are merely slow (a blocking
/// `cuMemAlloc` while the GPU is busy).
#[map]
static INFLIGHT: HashMap<EntryKey, CallEvent> = HashMap::with_max_entries(65536, 0);

/// Threads (pid_tgid) that entered a hooked call, so that only their exits look for
/// in-flight entries to clear. The value counts the thread's calls whose entry `INFLIGHT`
/// had no room for and that have not returned yet: their returns are counted once, as
/// `LOST_ENTRY`, not again as `RETURN_WITHOUT_ENTRY`. Only the thread itself touches its
/// entry (its probes and its exit), so the value needs no atomics.
#[map]
static THREADS: HashMap<u64, u32> = HashMap::with_max_entries(65536, 0);

/// One all-zero event, never written: what a new `INFLIGHT` entry starts from. The event is
/// built in place in its map value, since it is too large to build on the 512-byte BPF stack
/// beside what the helpers need, and a per-CPU scratch slot could be overwritten by another
/// task's probe on the same CPU (uprobe programs can be preempted).
#[map]
static ZERO: Array<CallEvent> = Array::with_max_entries(1, 0);

/// User stacks, deduplicated by the kernel.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Loss and delivery counters, indexed by `counter::*`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Processes to trace (tgid → `filter::*`) when `FILTER_ENABLED`.
#[map]
static FILTER: HashMap<u32, u32> = HashMap::with_max_entries(8192, 0);

/// Processes whose calls were delivered, so that only their exits are reported.
#[map]
static SEEN: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Adds one to a loss counter. The add is atomic: programs run with migration disabled but
/// can be preempted, so another program on the same CPU may update the same slot between a
/// plain load and store, and one of the two counts would be lost. The BPF target's `core`
/// has no atomic read-modify-write (`AtomicU64::fetch_add` is not there), so the add is the
/// instruction itself: `BPF_ATOMIC | BPF_ADD` without fetch, which every kernel with BPF
/// atomics runs (<https://docs.kernel.org/bpf/standardization/instruction-set.html>).
#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a per-CPU array lookup: it is non-null, aligned for
        // u64 and valid while the program runs. The instruction adds to it in place and
        // touches nothing else.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({slot} + 0) += {one}",
                slot = in(reg) slot,
                one = in(reg) 1u64,
            );
        }
    }
}

/// Inserts a `u32` value written to the stack first. Given `&CONSTANT`, the compiler may
/// point the update at any read-only global with the same bytes, and the load-time settings
/// are such globals: `&filter::TRACE` (1) became the address of `STACK_MODE` (1 as
/// compiled), so that `--no-stacks` (0) put every followed child in the filter as "do not
/// trace". A volatile store makes the stack slot the value's only source.
#[inline(always)]
fn insert_u32<K>(map: &HashMap<K, u32>, key: &K, value: u32, flags: u64) -> Result<(), i32> {
    let mut slot = 0u32;
    // SAFETY: `slot` is a live, aligned local.
    unsafe { core::ptr::write_volatile(&mut slot, value) };
    map.insert(key, &slot, flags)
}

#[inline(always)]
fn traced(tgid: u32) -> bool {
    if FILTER_ENABLED.load() == 0 {
        return true;
    }
    // SAFETY: the value is a plain u32 read from a map entry that stays valid for the
    // duration of the program.
    matches!(unsafe { FILTER.get(&tgid) }, Some(&filter::TRACE))
}

/// Wake the reader only when enough has piled up; user space drains on a timer otherwise.
#[inline(always)]
fn submit_flags() -> u64 {
    let threshold = WAKEUP_BYTES.load();
    if threshold == 0 || EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[uprobe(multi)]
pub fn call_entry(ctx: ProbeContext) -> u32 {
    try_call_entry(&ctx);
    0
}

fn try_call_entry(ctx: &ProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !traced(tgid) {
        return;
    }
    // SAFETY: bpf_get_attach_cookie only reads the context it is given.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let api = (cookie & cookie::API_MASK) as u32;
    if !known_api(api) {
        bump(counter::UNKNOWN_API);
        return;
    }
    if HOLD_NEW.load() != 0 {
        hold_if_new(tgid);
    }
    // SAFETY: plain map lookup keyed by pid_tgid.
    if unsafe { THREADS.get(&pid_tgid) }.is_none()
        && insert_u32(&THREADS, &pid_tgid, 0, BPF_NOEXIST as u64).is_err()
    {
        bump(counter::THREADS_FULL);
    }

    let key = EntryKey {
        pid_tgid,
        api,
        _pad: 0,
    };
    let Some(zero) = ZERO.get(0) else {
        return;
    };
    match INFLIGHT.insert(&key, zero, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(EEXIST) => {
            // The thread is back in this entry point while its previous call there never
            // returned (a signal handler that did not return, a longjmp out of the driver):
            // that call is delivered as it is, then replaced.
            if let Some(stale) = INFLIGHT.get_ptr(&key) {
                deliver_unreturned(stale);
            }
            if INFLIGHT.insert(&key, zero, BPF_EXIST as u64).is_err() {
                entry_dropped(pid_tgid);
                signal_dropped(ctx, cookie);
                return;
            }
        }
        Err(_) => {
            entry_dropped(pid_tgid);
            signal_dropped(ctx, cookie);
            return;
        }
    }
    let Some(ev) = INFLIGHT.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a live map value of exactly CallEvent's size, just inserted; only this thread's
    // programs touch its entry (the key holds its pid_tgid).
    let ev = unsafe { &mut *ev };
    ev.kind = EVENT_CALL;
    ev.api = api;
    ev.pid = tgid;
    ev.tid = pid_tgid as u32;
    // SAFETY: no preconditions.
    ev.ts_entry_ns = unsafe { bpf_ktime_get_ns() };
    ev.stack_id = -1;
    for i in 0..MAX_ARGS {
        ev.args[i] = ctx.arg::<u64>(i).unwrap_or(0);
    }
    // SAFETY: `regs` points at the probed thread's saved user registers for the whole program.
    let sp = unsafe { (*ctx.regs).rsp };
    // The probe sits before the function touches the stack, so *rsp is the return address:
    // the immediate caller, which the frame-pointer walk below would miss.
    // SAFETY: bpf_probe_read_user validates the user address and fails instead of faulting.
    match unsafe { bpf_probe_read_user(sp as *const u64) } {
        Ok(ra) => ev.caller = ra,
        Err(_) => ev.flags |= flags::CALLER_FAULT,
    }
    if let Some(arg) = cookie::blob_arg(cookie)
        && arg < MAX_ARGS
    {
        let base = ev.args[arg];
        let skip = 8 * cookie::blob_skip(cookie) as u64;
        if !read_words(base.wrapping_add(skip), &mut ev.blob) {
            ev.flags |= flags::BLOB_FAULT;
        }
        if let Some(skip) = cookie::wide_skip(cookie)
            && cookie & cookie::WIDE_AT_RETURN == 0
            && !read_words(base.wrapping_add(8 * skip as u64), &mut ev.wide)
        {
            ev.flags |= flags::BLOB_FAULT;
        }
    }
    // The first elements of a batch of copies: dsts, srcs, sizes (argument 3 counts them).
    if cookie & cookie::BATCH_ARRAYS != 0 && !read_batch(ev) {
        ev.flags |= flags::BLOB_FAULT;
    }
    // A struct passed by value in memory sits just above the return address.
    if cookie & cookie::WIDE_FROM_STACK != 0 && !read_words(sp.wrapping_add(8), &mut ev.wide) {
        ev.flags |= flags::BLOB_FAULT;
    }
    if cookie & cookie::STACK != 0 {
        match STACK_MODE.load() {
            stack_mode::FRAME_POINTERS => match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
                Ok(id) => ev.stack_id = id,
                Err(e) => {
                    ev.stack_id = e as i64;
                    ev.flags |= flags::STACK_FAULT;
                    bump(counter::STACK_FAILED);
                }
            },
            stack_mode::COPY => {
                if send_stack_copy(ctx, ev) {
                    ev.flags |= flags::STACK_COPIED;
                } else {
                    ev.flags |= flags::STACK_FAULT;
                    ev.stack_id = -ENOSPC;
                }
            }
            _ => {}
        }
    }
    // Location type 2..=4 is host memory (CU_MEM_LOCATION_TYPE_HOST*); it sits in the low
    // half of word 1 of CUmemAllocationProp.
    if send_host_signal(cookie, ev.blob[1] as u32) {
        ev.flags |= flags::SIGNALLED;
    }
}

/// Sends a copy of the calling thread's user stack, with its registers, for user space to
/// unwind: whole pages from the one that holds the stack pointer, up to the first page that
/// cannot be read (the top of the stack) or `STACK_COPY_PAGES`. Whether it was sent; a copy
/// the ring buffer has no room for, or that would fill more than half of it, is counted as
/// `LOST_SAMPLE`.
#[inline(always)]
fn send_stack_copy(ctx: &ProbeContext, ev: &CallEvent) -> bool {
    // The calls come first: past half full, the ring keeps its room for events, and a
    // copy is counted as lost instead of crowding them out.
    let used = EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(aya_ebpf::bindings::BPF_RB_RING_SIZE as u64);
    if used > size / 2 {
        bump(counter::LOST_SAMPLE);
        return false;
    }
    let Some(mut slot) = EVENTS.reserve::<StackSample>(0) else {
        bump(counter::LOST_SAMPLE);
        return false;
    };
    let s = slot.as_mut_ptr();
    // SAFETY: `s` points at a reserved ring-buffer slot of exactly StackSample's size, owned
    // by this program until it is submitted; `regs` points at the probed thread's saved user
    // registers. Every copy from user memory goes through bpf_probe_read_user, which fails
    // instead of faulting, into a page-sized window of `stack` at a constant offset.
    unsafe {
        let regs = ctx.regs;
        (*s).kind = EVENT_STACK;
        (*s).ts_entry_ns = ev.ts_entry_ns;
        (*s).pid = ev.pid;
        (*s).tid = ev.tid;
        (*s).ip = (*regs).rip;
        (*s).sp = (*regs).rsp;
        (*s).bp = (*regs).rbp;
        let base = (*regs).rsp & !4095;
        (*s).base = base;
        let mut len = 0u32;
        for page in 0..STACK_COPY_PAGES {
            let dst = (*s).stack.as_mut_ptr().add(page * 4096);
            let src = base.wrapping_add(page as u64 * 4096);
            let rc = aya_ebpf::helpers::generated::bpf_probe_read_user(
                dst.cast(),
                4096,
                src as *const core::ffi::c_void,
            );
            if rc != 0 {
                break;
            }
            len += 4096;
        }
        (*s).len = len;
        python::read_frames(ev.pid, ev.tid, s);
    }
    // The first call of a process wakes the reader at once, as its first event does: its
    // mappings are read while it runs. So does a copy with Python frames: their code objects
    // are read from the process's memory, which is gone once it exits.
    // SAFETY: plain map lookup keyed by tgid; `s` is the slot filled above.
    let first = !matches!(unsafe { SEEN.get(&ev.pid) }, Some(&seen::DELIVERED))
        || unsafe { (*s).py_status } != vramtrace_common::py_status::NONE;
    slot.submit(if first {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        submit_flags()
    });
    true
}

/// Under the vram-only policy, signals the calling thread when the call places memory in host
/// RAM: always for `HOST_MEMORY`, by the location type for `HOST_IF_LOCATION`. Whether it
/// was sent.
#[inline(always)]
fn send_host_signal(cookie: u64, location: u32) -> bool {
    let signal = HOST_SIGNAL.load();
    if signal == 0 {
        return false;
    }
    let host = cookie & cookie::HOST_MEMORY != 0
        || (cookie & cookie::HOST_IF_LOCATION != 0 && (2..=4).contains(&location));
    // SAFETY: sends a signal to the current thread; no memory is touched.
    host && unsafe { bpf_send_signal_thread(signal) } == 0
}

/// A call whose entry could not be kept is still signalled under the vram-only policy.
#[inline(always)]
fn signal_dropped(ctx: &ProbeContext, cookie: u64) {
    if HOST_SIGNAL.load() == 0 {
        return;
    }
    let mut location = 0u32;
    if cookie & cookie::HOST_IF_LOCATION != 0
        && let Some(arg) = cookie::blob_arg(cookie)
        && arg == 2
    {
        // The context is read at a constant offset only (the verifier refuses a computed
        // one): the one entry point that sets HOST_IF_LOCATION, cuMemCreate, has its prop
        // in argument 2.
        let base = ctx.arg::<u64>(2);
        let ptr = base.unwrap_or(0).wrapping_add(8) as *const u32;
        // SAFETY: a failed user read is an error, never a fault.
        location = unsafe { bpf_probe_read_user(ptr) }.unwrap_or(0);
    }
    send_host_signal(cookie, location);
}

/// Copies `N` words of user memory at `addr` straight into `dst` (a field of the event), with
/// no copy on the BPF stack: the event takes most of its 512 bytes already.
#[inline(always)]
fn read_words<const N: usize>(addr: u64, dst: &mut [u64; N]) -> bool {
    // SAFETY: `dst` is a live, writable buffer of exactly N words; the helper validates the
    // user address and fails instead of faulting.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            dst.as_mut_ptr().cast(),
            (N * 8) as u32,
            addr as *const core::ffi::c_void,
        )
    };
    rc == 0
}

/// Reads the first `cookie::BATCH_READ` elements of the arrays at arguments 0, 1 and 2, no
/// more than argument 3 says there are. Whether every read succeeded.
#[inline(always)]
fn read_batch(ev: &mut CallEvent) -> bool {
    let count = ev.args[3];
    let mut ok = true;
    for i in 0..cookie::BATCH_READ {
        if (i as u64) >= count {
            break;
        }
        let at = 8 * i as u64;
        // SAFETY: bpf_probe_read_user validates each user address and fails instead of
        // faulting.
        unsafe {
            match bpf_probe_read_user(ev.args[0].wrapping_add(at) as *const u64) {
                Ok(v) => ev.wide[i] = v,
                Err(_) => ok = false,
            }
            match bpf_probe_read_user(ev.args[1].wrapping_add(at) as *const u64) {
                Ok(v) => ev.wide[cookie::BATCH_READ + i] = v,
                Err(_) => ok = false,
            }
            match bpf_probe_read_user(ev.args[2].wrapping_add(at) as *const u64) {
                Ok(v) => ev.blob[i] = v,
                Err(_) => ok = false,
            }
        }
    }
    ok
}

/// Whether `api` is an id of the hooked table (and so within the bound of the exit loop).
#[inline(always)]
fn known_api(api: u32) -> bool {
    api < API_COUNT.load() && api < MAX_API_IDS
}

/// The in-flight map had no room for a call's entry: the call is lost. Its return will find
/// no entry; the thread's count tells it that the loss is counted already.
#[inline(always)]
fn entry_dropped(pid_tgid: u64) {
    bump(counter::LOST_ENTRY);
    if let Some(dropped) = THREADS.get_ptr_mut(&pid_tgid) {
        // SAFETY: a live map value; only this thread's programs touch its entry.
        unsafe { *dropped = (*dropped).saturating_add(1) };
    }
}

/// Stops process `tgid` at its first driver call, once: `EVENT_HOLD` goes out first, waking
/// the reader, and the stop is sent only if it did (a process is never stopped without user
/// space knowing to let it go on).
#[inline(always)]
fn hold_if_new(tgid: u32) {
    // SAFETY: plain map lookup keyed by tgid.
    if unsafe { SEEN.get(&tgid) }.is_some()
        || insert_u32(&SEEN, &tgid, seen::HELD, BPF_NOEXIST as u64).is_err()
    {
        return;
    }
    let ev = ExitEvent {
        kind: EVENT_HOLD,
        pid: tgid,
        tid: bpf_get_current_pid_tgid() as u32,
        _pad: 0,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output(&ev, BPF_RB_FORCE_WAKEUP as u64).is_err() {
        bump(counter::LOST_RINGBUF);
        return;
    }
    // SAFETY: sends SIGSTOP to the current process; no memory is touched.
    unsafe { bpf_send_signal(SIGSTOP) };
}

/// Whether this is the first event delivered for process `tgid`; remembers that it is not
/// the first any more.
#[inline(always)]
fn first_event(tgid: u32) -> bool {
    // SAFETY: plain map lookup keyed by tgid.
    if let Some(&seen::DELIVERED) = unsafe { SEEN.get(&tgid) } {
        return false;
    }
    if insert_u32(&SEEN, &tgid, seen::DELIVERED, 0).is_err() {
        bump(counter::SEEN_FULL);
    }
    true
}

/// Writes `ev` into its reserved ring-buffer slot and submits it. The first event of a
/// process carries its name and wakes the reader at once, so that user space reads the
/// process's mappings while it still runs (its stacks stay resolvable after it exits).
#[inline(always)]
fn submit(mut slot: RingBufEntry<CallEvent>) {
    let ev = slot.as_mut_ptr();
    // SAFETY: the slot was filled by the caller; `ev` points at it.
    let pid = unsafe { (*ev).pid };
    let first = first_event(pid);
    if first && let Ok(comm) = bpf_get_current_comm() {
        // SAFETY: as above.
        unsafe { (*ev).comm = comm };
    }
    slot.submit(if first {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        submit_flags()
    });
    bump(counter::SUBMITTED);
}

/// Delivers the call whose entry `entry` holds as one that never returned: stamped now,
/// flagged `NO_RETURN`, no return code or out-parameters. Runs on the calling thread (at its
/// exit, or at its next entry into the same entry point), so the call cannot return
/// afterwards and be delivered a second time.
#[inline(always)]
fn deliver_unreturned(entry: *const CallEvent) {
    let Some(mut slot) = EVENTS.reserve::<CallEvent>(0) else {
        bump(counter::LOST_RINGBUF);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `entry` points into a live map value of exactly CallEvent's size, `ev` at a
    // reserved ring-buffer slot of the same size; the caller removes or replaces the entry
    // only after this copy. Copied in place: the event does not fit the BPF stack twice.
    unsafe {
        core::ptr::copy_nonoverlapping(entry, ev, 1);
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).ret = 0;
        (*ev).out = [0; 2];
        (*ev).flags |= flags::NO_RETURN;
    }
    submit(slot);
}

/// Clears the in-flight entries of a thread that is exiting: each is a call that will never
/// return, delivered as such. Only threads that entered a hooked call are looked at.
#[inline(always)]
fn clear_inflight(pid_tgid: u64) {
    if THREADS.remove(&pid_tgid).is_err() {
        return;
    }
    let count = API_COUNT.load();
    for api in 0..MAX_API_IDS {
        if api >= count {
            break;
        }
        let key = EntryKey {
            pid_tgid,
            api,
            _pad: 0,
        };
        if let Some(entry) = INFLIGHT.get_ptr(&key) {
            deliver_unreturned(entry);
            let _ = INFLIGHT.remove(&key);
        }
    }
}

#[uretprobe(multi)]
pub fn call_return(ctx: RetProbeContext) -> u32 {
    try_call_return(&ctx);
    0
}

fn try_call_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: bpf_get_attach_cookie only reads the context it is given.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let api = (cookie & cookie::API_MASK) as u32;
    if !known_api(api) {
        // Counted at entry.
        return;
    }
    let key = EntryKey {
        pid_tgid,
        api,
        _pad: 0,
    };
    let Some(entry) = INFLIGHT.get_ptr(&key) else {
        if !traced((pid_tgid >> 32) as u32) {
            return;
        }
        match THREADS.get_ptr_mut(&pid_tgid) {
            // SAFETY: a live map value; only this thread's programs touch its entry.
            Some(dropped) if unsafe { *dropped } > 0 => unsafe { *dropped -= 1 },
            _ => bump(counter::RETURN_WITHOUT_ENTRY),
        }
        return;
    };
    let Some(mut slot) = EVENTS.reserve::<CallEvent>(0) else {
        bump(counter::LOST_RINGBUF);
        let _ = INFLIGHT.remove(&key);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `entry` points into a live map value of exactly CallEvent's size, `ev` at a
    // reserved ring-buffer slot of the same size; the entry is copied in place (the event
    // does not fit the BPF stack) before it is removed below.
    unsafe { core::ptr::copy_nonoverlapping(entry, ev, 1) };
    let _ = INFLIGHT.remove(&key);
    // SAFETY: `ev` points at the reserved slot, filled above, for as long as `slot` lives.
    let ev = unsafe { &mut *ev };
    // SAFETY: no preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.ret = ctx.ret::<i64>() as i32;
    if ev.ret == 0 {
        // Out-parameters are only meaningful when the call succeeded.
        if cookie & cookie::DEREF_ARG0 != 0 {
            // SAFETY: a failed user read is reported in `flags`, never a fault.
            match unsafe { bpf_probe_read_user(ev.args[0] as *const u64) } {
                Ok(v) => ev.out[0] = v,
                Err(_) => ev.flags |= flags::OUT0_FAULT,
            }
        }
        if cookie & cookie::DEREF_ARG1 != 0 {
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(ev.args[1] as *const u64) } {
                Ok(v) => ev.out[1] = v,
                Err(_) => ev.flags |= flags::OUT1_FAULT,
            }
        } else if cookie & cookie::DEREF_ARG2 != 0 {
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(ev.args[2] as *const u64) } {
                Ok(v) => ev.out[1] = v,
                Err(_) => ev.flags |= flags::OUT1_FAULT,
            }
        }
        // The open file behind a POSIX descriptor the call exported or imported.
        if cookie & cookie::FILE_OF_FD != 0 && ev.args[2] as u32 == POSIX_FD_HANDLE {
            let fd = if cookie & cookie::FD_IN_OUT0 != 0 {
                ev.out[0] as u32 as i32
            } else {
                ev.args[1] as i32
            };
            match file_of_fd(fd) {
                Some(file) => ev.out[1] = file,
                None => ev.flags |= flags::FILE_UNKNOWN,
            }
        }
        // A struct the driver filled: the wide window through the blob argument, or
        // argument 0 from its start when the cookie names none.
        let wide_arg = cookie::blob_arg(cookie).unwrap_or(0);
        let wide_skip = cookie::wide_skip(cookie).unwrap_or(0);
        if cookie & cookie::WIDE_AT_RETURN != 0
            && wide_arg < MAX_ARGS
            && !read_words(
                ev.args[wide_arg].wrapping_add(8 * wide_skip as u64),
                &mut ev.wide,
            )
        {
            ev.flags |= flags::BLOB_FAULT;
        }
    }
    submit(slot);
}

/// The kernel address of the open file (`struct file`) behind descriptor `fd` of the current
/// process: `current->files->fdt->fd[fd]`, with the offsets user space read from the
/// kernel's BTF. `None` when they are unknown, `fd` is not open, or a read fails.
fn file_of_fd(fd: i32) -> Option<u64> {
    if FILE_OFFSETS_KNOWN.load() == 0 || fd < 0 {
        return None;
    }
    let at = |base: u64, offset: u32| base.wrapping_add(u64::from(offset));
    // SAFETY: no preconditions.
    let task = unsafe { generated::bpf_get_current_task() };
    // SAFETY: bpf_probe_read_kernel reports a failed read, never faults.
    let files =
        unsafe { bpf_probe_read_kernel(at(task, TASK_FILES_OFFSET.load()) as *const u64) }.ok()?;
    // SAFETY: as above.
    let fdt =
        unsafe { bpf_probe_read_kernel(at(files, FILES_FDT_OFFSET.load()) as *const u64) }.ok()?;
    // SAFETY: as above.
    let max =
        unsafe { bpf_probe_read_kernel(at(fdt, FDT_MAX_FDS_OFFSET.load()) as *const u32) }.ok()?;
    if fd as u32 >= max {
        return None;
    }
    // SAFETY: as above.
    let fds = unsafe { bpf_probe_read_kernel(at(fdt, FDT_FD_OFFSET.load()) as *const u64) }.ok()?;
    // SAFETY: as above; `fd` is below the table's size.
    let file =
        unsafe { bpf_probe_read_kernel((fds + 8 * u64::from(fd as u32)) as *const u64) }.ok()?;
    (file != 0).then_some(file)
}

#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    try_process_exit(&ctx);
    0
}

fn try_process_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let offset = EXIT_GROUP_DEAD_OFFSET.load();
    let group_dead = if offset != 0 {
        // SAFETY: the offset comes from the tracepoint's format file; read_at bounds-checks
        // through bpf_probe_read.
        unsafe { ctx.read_at::<u8>(offset as usize) }.unwrap_or(0) != 0
    } else {
        tid == tgid
    };
    if FILTER_ENABLED.load() != 0 && tid != tgid {
        // Threads were added to the filter by the fork tracepoint; forget them.
        let _ = FILTER.remove(&tid);
    }
    // The tracepoint fires for every exiting thread, in its own context: its calls that
    // never returned are delivered before the process's exit, which comes with its last
    // thread. (Should a thread that lost the race to the last one arrive here after it, its
    // calls come after the exit, and user space takes them for a new process.)
    clear_inflight(pid_tgid);
    if !group_dead {
        return;
    }
    let _ = FILTER.remove(&tgid);
    // SAFETY: plain map lookup keyed by tgid.
    if unsafe { SEEN.get(&tgid) }.is_none() {
        return;
    }
    let _ = SEEN.remove(&tgid);
    let ev = ExitEvent {
        kind: EVENT_EXIT,
        pid: tgid,
        tid,
        _pad: 0,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output(&ev, submit_flags()).is_err() {
        bump(counter::LOST_EXIT);
    }
}

#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    try_process_fork(&ctx);
    0
}

/// Follows descendants: a child of a traced (or follow-only) process is traced, before it
/// runs a single instruction of its own.
fn try_process_fork(ctx: &TracePointContext) {
    if FILTER_ENABLED.load() == 0 {
        return;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain map lookup keyed by tgid.
    if unsafe { FILTER.get(&parent) }.is_none() {
        return;
    }
    // SAFETY: the offset comes from the tracepoint's format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(FORK_CHILD_PID_OFFSET.load() as usize) }) else {
        return;
    };
    // A new thread of a traced process shares its tgid and is covered already; a new
    // process gets its own entry. Thread ids land here too and are removed at their exit.
    if insert_u32(&FILTER, &(child as u32), filter::TRACE, 0).is_err() {
        bump(counter::FILTER_FULL);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
