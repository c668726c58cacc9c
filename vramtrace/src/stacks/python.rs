//! CPython frames among the native ones: finds the interpreter in a traced process, tells the
//! kernel side how to walk its frames, names the code objects it read, and puts the Python
//! frames in place of the eval-loop frames that ran them.
//!
//! Supported: CPython 3.10, 3.11, 3.12 and 3.13 on x86-64 (a `libpython3.X.so` or a
//! statically linked `python3.X`). 3.13 publishes its layout (`_Py_DebugOffsets` at the start
//! of `_PyRuntime`) and it is read from there; 3.10 to 3.12 use the tables below, taken from
//! those versions' headers and checked against their debug information. Any other version
//! is recorded as such, with the reason, and never walked with a guessed layout.
//!
//! A process is found by a watcher thread ([`PyWatcher`]): the traced command and every
//! process that makes its first driver call are looked at until an interpreter is mapped
//! (a shared `libpython` is mapped by the dynamic loader after `exec`, a few milliseconds
//! before the program's first line), so that the first call of a process already has its
//! Python frames. Code objects are read from the process's memory when its stack copies are
//! drained, and cached per (process, code object address).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
use vramtrace_common::{PyConfig, PyFrameRaw, py_frame, py_status};

use crate::probe::libcuda::{MapsFile, parse_maps};
use crate::trace::Frame;

/// How long a process is looked at for an interpreter after it was first named.
const WATCH_FOR: Duration = Duration::from_secs(5);
/// Code objects cached, at most, before the cache starts afresh.
const CODE_CACHE_LIMIT: usize = 1 << 16;
/// Longest string (file name, function name) read from a code object, in characters.
const MAX_STRING: u64 = 4096;
/// Longest line table read, in bytes.
const MAX_LINETABLE: u64 = 1 << 20;

/// Why an interpreter could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable ELF file: {why}")]
    Elf { path: String, why: String },
    #[error("CPython {0}.{1}: layout not known")]
    UnknownVersion(u8, u8),
    #[error("{path}: the CPython version could not be told")]
    NoVersion { path: String },
    #[error("CPython 3.13 in {path}: _Py_DebugOffsets {why}")]
    DebugOffsets { path: String, why: String },
}

/// Where a code object's name, file and line table are, and how strings are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u64,
    /// `co_qualname` (3.11+) or `co_name` (3.10).
    pub name: u64,
    pub firstlineno: u64,
    pub linetable: u64,
    /// `co_code_adaptive` (3.11+): where the instructions start, in the code object.
    pub code_adaptive: u64,
    /// `PyASCIIObject`: `length`, `state`, and its size (where an ASCII string's characters
    /// start).
    pub str_length: u64,
    pub str_state: u64,
    pub ascii_size: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where a compact non-ASCII string's characters start.
    pub compact_size: u64,
    /// `PyBytesObject`: `ob_size`, `ob_sval`.
    pub bytes_size: u64,
    pub bytes_data: u64,
}

/// One CPython version's layout: what the kernel side walks, and what user space reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub minor: u8,
    /// `_PyRuntime.interpreters.head`.
    pub runtime_interp_head: u64,
    /// The kernel side's offsets; `interp_head` is filled per process.
    pub walk: PyConfig,
    pub code: CodeLayout,
}

impl Layout {
    /// The layout of CPython 3.`minor` from the tables (3.10 to 3.12; 3.13 from its own
    /// `_Py_DebugOffsets`, see [`from_debug_offsets`]).
    pub fn table(minor: u8) -> Option<Layout> {
        let strings = |ascii_size, compact_size| CodeLayout {
            filename: 0,
            name: 0,
            firstlineno: 0,
            linetable: 0,
            code_adaptive: 0,
            str_length: 16,
            str_state: 32,
            ascii_size,
            compact_size,
            bytes_size: 16,
            bytes_data: 32,
        };
        let walk = PyConfig {
            interp_head: 0,
            interp_next: 0,
            tstate_next: 8,
            ..PyConfig::default()
        };
        Some(match minor {
            // Include/cpython/pystate.h (struct _ts), Include/cpython/frameobject.h
            // (struct _frame), Include/cpython/code.h of v3.10.13.
            10 => Layout {
                minor,
                runtime_interp_head: 32,
                walk: PyConfig {
                    interp_threads: 8,
                    tstate_tid: 176,
                    // Filled per process: glibc's offset of `tid` in `struct pthread`.
                    pthread_tid: 0,
                    tstate_frame: 24,
                    cframe_frame: 0,
                    frame_previous: 24,
                    frame_code: 32,
                    frame_instr: 96,
                    instr_size: 4,
                    ..walk
                },
                code: CodeLayout {
                    filename: 104,
                    name: 112,
                    firstlineno: 40,
                    linetable: 120,
                    ..strings(48, 72)
                },
            },
            // Include/cpython/pystate.h, Include/internal/pycore_frame.h, Include/cpython/code.h
            // of v3.11.7.
            11 => Layout {
                minor,
                runtime_interp_head: 40,
                walk: PyConfig {
                    interp_threads: 16,
                    tstate_tid: 160,
                    tstate_frame: 56,
                    cframe_frame: 8 + 1,
                    frame_previous: 48,
                    frame_code: 32,
                    frame_instr: 56,
                    instr_size: 8,
                    entry_flag: py_frame::ENTRY as u32,
                    entry_offset: 68,
                    entry_value: 1,
                    ..walk
                },
                code: CodeLayout {
                    filename: 112,
                    name: 128,
                    firstlineno: 72,
                    linetable: 136,
                    code_adaptive: 184,
                    ..strings(48, 72)
                },
            },
            // The same files of v3.12.1; FRAME_OWNED_BY_CSTACK is 3.
            12 => Layout {
                minor,
                runtime_interp_head: 40,
                walk: PyConfig {
                    interp_threads: 72,
                    tstate_tid: 144,
                    tstate_frame: 56,
                    cframe_frame: 1,
                    frame_previous: 8,
                    frame_code: 0,
                    frame_instr: 56,
                    instr_size: 8,
                    entry_flag: py_frame::SHIM as u32,
                    entry_offset: 70,
                    entry_value: 3,
                    ..walk
                },
                code: CodeLayout {
                    filename: 112,
                    name: 128,
                    firstlineno: 68,
                    linetable: 136,
                    code_adaptive: 192,
                    ..strings(40, 56)
                },
            },
            _ => return None,
        })
    }

