//! CPython frames at a call's entry: the calling thread's thread state is found in the
//! interpreter's list by its thread id (a ctypes call releases the GIL, so the interpreter's
//! "current" thread state says nothing about the caller), then its frames are walked and
//! each frame's code object, instruction and entry mark are written straight into the stack
//! sample. User space names the code objects and places the frames among the native ones.
//!
//! Where to start and the field offsets come from user space (`PY_PROCS`), per process: the
//! kernel side knows no CPython version. Every read goes through `bpf_probe_read_user`, which
//! fails instead of faulting; every loop is bounded.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::map, maps::HashMap};
use vramtrace_common::{MAX_PY_FRAMES, PyConfig, PyFrameRaw, StackSample, py_status};

/// tgid → how to walk that process's CPython frames. Filled by user space when it finds an
/// interpreter in a process; a process without an entry gets no Python frames.
#[map]
static PY_PROCS: HashMap<u32, PyConfig> = HashMap::with_max_entries(4096, 0);

/// Interpreters looked through for the calling thread (the main one and a few
/// subinterpreters).
const MAX_INTERPRETERS: usize = 4;
/// Thread states looked through per interpreter.
const MAX_THREADS: usize = 128;

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user validates the user address and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_u32(addr: u64) -> Option<u32> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u32) }.ok()
}

#[inline(always)]
fn read_u8(addr: u64) -> Option<u8> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u8) }.ok()
}

/// The thread state of thread `tid`, if the interpreter has one for it.
#[inline(always)]
fn find_thread(cfg: &PyConfig, tid: u32) -> Option<u64> {
    let mut interp = read_u64(cfg.interp_head)?;
    for _ in 0..MAX_INTERPRETERS {
        if interp == 0 {
            return None;
        }
        let mut tstate = read_u64(interp + cfg.interp_threads as u64)?;
        for _ in 0..MAX_THREADS {
            if tstate == 0 {
                break;
            }
            let id = read_u64(tstate + cfg.tstate_tid as u64)?;
            let id = if cfg.pthread_tid != 0 {
                read_u32(id + cfg.pthread_tid as u64)?
            } else {
                id as u32
            };
            if id == tid {
                return Some(tstate);
            }
            tstate = read_u64(tstate + cfg.tstate_next as u64)?;
        }
        interp = read_u64(interp + cfg.interp_next as u64)?;
    }
    None
}

/// Reads the CPython frames of thread `tid` of process `tgid` into the sample `s`.
///
/// # Safety
///
/// `s` points at a reserved ring-buffer slot of exactly `StackSample`'s size, owned by the
/// caller until it is submitted.
#[inline(always)]
pub unsafe fn read_frames(tgid: u32, tid: u32, s: *mut StackSample) {
    // SAFETY: `s` is valid for writes (the caller's contract).
    unsafe {
        (*s).py_count = 0;
        (*s).py_status = py_status::NONE;
    }
    // SAFETY: plain map lookup keyed by tgid; the value is copied out.
    let Some(cfg) = (unsafe { PY_PROCS.get(&tgid) }).copied() else {
        return;
    };
    let (status, count) = match find_thread(&cfg, tid) {
        // SAFETY: as above.
        Some(tstate) => unsafe { walk(&cfg, tstate, s) },
        None => (py_status::NO_THREAD, 0),
    };
    // SAFETY: as above.
    unsafe {
        (*s).py_count = count;
        (*s).py_status = status;
    }
}

/// Walks the frames of `tstate`, innermost first, into `s.py`. Returns the status and the
/// number of frames written.
///
/// # Safety
///
/// As for [`read_frames`].
#[inline(always)]
unsafe fn walk(cfg: &PyConfig, tstate: u64, s: *mut StackSample) -> (u32, u32) {
    let Some(mut frame) = read_u64(tstate + cfg.tstate_frame as u64) else {
        return (py_status::FAULT, 0);
    };
    if cfg.cframe_frame != 0 && frame != 0 {
        match read_u64(frame + cfg.cframe_frame as u64 - 1) {
            Some(f) => frame = f,
            None => return (py_status::FAULT, 0),
        }
    }
    let mut count = 0u32;
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 {
            return (py_status::OK, count);
        }
        let Some(code) = read_u64(frame + cfg.frame_code as u64) else {
            return (py_status::FAULT, count);
        };
        let instr = if cfg.instr_size == 4 {
            read_u32(frame + cfg.frame_instr as u64).map(u64::from)
        } else {
            read_u64(frame + cfg.frame_instr as u64)
        };
        let Some(instr) = instr else {
            return (py_status::FAULT, count);
        };
        let mut flags = 0u64;
        if cfg.entry_flag != 0 {
            match read_u8(frame + cfg.entry_offset as u64) {
                Some(b) if u32::from(b) == cfg.entry_value => flags = u64::from(cfg.entry_flag),
                Some(_) => {}
                None => return (py_status::FAULT, count),
            }
        }
        // SAFETY: `i` < MAX_PY_FRAMES, so the entry lies inside the slot (the caller's
        // contract).
        unsafe {
            let slot = (*s).py.as_mut_ptr().add(i);
            *slot = PyFrameRaw { code, instr, flags };
        }
        count += 1;
        match read_u64(frame + cfg.frame_previous as u64) {
            Some(previous) => frame = previous,
            None => return (py_status::FAULT, count),
        }
    }
    if frame == 0 {
        (py_status::OK, count)
    } else {
        (py_status::TRUNCATED, count)
    }
}