    /// CPython 3.13's layout, from the `_Py_DebugOffsets` that the interpreter keeps at the
    /// start of `_PyRuntime` (Include/internal/pycore_runtime.h of v3.13.0). `bytes` is at
    /// least [`DEBUG_OFFSETS_SIZE`] bytes of it.
    pub fn from_debug_offsets(bytes: &[u8]) -> Result<Layout, String> {
        let word = |at: usize| -> Result<u64, String> {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| "is cut short".to_string())
        };
        let small = |at: usize| -> Result<u32, String> {
            let v = word(at)?;
            u32::try_from(v)
                .ok()
                .filter(|&v| v < 1 << 16)
                .ok_or_else(|| format!("has an implausible offset {v} at byte {at}"))
        };
        if bytes.get(..8) != Some(b"xdebugpy") {
            return Err("cookie is missing".into());
        }
        let version = word(8)?;
        if version >> 16 != 0x030d {
            return Err(format!("version {version:#x} is not 3.13"));
        }
        if word(16)? != 0 {
            return Err("says the build is free-threaded, whose layout is not known".into());
        }
        Ok(Layout {
            minor: 13,
            runtime_interp_head: u64::from(small(40)?),
            walk: PyConfig {
                interp_head: 0,
                interp_next: small(64)?,
                interp_threads: small(72)?,
                tstate_next: small(168)?,
                tstate_tid: small(200)?,
                pthread_tid: 0,
                tstate_frame: small(184)?,
                cframe_frame: 0,
                frame_previous: small(232)?,
                frame_code: small(240)?,
                frame_instr: small(248)?,
                instr_size: 8,
                entry_flag: py_frame::SHIM as u32,
                entry_offset: small(264)?,
                // FRAME_OWNED_BY_CSTACK (Include/internal/pycore_frame.h of v3.13.0).
                entry_value: 3,
            },
            code: CodeLayout {
                filename: u64::from(small(280)?),
                name: u64::from(small(296)?),
                firstlineno: u64::from(small(312)?),
                linetable: u64::from(small(304)?),
                code_adaptive: u64::from(small(344)?),
                str_length: u64::from(small(552)?),
                str_state: u64::from(small(544)?),
                ascii_size: u64::from(small(560)?),
                compact_size: 56,
                bytes_size: u64::from(small(520)?),
                bytes_data: u64::from(small(528)?),
            },
        })
    }
}

/// Bytes of 3.13's `_Py_DebugOffsets` read (up to and including `unicode_object`).
pub const DEBUG_OFFSETS_SIZE: usize = 568;

/// An interpreter found in a process.
#[derive(Clone, Debug)]
pub struct PyProcess {
    /// The file that holds the interpreter.
    pub path: String,
    pub minor: u8,
    /// The layout, or why there is none.
    pub layout: Result<Layout, String>,
    /// Where `_PyEval_EvalFrameDefault` lies in the process (its cold part too).
    pub eval: Vec<Range<u64>>,
    /// What the kernel side walks; `None` when the layout is not known.
    pub config: Option<PyConfig>,
    /// Where its object types are, to check what is read.
    pub types: Types,
}

impl PyProcess {
    fn in_eval(&self, return_addr: u64) -> bool {
        // The byte before a return address is inside the call instruction.
        let at = return_addr.wrapping_sub(1);
        self.eval.iter().any(|r| r.contains(&at))
    }
}

/// Whether a file name looks like a CPython interpreter (`python3.12`, `libpython3.12.so.1.0`).
fn python_name(path: &str) -> Option<u8> {
    let name = path.rsplit('/').next()?;
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The load bias of the mapping `m` of an ELF file whose loadable segments are `loads`
/// (`p_vaddr`, `p_offset`, `p_filesz`).
fn load_bias(loads: &[(u64, u64, u64)], m: &MapsFile) -> Option<u64> {
    const PAGE: u64 = 4096;
    let &(vaddr, offset, _) = loads
        .iter()
        .find(|&&(_, o, _)| o & !(PAGE - 1) == m.offset)
        .or_else(|| {
            loads
                .iter()
                .find(|&&(_, o, size)| o <= m.offset && m.offset < o + size)
        })?;
    Some(
        m.start
            .wrapping_sub(vaddr.wrapping_sub(offset).wrapping_add(m.offset)),
    )
}

/// Offset of the thread id in glibc's `struct pthread` (what `pthread_self()` points at),
/// found in this process: the first 4-byte word of a new thread's own `struct pthread` that
/// holds its id. 3.10 names threads by `pthread_self()` only.
fn pthread_tid_offset() -> Option<u32> {
    std::thread::spawn(|| {
        // SAFETY: no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        // SAFETY: no preconditions.
        let tid = unsafe { libc::gettid() };
        (16..1024usize).step_by(4).find_map(|off| {
            // SAFETY: glibc's `struct pthread` of a running thread is larger than 1 KiB and
            // lies in that thread's own mapped stack block; this thread is alive while it
            // reads its own.
            let v = unsafe { std::ptr::read_volatile((me + off) as *const i32) };
            (v == tid).then_some(off as u32)
        })
    })
    .join()
    .ok()
    .flatten()
}

/// Looks for a CPython interpreter in process `pid`. `Ok(None)` when there is none (yet).
pub fn detect(pid: u32, pthread_tid: Option<u32>) -> Result<Option<PyProcess>, PyError> {
    let maps_path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&maps_path).map_err(|source| PyError::Read {
        path: maps_path,
        source,
    })?;
    let maps = parse_maps(&text);
    // The executable `python3.X` of a shared build is a launcher without the runtime: each
    // file named like Python is looked at, until one holds `_PyRuntime`.
    let mut seen = HashSet::new();
    for (m, minor) in maps
        .iter()
        .filter_map(|m| python_name(&m.path).map(|minor| (m, minor)))
    {
        if seen.insert(m.path.as_str())
            && let Some(p) = detect_in(pid, &maps, m, minor, pthread_tid)?
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Looks for the interpreter in the file that `first` maps.
fn detect_in(
    pid: u32,
    maps: &[MapsFile],
    first: &MapsFile,
    minor_by_name: u8,
    pthread_tid: Option<u32>,
) -> Result<Option<PyProcess>, PyError> {
    let path = first.path.clone();
    let file = File::open(format!("/proc/{pid}/map_files/{}", first.range))
        .or_else(|_| File::open(&path))
        .map_err(|source| PyError::Read {
            path: path.clone(),
            source,
        })?;
    // SAFETY: a file the process has mapped and runs; read-only here, and replaced by
    // rename rather than rewritten in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| PyError::Read {
        path: path.clone(),
        source,
    })?;
    let elf = object::File::parse(&map[..]).map_err(|e| PyError::Elf {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let mut runtime = None;
    let mut py_version = None;
    let mut eval = Vec::new();
    let mut types = Types::default();
    for sym in elf.symbols().chain(elf.dynamic_symbols()) {
        match sym.name() {
            Ok("_PyRuntime") => runtime = Some(sym.address()),
            Ok("PyCode_Type") => types.code = Some(sym.address()),
            Ok("PyUnicode_Type") => types.str = Some(sym.address()),
            Ok("PyBytes_Type") => types.bytes = Some(sym.address()),
            Ok("Py_Version") => py_version = Some(sym.address()),
            Ok("_PyEval_EvalFrameDefault" | "_PyEval_EvalFrameDefault.cold") => {
                eval.push(sym.address()..sym.address() + sym.size().max(1));
            }
            _ => {}
        }
    }
    let Some(runtime) = runtime else {
        // A file named like Python that is not the interpreter (a launcher): none.
        return Ok(None);
    };
    let read_at = |addr: u64, len: u64| -> Option<&[u8]> {
        elf.segments()
            .find_map(|s| s.data_range(addr, len).ok().flatten())
    };
    let minor = match py_version {
        Some(addr) => {
            let v = read_at(addr, 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| PyError::NoVersion { path: path.clone() })?;
            if v >> 24 != 3 {
                return Err(PyError::UnknownVersion((v >> 24) as u8, (v >> 16) as u8));
            }
            (v >> 16) as u8
        }
        None => minor_by_name,
    };
    let loads: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (s.address(), offset, size)
        })
        .collect();
    let bias = maps
        .iter()
        .filter(|m| m.path == path)
        .find_map(|m| load_bias(&loads, m))
        .ok_or_else(|| PyError::Elf {
            path: path.clone(),
            why: "no mapping matches a loadable segment".into(),
        })?;
    let layout = match minor {
        13 => {
            let bytes = read_at(runtime, DEBUG_OFFSETS_SIZE as u64).ok_or_else(|| {
                PyError::DebugOffsets {
                    path: path.clone(),
                    why: "cannot be read from the file".into(),
                }
            })?;
            Layout::from_debug_offsets(bytes).map_err(|why| PyError::DebugOffsets {
                path: path.clone(),
                why,
            })
        }
        _ => Layout::table(minor).ok_or(PyError::UnknownVersion(3, minor)),
    };
    let layout = layout.map_err(|e| e.to_string());
    let config = match &layout {
        Ok(l) if l.minor == 10 && pthread_tid.is_none() => None,
        Ok(l) => Some(PyConfig {
            interp_head: bias
                .wrapping_add(runtime)
                .wrapping_add(l.runtime_interp_head),
            pthread_tid: if l.minor == 10 {
                pthread_tid.unwrap_or(0)
            } else {
                0
            },
            ..l.walk
        }),
        Err(_) => None,
    };
    let layout = match (layout, &config) {
        (Ok(l), None) => Err(format!(
            "CPython 3.{}: the thread id's place in glibc's struct pthread was not found",
            l.minor
        )),
        (other, _) => other,
    };
    Ok(Some(PyProcess {
        path,
        minor,
        layout,
        eval: eval
            .into_iter()
            .map(|r| r.start.wrapping_add(bias)..r.end.wrapping_add(bias))
            .collect(),
        config,
        types: Types {
            code: types.code.map(|a| a.wrapping_add(bias)),
            str: types.str.map(|a| a.wrapping_add(bias)),
            bytes: types.bytes.map(|a| a.wrapping_add(bias)),
        },
    }))
}

/// Interpreters found so far, by process; shared by the watcher and the drain path.
pub type Registry = Arc<Mutex<HashMap<u32, Arc<PyProcess>>>>;

enum Msg {
    Watch(u32),
    /// Look at once, then say so.
    Now(u32, mpsc::Sender<()>),
    Forget(u32),
}

/// How long [`PyWatcher::look_now`] waits for its answer, at most.
const LOOK_NOW_WAIT: Duration = Duration::from_secs(2);

/// Looks for interpreters in the processes it is told about, on a thread of its own, and
/// gives the kernel side their layouts (`PY_PROCS`).
#[derive(Debug)]
pub struct PyWatcher {
    tx: mpsc::Sender<Msg>,
    registry: Registry,
}

impl PyWatcher {
    /// Starts the thread that owns the kernel's `PY_PROCS` map.
    pub fn spawn(mut map: BpfHashMap<MapData, u32, PyConfig>) -> std::io::Result<PyWatcher> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let registry: Registry = Arc::default();
        let shared = registry.clone();
        std::thread::Builder::new()
            .name("python".into())
            .spawn(move || {
                let pthread_tid = pthread_tid_offset();
                // pid → when to stop looking, and the next look.
                let mut watching: HashMap<u32, (Instant, Instant, Duration)> = HashMap::new();
                let mut done: HashSet<u32> = HashSet::new();
                loop {
                    let wait = watching
                        .values()
                        .map(|&(_, next, _)| next.saturating_duration_since(Instant::now()))
                        .min()
                        .unwrap_or(Duration::from_secs(3600));
                    let mut reply = None;
                    match rx.recv_timeout(wait) {
                        Ok(Msg::Watch(pid)) => {
                            if !done.contains(&pid) && !watching.contains_key(&pid) {
                                let now = Instant::now();
                                watching.insert(pid, (now + WATCH_FOR, now, Duration::ZERO));
                            }
                        }
                        Ok(Msg::Now(pid, tx)) => {
                            let now = Instant::now();
                            if !done.contains(&pid) {
                                let e = watching.entry(pid).or_insert((
                                    now + WATCH_FOR,
                                    now,
                                    Duration::ZERO,
                                ));
                                e.1 = now;
                            }
                            reply = Some(tx);
                        }
                        Ok(Msg::Forget(pid)) => {
                            tracing::debug!("pid {pid}: ended; its CPython layout goes");
                            watching.remove(&pid);
                            done.remove(&pid);
                            let _ = map.remove(&pid);
                            if let Ok(mut r) = shared.lock() {
                                r.remove(&pid);
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    let due: Vec<u32> = watching
                        .iter()
                        .filter(|&(_, &(_, next, _))| next <= now)
                        .map(|(&pid, _)| pid)
                        .collect();
                    for pid in due {
                        let found = detect(pid, pthread_tid);
                        let finished = match found {
                            Ok(Some(p)) => {
                                if let Some(cfg) = p.config {
                                    match map.insert(&pid, &cfg, 0) {
                                        Ok(()) => tracing::debug!(
                                            "pid {pid}: CPython 3.{} in {}",
                                            p.minor,
                                            p.path
                                        ),
                                        Err(e) => {
                                            tracing::warn!("PY_PROCS: adding pid {pid} failed: {e}")
                                        }
                                    }
                                }
                                if let Err(why) = &p.layout {
                                    tracing::info!("pid {pid}: {why}; no Python frames");
                                }
                                if let Ok(mut r) = shared.lock() {
                                    r.insert(pid, Arc::new(p));
                                }
                                true
                            }
                            Ok(None) => false,
                            Err(e @ PyError::Read { .. }) => {
                                // Gone, or not readable: stop looking.
                                tracing::debug!("pid {pid}: {e}");
                                true
                            }
                            Err(e) => {
                                tracing::info!("pid {pid}: {e}; no Python frames");
                                true
                            }
                        };
                        let Some(entry) = watching.get_mut(&pid) else {
                            continue;
                        };
                        if finished || entry.0 <= now {
                            watching.remove(&pid);
                            done.insert(pid);
                        } else {
                            // Soon after exec the loader is mapping libraries: look often,
                            // then less so.
                            entry.2 = (entry.2 * 2)
                                .clamp(Duration::from_millis(1), Duration::from_millis(50));
                            entry.1 = now + entry.2;
                        }
                    }
                    if let Some(tx) = reply {
                        let _ = tx.send(());
                    }
                }
            })?;
        Ok(PyWatcher { tx, registry })
    }

    /// Looks at process `pid` (again, if it was forgotten) until an interpreter is found in
    /// it or a few seconds have passed.
    pub fn watch(&self, pid: u32) {
        let _ = self.tx.send(Msg::Watch(pid));
    }

    /// Looks at process `pid` at once (a process held at its first driver call) and returns
    /// when that is done, so that its first stack has its Python frames; goes on looking as
    /// [`watch`](Self::watch) does if no interpreter is mapped yet.
    pub fn look_now(&self, pid: u32) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Now(pid, tx)).is_ok() {
            let _ = rx.recv_timeout(LOOK_NOW_WAIT);
        }
    }

    /// Process `pid` ended: its entry goes, from the kernel's map too (its pid may be reused).
    pub fn forget(&self, pid: u32) {
        let _ = self.tx.send(Msg::Forget(pid));
    }

    /// The interpreters found, for the drain path.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }
}

/// What a code object says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Code {
    filename: String,
    name: String,
    firstlineno: i32,
    linetable: Vec<u8>,
}

/// Reads process memory.
trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

impl Memory for File {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_exact_at(buf, addr).is_ok()
    }
}

fn read_u64(mem: &dyn Memory, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b).then(|| u64::from_le_bytes(b))
}

/// A `str` object's text.
fn read_str(mem: &dyn Memory, l: &CodeLayout, addr: u64) -> Option<String> {
    // No more than the smallest string object holds: the next byte may be unmapped.
    let length = read_u64(mem, addr + l.str_length)?;
    let mut state = [0u8; 4];
    if !mem.read(addr + l.str_state, &mut state) {
        return None;
    }
    let state = u32::from_le_bytes(state);
    if length > MAX_STRING {
        return None;
    }
    let kind = (state >> 2) & 7;
    let compact = state >> 5 & 1 == 1;
    let ascii = state >> 6 & 1 == 1;
    let data = match (compact, ascii) {
        (true, true) => addr + l.ascii_size,
        (true, false) => addr + l.compact_size,
        // A legacy string keeps its characters behind a pointer.
        (false, _) => read_u64(mem, addr + l.compact_size)?,
    };
    let width = match kind {
        1 | 2 | 4 => kind as usize,
        _ => return None,
    };
    let mut bytes = vec![0u8; length as usize * width];
    if !mem.read(data, &mut bytes) {
        return None;
    }
    Some(match width {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => char::decode_utf16(
            bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&c| u16::from_le_bytes(c)),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|&c| char::from_u32(u32::from_le_bytes(c)).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    })
}

/// A `bytes` object's contents.
fn read_bytes(mem: &dyn Memory, l: &CodeLayout, addr: u64) -> Option<Vec<u8>> {
    let size = read_u64(mem, addr + l.bytes_size)?;
    if size > MAX_LINETABLE {
        return None;
    }
    let mut out = vec![0u8; size as usize];
    mem.read(addr + l.bytes_data, &mut out).then_some(out)
}

fn read_code(mem: &dyn Memory, l: &CodeLayout, types: &Types, addr: u64) -> Result<Code, String> {
    let unreadable = || format!("code object at {addr:#x} could not be read");
    let ptr = |at: u64| read_u64(mem, addr + at).ok_or_else(unreadable);
    let mut first = [0u8; 4];
    if !mem.read(addr + l.firstlineno, &mut first) {
        return Err(unreadable());
    }
    // An object is what it should be only if its type says so: a code object freed since
    // the call (a process tearing down) is not named from what its memory holds now.
    let typed =
        |obj: u64, ty: Option<u64>| ty.is_none_or(|ty| read_u64(mem, obj + OB_TYPE) == Some(ty));
    let not_code = || format!("the object at {addr:#x} is no longer a code object");
    if !typed(addr, types.code) {
        return Err(not_code());
    }
    let (filename, name, linetable) = (ptr(l.filename)?, ptr(l.name)?, ptr(l.linetable)?);
    if !typed(filename, types.str) || !typed(name, types.str) || !typed(linetable, types.bytes) {
        return Err(not_code());
    }
    Ok(Code {
        filename: read_str(mem, l, filename).ok_or_else(unreadable)?,
        name: read_str(mem, l, name).ok_or_else(unreadable)?,
        firstlineno: i32::from_le_bytes(first),
        linetable: read_bytes(mem, l, linetable).ok_or_else(unreadable)?,
    })
}

/// `PyObject::ob_type`, the same in every version.
const OB_TYPE: u64 = 8;

/// Where the interpreter's `code`, `str` and `bytes` types are in the process, where its
/// symbol table says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Types {
    pub code: Option<u64>,
    pub str: Option<u64>,
    pub bytes: Option<u64>,
}

/// The line of the instruction at byte offset `offset`, from a 3.10 line table (PEP 626:
/// pairs of an address delta and a signed line delta, -128 for "no line").
pub fn line_310(table: &[u8], firstlineno: i32, offset: u64) -> Option<i32> {
    let mut line = firstlineno;
    let mut end = 0u64;
    for pair in table.as_chunks::<2>().0 {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let here = if delta == -128 {
            None
        } else {
            line += i32::from(delta);
            Some(line)
        };
        if start <= offset && offset < end {
            return here;
        }
    }
    None
}

/// The line of the code unit at `unit`, from a 3.11+ location table
/// (Objects/locations.md of CPython).
pub fn line_311(table: &[u8], firstlineno: i32, unit: u64) -> Option<i32> {
    fn varint(bytes: &mut impl Iterator<Item = u8>) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        for b in bytes.by_ref() {
            v |= u64::from(b & 63) << shift;
            shift += 6;
            if b & 64 == 0 || shift > 60 {
                break;
            }
        }
        v
    }
    let mut bytes = table.iter().copied();
    let mut line = i64::from(firstlineno);
    let mut addr = 0u64;
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            return None;
        }
        let code = (first >> 3) & 15;
        let len = u64::from(first & 7) + 1;
        let here = match code {
            15 => None,
            14 | 13 => {
                let v = varint(&mut bytes);
                let delta = if v & 1 == 1 {
                    -((v >> 1) as i64)
                } else {
                    (v >> 1) as i64
                };
                line += delta;
                if code == 14 {
                    varint(&mut bytes);
                    varint(&mut bytes);
                    varint(&mut bytes);
                }
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next();
                bytes.next();
                Some(line)
            }
            _ => {
                bytes.next();
                Some(line)
            }
        };
        if addr <= unit && unit < addr + len {
            return here.and_then(|l| i32::try_from(l).ok());
        }
        addr += len;
    }
    None
}

/// Python frames that replace the native frame at `at` (an eval-loop frame).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PyInsert {
    pub at: usize,
    pub frames: Vec<Frame>,
}

/// Names the Python frames of stack copies and places them among the native frames.
#[derive(Debug, Default)]
pub struct PythonStacks {
    registry: Option<Registry>,
    mem: HashMap<u32, Option<Arc<File>>>,
    code: HashMap<(u32, u64), Result<Arc<Code>, String>>,
}

impl PythonStacks {
    /// Reads interpreters from `registry` (filled by a [`PyWatcher`]).
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Some(registry),
            ..Self::default()
        }
    }

    /// Process `pid` ended: what was cached about it goes.
    pub fn forget(&mut self, pid: u32) {
        self.mem.remove(&pid);
        self.code.retain(|&(p, _), _| p != pid);
    }

    fn process(&self, pid: u32) -> Option<Arc<PyProcess>> {
        self.registry.as_ref()?.lock().ok()?.get(&pid).cloned()
    }

    /// The Python frames of one stack copy, placed at the eval-loop frames among `addrs`
    /// (the native return addresses, innermost first).
    pub fn interleave(
        &mut self,
        pid: u32,
        addrs: &[u64],
        status: u32,
        raw: &[PyFrameRaw],
    ) -> Vec<PyInsert> {
        let Some(proc) = self.process(pid) else {
            return Vec::new();
        };
        let evals: Vec<usize> = addrs
            .iter()
            .enumerate()
            .filter(|&(_, &a)| proc.in_eval(a))
            .map(|(i, _)| i)
            .collect();
        if evals.is_empty() {
            return Vec::new();
        }
        let unknown = |why: &str| Frame {
            python: true,
            file: Some(proc.path.clone()),
            unknown: Some(why.to_string()),
            ..Frame::default()
        };
        // Every eval-loop frame says why its Python frames are not known.
        let unknown_at_each = |evals: Vec<usize>, why: &str| -> Vec<PyInsert> {
            evals
                .into_iter()
                .map(|at| PyInsert {
                    at,
                    frames: vec![unknown(why)],
                })
                .collect()
        };
        let layout = match &proc.layout {
            Ok(l) => *l,
            Err(why) => return unknown_at_each(evals, why),
        };
        let why_none = match status {
            py_status::NONE => Some(
                "Python frames not read: the interpreter was not yet found in the process at \
                 this call",
            ),
            py_status::NO_THREAD => Some("the interpreter has no thread state for this thread"),
            _ => None,
        };
        if let Some(why) = why_none {
            return unknown_at_each(evals, why);
        }
        let groups = group(layout.minor, raw);
        let mut out = Vec::with_capacity(evals.len());
        let mut groups = groups.into_iter();
        for at in evals {
            let frames = match groups.next() {
                Some(g) => g
                    .iter()
                    .map(|f| self.frame(pid, &layout, proc.types, f))
                    .collect(),
                None => vec![unknown(match status {
                    py_status::TRUNCATED => "deeper than the Python frames read",
                    py_status::FAULT => "the interpreter's frames could not be read further",
                    _ => "no Python frame left for this call of the eval loop",
                })],
            };
            out.push(PyInsert { at, frames });
        }
        out
    }

    /// One named Python frame.
    fn frame(&mut self, pid: u32, layout: &Layout, types: Types, raw: &PyFrameRaw) -> Frame {
        let code = self.code(pid, layout, types, raw.code);
        let mut frame = Frame {
            addr: raw.code,
            python: true,
            ..Frame::default()
        };
        match code {
            Ok(code) => {
                let line = if layout.minor == 10 {
                    // f_lasti counts code units; -1 before the first instruction.
                    let lasti = raw.instr as u32 as i32;
                    if lasti < 0 {
                        Some(code.firstlineno)
                    } else {
                        line_310(&code.linetable, code.firstlineno, lasti as u64 * 2)
                    }
                } else {
                    let start = raw.code.wrapping_add(layout.code.code_adaptive);
                    raw.instr
                        .checked_sub(start)
                        .and_then(|bytes| line_311(&code.linetable, code.firstlineno, bytes / 2))
                };
                frame.src = Some(match line {
                    Some(line) => format!("{}:{line}", code.filename),
                    None => code.filename.clone(),
                });
                frame.file = Some(code.filename.clone());
                frame.sym = Some(code.name.clone());
            }
            Err(why) => frame.unknown = Some(why),
        }
        frame
    }

    fn code(
        &mut self,
        pid: u32,
        layout: &Layout,
        types: Types,
        addr: u64,
    ) -> Result<Arc<Code>, String> {
        if let Some(c) = self.code.get(&(pid, addr)) {
            return c.clone();
        }
        if self.code.len() >= CODE_CACHE_LIMIT {
            self.code.clear();
        }
        let mem = self
            .mem
            .entry(pid)
            .or_insert_with(|| File::open(format!("/proc/{pid}/mem")).ok().map(Arc::new))
            .clone();
        let found = match mem {
            Some(mem) => read_code(mem.as_ref(), &layout.code, &types, addr).map(Arc::new),
            None => Err(format!(
                "code object at {addr:#x} not read: the process exited before it was named"
            )),
        };
        // A failed read is not cached: the process may be gone, and then so is its entry.
        if found.is_ok() {
            self.code.insert((pid, addr), found.clone());
        }
        found
    }
}

/// Splits a thread's frames (innermost first) into the frames of each call of the eval
/// loop, innermost first: 3.10 runs one frame per call; 3.11 marks the first frame of each
/// call (`is_entry`); 3.12+ pushes a shim frame before it, which is left out.
fn group(minor: u8, raw: &[PyFrameRaw]) -> Vec<Vec<PyFrameRaw>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for f in raw {
        if minor == 10 {
            out.push(vec![*f]);
            continue;
        }
        if f.flags & py_frame::SHIM != 0 {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        cur.push(*f);
        if f.flags & py_frame::ENTRY != 0 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_interpreters_by_file() {
        assert_eq!(python_name("/usr/lib/libpython3.12.so.1.0"), Some(12));
        assert_eq!(
            python_name("/root/.pyenv/versions/3.10.13/bin/python3.10"),
            Some(10)
        );
        assert_eq!(python_name("/usr/bin/python3"), None);
        assert_eq!(python_name("/usr/lib/libcuda.so.1"), None);
    }

    #[test]
    fn reads_a_310_line_table() {
        // Lines 5 (bytes 0..6), none (6..8), 7 (8..20).
        let table = [6u8, 0, 2, 0x80, 12, 2];
        assert_eq!(line_310(&table, 5, 0), Some(5));
        assert_eq!(line_310(&table, 5, 6), None);
        assert_eq!(line_310(&table, 5, 10), Some(7));
        assert_eq!(line_310(&table, 5, 40), None);
    }

    #[test]
    fn reads_a_311_location_table() {
        // Short form (2 units, line 10), one-line form +2 (1 unit, line 12), no-column form
        // -1 (3 units, line 11), no location (1 unit), long form +3 (1 unit, line 14).
        let table = [
            0x80 | 1,
            0,
            0x80 | (12 << 3),
            1,
            2,
            0x80 | (13 << 3) | 2,
            3,
            0x80 | (15 << 3),
            0x80 | (14 << 3),
            6,
            0,
            1,
            1,
        ];
        assert_eq!(line_311(&table, 10, 1), Some(10));
        assert_eq!(line_311(&table, 10, 2), Some(12));
        assert_eq!(line_311(&table, 10, 5), Some(11));
        assert_eq!(line_311(&table, 10, 6), None);
        assert_eq!(line_311(&table, 10, 7), Some(14));
    }

    #[test]
    fn groups_frames_by_call_of_the_eval_loop() {
        let f = |code, flags| PyFrameRaw {
            code,
            instr: 0,
            flags,
        };
        let raw = [
            f(1, 0),
            f(2, 0),
            f(0, py_frame::SHIM),
            f(3, 0),
            f(0, py_frame::SHIM),
        ];
        let codes = |g: Vec<Vec<PyFrameRaw>>| -> Vec<Vec<u64>> {
            g.into_iter()
                .map(|v| v.into_iter().map(|f| f.code).collect())
                .collect()
        };
        assert_eq!(codes(group(12, &raw)), vec![vec![1, 2], vec![3]]);
        let raw = [f(1, 0), f(2, py_frame::ENTRY), f(3, py_frame::ENTRY)];
        assert_eq!(codes(group(11, &raw)), vec![vec![1, 2], vec![3]]);
        assert_eq!(codes(group(10, &raw)), vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn the_313_layout_comes_from_its_debug_offsets() {
        let mut b = vec![0u8; DEBUG_OFFSETS_SIZE];
        b[..8].copy_from_slice(b"xdebugpy");
        let mut put = |at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(8, 0x030d00f0);
        put(40, 632);
        put(72, 7344);
        put(200, 160);
        put(184, 72);
        put(264, 70);
        let l = Layout::from_debug_offsets(&b).expect("layout");
        assert_eq!(l.runtime_interp_head, 632);
        assert_eq!(l.walk.interp_threads, 7344);
        assert_eq!(l.walk.tstate_tid, 160);
        assert_eq!(l.walk.entry_offset, 70);
        b[8] = 0xf1;
        b[10] = 0x0e;
        assert!(Layout::from_debug_offsets(&b).is_err());
        assert!(Layout::from_debug_offsets(&b[..100]).is_err());
    }

    /// Process memory made of a few pieces.
    struct FakeMem(Vec<(u64, Vec<u8>)>);

    impl Memory for FakeMem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            self.0.iter().any(|(at, bytes)| {
                let Some(from) = addr.checked_sub(*at) else {
                    return false;
                };
                match bytes.get(from as usize..from as usize + buf.len()) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        true
                    }
                    None => false,
                }
            })
        }
    }

    /// A compact ASCII `str` of 3.12's layout.
    fn ascii(text: &str) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        b[16..24].copy_from_slice(&(text.len() as u64).to_le_bytes());
        // kind 1, compact, ascii.
        b[32..36].copy_from_slice(&((1u32 << 2) | (1 << 5) | (1 << 6)).to_le_bytes());
        b.extend_from_slice(text.as_bytes());
        b.push(0);
        b
    }

    #[test]
    fn reads_a_code_object_and_its_strings() {
        let l = Layout::table(12).expect("3.12").code;
        let mut code = vec![0u8; 256];
        let mut put =
            |at: u64, v: u64| code[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        put(l.filename, 0x2000);
        put(l.name, 0x3000);
        put(l.linetable, 0x4000);
        code[l.firstlineno as usize..l.firstlineno as usize + 4]
            .copy_from_slice(&7i32.to_le_bytes());
        let mut table = vec![0u8; 32];
        table[16..24].copy_from_slice(&2u64.to_le_bytes());
        table.extend_from_slice(&[0x81, 0]);
        // A UCS-2 name: compact, not ASCII.
        let mut name = vec![0u8; 56];
        name[16..24].copy_from_slice(&2u64.to_le_bytes());
        name[32..36].copy_from_slice(&((2u32 << 2) | (1 << 5)).to_le_bytes());
        for c in "fé".encode_utf16() {
            name.extend_from_slice(&c.to_le_bytes());
        }
        let mem = FakeMem(vec![
            (0x1000, code),
            (0x2000, ascii("/srv/train.py")),
            (0x3000, name),
            (0x4000, table),
        ]);
        let c = read_code(&mem, &l, &Types::default(), 0x1000).expect("readable");
        assert_eq!(c.filename, "/srv/train.py");
        assert_eq!(c.name, "fé");
        assert_eq!(c.firstlineno, 7);
        assert_eq!(c.linetable, vec![0x81, 0]);
        assert!(read_code(&mem, &l, &Types::default(), 0x9000).is_err());
        // A code object of the wrong type is not named.
        let types = Types {
            code: Some(0x77),
            ..Types::default()
        };
        assert!(
            read_code(&mem, &l, &types, 0x1000)
                .is_err_and(|e| e.contains("no longer a code object"))
        );
    }

    #[test]
    fn an_unknown_layout_is_said_at_each_eval_loop_frame() {
        let registry: Registry = Arc::default();
        registry.lock().expect("lock").insert(
            7,
            Arc::new(PyProcess {
                path: "/usr/lib/libpython3.14.so.1.0".into(),
                minor: 14,
                layout: Err("CPython 3.14: layout not known".into()),
                eval: vec![0x1000..0x2000, 0x3000..0x3100],
                config: None,
                types: Types::default(),
            }),
        );
        let mut py = PythonStacks::new(registry);
        let inserts = py.interleave(7, &[0x500, 0x1800, 0x600, 0x1900], py_status::NONE, &[]);
        assert_eq!(inserts.iter().map(|i| i.at).collect::<Vec<_>>(), vec![1, 3]);
        for i in &inserts {
            assert_eq!(i.frames.len(), 1);
            assert!(i.frames[0].python);
            assert_eq!(
                i.frames[0].unknown.as_deref(),
                Some("CPython 3.14: layout not known")
            );
        }
        // A process without an interpreter keeps its native frames.
        assert!(py.interleave(8, &[0x1800], py_status::NONE, &[]).is_empty());
    }

    #[test]
    fn an_unknown_version_has_no_table() {
        assert!(Layout::table(9).is_none());
        assert!(Layout::table(14).is_none());
        assert!(Layout::table(13).is_none());
    }
}
