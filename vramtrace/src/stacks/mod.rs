//! Normalizes user stacks at record time and symbolizes them off that path, or later.
//!
//! A stack captured in the kernel is a list of virtual addresses, meaningful only while the
//! process lives and keeps its mappings. While the ring buffer is drained each address is
//! normalized to (file, build ID, file offset) ([`StackNormalizer`]), which stays meaningful
//! after the process is gone and on another machine ([`symbolize_offline`]). Symbolization
//! fills the function name and source line: it reads symbol tables and DWARF, which for a
//! large library takes seconds the first time, so recording does it on a thread of its own
//! ([`SymbolWorker`]) from the files the normalizer held open. Failing at either step is
//! data ([`Frame::unknown`]), never an error (blazesym's model).
//!
//! Every frame is a return address (see [`Stack`](crate::trace::Stack)): the instruction
//! after a call. Symbolization looks up the byte before it, so that a call that is the last
//! instruction of a function (a call to a `noreturn` function) is attributed to its caller
//! and not to whatever function follows it in the file.
//!
//! Files of a live process are read through `/proc/PID/map_files/`, which reaches the mapped
//! file itself: in a container, the path the process saw names a different file, or none,
//! on the host.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use blazesym::normalize::{self, NormalizeOpts, Normalizer, UserMeta};
use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer};
use blazesym::{ErrorKind, Pid};

pub mod python;
pub mod unwind;

use crate::probe::libcuda::{MapsFile, parse_maps};
use crate::procinfo;
use crate::trace::Frame;

/// Why a frame has no symbol, as written into [`Frame::unknown`].
pub mod reason {
    /// The process was gone before its addresses could be normalized.
    pub const PROCESS_EXITED: &str = "process exited";
    /// The file on this machine is not the one the process ran.
    pub const BUILD_ID_MISMATCH: &str = "build id mismatch";
    /// The file is not on this machine.
    pub const FILE_MISSING: &str = "file not found";
}

/// Cached entries past this count are dropped, so that a long recording of processes that
/// generate code (JITs) cannot grow the cache without bound.
const CACHE_LIMIT: usize = 1 << 18;

/// Files held open past this count are let go (and blazesym's caches with them), for the
/// same reason and to stay well within the usual limit of 1024 descriptors: the normalizer
/// and the symbolizer each hold at most this many, mostly the same ones.
const FILES_LIMIT: usize = 256;

/// What symbolization found for one (file, offset).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Symbol {
    Found {
        /// The function that holds the code, and its line (that of the outermost inlined
        /// call, when calls were inlined there).
        sym: String,
        src: Option<String>,
        /// The functions inlined at this address, innermost first, each with its own line.
        inlined: Vec<(String, Option<String>)>,
    },
    Unknown(String),
}

impl Symbol {
    /// Names `frame`, and gives the frames of the calls inlined at its address, innermost
    /// first, to go before it.
    fn apply(&self, frame: &mut Frame) -> Vec<Frame> {
        match self {
            Symbol::Found { sym, src, inlined } => {
                frame.sym = Some(sym.clone());
                frame.src = src.clone();
                inlined
                    .iter()
                    .map(|(sym, src)| Frame {
                        sym: Some(sym.clone()),
                        src: src.clone(),
                        inlined: true,
                        ..frame.clone()
                    })
                    .collect()
            }
            Symbol::Unknown(reason) => {
                frame.unknown = Some(reason.clone());
                Vec::new()
            }
        }
    }
}

/// `file:line` (or the file alone) of a place that debug information names.
fn code_place(info: &CodeInfo<'_>) -> String {
    let file = info.to_path();
    match info.line {
        Some(line) => format!("{}:{line}", file.display()),
        None => file.display().to_string(),
    }
}

/// Symbolizes `offset` (a return address's file offset) in the ELF file at `path`.
fn symbolize_file(symbolizer: &Symbolizer, path: &Path, offset: u64) -> Symbol {
    let src = Source::Elf(Elf::new(path));
    // The byte before a return address is inside the call instruction.
    let lookup = offset.saturating_sub(1);
    match symbolizer.symbolize_single(&src, Input::FileOffset(lookup)) {
        Ok(Symbolized::Sym(sym)) => Symbol::Found {
            src: sym.code_info.as_deref().map(code_place),
            // blazesym lists them outermost first.
            inlined: sym
                .inlined
                .iter()
                .rev()
                .map(|f| (f.name.to_string(), f.code_info.as_ref().map(code_place)))
                .collect(),
            sym: sym.name.into_owned(),
        },
        Ok(Symbolized::Unknown(reason)) => Symbol::Unknown(reason.to_string()),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            Symbol::Unknown(reason::FILE_MISSING.to_string())
        }
        Err(err) => Symbol::Unknown(format!("symbolization failed: {err}")),
    }
}

/// Puts the frames of inlined calls before the frame at whose address they were inlined:
/// `inserts` holds, in increasing order of index, each such index and its frames.
fn insert_inlined<T: Clone>(
    frames: &mut Vec<Frame>,
    parallel: Option<&mut Vec<T>>,
    inserts: Vec<(usize, Vec<Frame>)>,
) {
    if inserts.is_empty() {
        return;
    }
    let added: usize = inserts.iter().map(|(_, f)| f.len()).sum();
    let mut out = Vec::with_capacity(frames.len() + added);
    let mut out_parallel = parallel
        .as_ref()
        .map(|p| Vec::with_capacity(p.len() + added));
    let mut inserts = inserts.into_iter().peekable();
    for (i, frame) in std::mem::take(frames).into_iter().enumerate() {
        if let Some((_, inlined)) = inserts.next_if(|(at, _)| *at == i) {
            if let (Some(p), Some(out_p)) = (parallel.as_deref(), out_parallel.as_mut()) {
                out_p.extend(std::iter::repeat_n(p[i].clone(), inlined.len()));
            }
            out.extend(inlined);
        }
        if let (Some(p), Some(out_p)) = (parallel.as_deref(), out_parallel.as_mut()) {
            out_p.push(p[i].clone());
        }
        out.push(frame);
    }
    *frames = out;
    if let (Some(p), Some(out_p)) = (parallel, out_parallel) {
        *p = out_p;
    }
}

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        // Each inlined call becomes a frame of its own (`Frame::inlined`).
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

/// A file that a traced process mapped, held open from normalization until symbolization,
/// so that it can be read after the process is gone, whatever its root or mount namespace
/// and even when it was deleted or replaced on disk since.
#[derive(Clone, Debug)]
pub struct MappedFile {
    dev: u64,
    ino: u64,
    file: Arc<File>,
}

impl MappedFile {
    /// Opens the file behind a `/proc/PID/map_files/` link.
    fn open(link: &Path) -> Option<Self> {
        let file = File::open(link).ok()?;
        let meta = file.metadata().ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            file: Arc::new(file),
        })
    }

    /// A path that reaches the open file (this process's descriptor of it).
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A stack normalized on the path that drains the ring buffer, not yet symbolized.
#[derive(Clone, Debug, Default)]
pub struct Normalized {
    /// One frame per address: file, build ID and offset where the address is in a file.
    pub frames: Vec<Frame>,
    /// The file behind each frame, where it could be opened; parallel to `frames`.
    pub files: Vec<Option<MappedFile>>,
}

impl Normalized {
    /// Whether a frame still waits for its symbol.
    pub fn needs_symbols(&self) -> bool {
        self.frames.iter().any(needs_symbol)
    }
}

/// Whether symbolization has anything to do for `frame`: normalized, neither named nor
/// given up on.
fn needs_symbol(frame: &Frame) -> bool {
    frame.offset.is_some() && frame.sym.is_none() && frame.unknown.is_none()
}

/// Normalizes the stacks of live processes: (file, build ID, offset) per address, from the
/// process's mappings. Cheap enough for the path that drains the ring buffer: it reads
/// `/proc/PID/maps` and ELF notes, never symbol tables or debug information.
///
/// Files are reached through `/proc/PID/map_files/`, which names exactly the file the process
/// mapped, whatever its mount namespace or root (a container, a chroot) and even when the
/// file was replaced on disk since. The path recorded in [`Frame::file`] is that link's
/// target: the path the kernel gives for the file (for a container process, the path inside
/// the container). The file itself is opened and handed on ([`MappedFile`]) for the
/// symbolizer.
pub struct StackNormalizer {
    normalizer: Normalizer,
    /// The file mappings of each process, read when it was first seen: stacks of a process
    /// that exits before they are normalized (a crash right after an OOM, a short job) are
    /// normalized from here.
    maps: HashMap<u32, Vec<MapsFile>>,
    /// Build IDs of files reached through a maps snapshot.
    build_ids: HashMap<String, Option<String>>,
    /// Files opened so far, by (device, inode): one descriptor per file, whichever process
    /// or path reached it.
    files: HashMap<(u64, u64), MappedFile>,
}

impl Default for StackNormalizer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StackNormalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackNormalizer")
            .field("processes", &self.maps.len())
            .field("open_files", &self.files.len())
            .finish_non_exhaustive()
    }
}

impl StackNormalizer {
    /// A normalizer with empty caches.
    pub fn new() -> Self {
        Self {
            normalizer: Normalizer::builder()
                .enable_build_ids(true)
                .enable_build_id_caching(true)
                .build(),
            maps: HashMap::new(),
            build_ids: HashMap::new(),
            files: HashMap::new(),
        }
    }

    /// Reads and keeps the file mappings of `pid` (a process seen for the first time), so
    /// that its stacks can be normalized even after it has exited.
    /// A snapshot already kept is not replaced by an empty one (an exited process's).
    pub fn remember(&mut self, pid: u32) {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) {
            self.remember_maps(pid, parse_maps(&text));
        }
    }

    /// Keeps `maps`, read by someone else, as the file mappings of `pid`, unless they are
    /// empty: a process read as it exits (a zombie has no mappings) tells nothing, and a
    /// frame normalized from an empty snapshot would say it lay in no mapping the process
    /// had, rather than that the process had exited.
    pub fn remember_maps(&mut self, pid: u32, maps: Vec<MapsFile>) {
        if maps.is_empty() {
            return;
        }
        self.maps.insert(pid, maps);
    }

    /// Forgets what [`remember`](Self::remember) kept for `pid` (its exit was processed).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
    }

    /// Normalizes from the snapshot of a process that is gone. `None` when there is no
    /// snapshot.
    fn normalize_from_snapshot(&mut self, pid: u32, addrs: &[u64]) -> Option<Normalized> {
        let maps = self.maps.get(&pid)?;
        let frames: Vec<Frame> = addrs
            .iter()
            .map(
                |&addr| match maps.iter().find(|m| m.start <= addr && addr < m.end) {
                    Some(m) => Frame {
                        addr,
                        file: Some(m.path.clone()),
                        offset: Some(addr - m.start + m.offset),
                        build_id: self
                            .build_ids
                            .entry(m.path.clone())
                            .or_insert_with(|| crate::probe::libcuda::build_id(Path::new(&m.path)))
                            .clone(),
                        ..Frame::default()
                    },
                    None => Frame {
                        addr,
                        unknown: Some("not in any mapping the process had".to_string()),
                        ..Frame::default()
                    },
                },
            )
            .collect();
        Some(Normalized {
            files: vec![None; frames.len()],
            frames,
        })
    }

    /// Normalizes the user stack `addrs` (innermost first) of the live process `pid`.
    ///
    /// Returns one frame per address, in order. A frame that cannot be normalized carries
    /// the reason in `unknown`; if the process is gone and left no snapshot, every frame
    /// says "process exited".
    pub fn normalize(&mut self, pid: u32, addrs: &[u64]) -> Normalized {
        let unknown = |reason: &str| Normalized {
            frames: addrs
                .iter()
                .map(|&addr| Frame {
                    addr,
                    unknown: Some(reason.to_string()),
                    ..Frame::default()
                })
                .collect(),
            files: vec![None; addrs.len()],
        };
        if addrs.is_empty() {
            return Normalized::default();
        }
        // PID 0 would mean "this process" to blazesym.
        if pid == 0 || !procinfo::process_exists(pid) {
            return self
                .normalize_from_snapshot(pid, addrs)
                .unwrap_or_else(|| unknown(reason::PROCESS_EXITED));
        }
        if self.files.len() >= FILES_LIMIT {
            // blazesym's own caches grow with every file and path seen; start afresh.
            let maps = std::mem::take(&mut self.maps);
            *self = Self::new();
            self.maps = maps;
        }
        let opts = NormalizeOpts {
            map_files: true,
            ..NormalizeOpts::default()
        };
        let output = match self
            .normalizer
            .normalize_user_addrs_opts(Pid::from(pid), addrs, &opts)
        {
            Ok(output) => output,
            Err(err) => {
                // A zombie still has a /proc entry but no mappings: the snapshot knows them.
                if let Some(n) = self.normalize_from_snapshot(pid, addrs) {
                    return n;
                }
                let gone = err.kind() == ErrorKind::NotFound || !procinfo::process_exists(pid);
                return if gone {
                    unknown(reason::PROCESS_EXITED)
                } else {
                    unknown(&format!("normalization failed: {err}"))
                };
            }
        };

        // map_files path → (the path it names, the open file), once per mapping.
        let mut links: HashMap<&Path, (Option<String>, Option<MappedFile>)> = HashMap::new();
        let mut out = Normalized {
            frames: Vec::with_capacity(addrs.len()),
            files: Vec::with_capacity(addrs.len()),
        };
        for (&addr, &(offset, meta_idx)) in addrs.iter().zip(&output.outputs) {
            let mut frame = Frame {
                addr,
                ..Frame::default()
            };
            let mut file = None;
            match output.meta.get(meta_idx) {
                Some(UserMeta::Elf(elf)) => {
                    let (name, mapped) = links.entry(elf.path.as_path()).or_insert_with(|| {
                        let mapped = MappedFile::open(&elf.path)
                            .map(|m| self.files.entry((m.dev, m.ino)).or_insert(m).clone());
                        (mapped_name(&elf.path), mapped)
                    });
                    frame.file = name.clone();
                    frame.offset = Some(offset);
                    frame.build_id = elf.build_id.as_deref().map(hex::encode);
                    file = mapped.clone();
                }
                Some(UserMeta::Sym(sym)) => {
                    // Symbolized in place (the vDSO): there is no file to come back to.
                    frame.sym = Some(sym.name.to_string());
                }
                Some(UserMeta::Unknown(u)) => frame.unknown = Some(u.reason.to_string()),
                Some(_) | None => {
                    frame.unknown = Some(normalize::Reason::Unsupported.to_string());
                }
            }
            out.frames.push(frame);
            out.files.push(file);
        }
        // The process exited between normalization and opening its files: name them from
        // the snapshot; they are then read by path.
        if let Some(maps) = self.maps.get(&pid) {
            for f in out
                .frames
                .iter_mut()
                .filter(|f| f.file.is_none() && f.offset.is_some())
            {
                f.file = maps
                    .iter()
                    .find(|m| m.start <= f.addr && f.addr < m.end)
                    .map(|m| m.path.clone());
            }
        }
        out
    }
}

/// Symbolizes normalized stacks: function names and source lines, from the files the
/// normalizer opened or, failing that, from the files on this machine by path. The slow
/// part (symbol tables, DWARF), kept off the path that drains the ring buffer
/// ([`SymbolWorker`]).
pub struct StackSymbolizer {
    symbolizer: Symbolizer,
    /// (device, inode, file offset) → symbol; the same file is one entry whichever process
    /// or path reached it.
    symbols: HashMap<(u64, u64, u64), Symbol>,
    /// The files the symbolizer has read through their descriptors: held as long as the
    /// symbolizer may have cached them under `/proc/self/fd/N`, so that the number is not
    /// reused for another file meanwhile.
    files: HashMap<(u64, u64), MappedFile>,
    /// Frames without an open file (a process gone before its files were opened) are read
    /// by path.
    by_path: ByPath,
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StackSymbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackSymbolizer")
            .field("cached_symbols", &self.symbols.len())
            .finish_non_exhaustive()
    }
}

impl StackSymbolizer {
    /// A symbolizer with empty caches.
    pub fn new() -> Self {
        Self {
            symbolizer: new_symbolizer(),
            symbols: HashMap::new(),
            files: HashMap::new(),
            by_path: ByPath::default(),
        }
    }

    /// Fills `sym` and `src` of the frames of `stack` that were normalized but not
    /// symbolized. Frames without an open file are read by path, checking the build ID
    /// ([`symbolize_offline`]).
    pub fn symbolize(&mut self, stack: &mut Normalized) {
        if self.symbols.len() + self.by_path.len() >= CACHE_LIMIT || self.files.len() >= FILES_LIMIT
        {
            // blazesym's own caches grow with every file seen, and each file held open is a
            // descriptor: start afresh.
            *self = Self::new();
        }
        let mut by_path = false;
        let mut inserts = Vec::new();
        for (i, (frame, file)) in stack.frames.iter_mut().zip(&stack.files).enumerate() {
            if !needs_symbol(frame) {
                continue;
            }
            let (Some(file), Some(offset)) = (file, frame.offset) else {
                by_path = true;
                continue;
            };
            let held = self
                .files
                .entry((file.dev, file.ino))
                .or_insert_with(|| file.clone());
            let symbolizer = &self.symbolizer;
            let inlined = self
                .symbols
                .entry((held.dev, held.ino, offset))
                .or_insert_with(|| symbolize_file(symbolizer, &held.path(), offset))
                .apply(frame);
            if !inlined.is_empty() {
                inserts.push((i, inlined));
            }
        }
        insert_inlined(&mut stack.frames, Some(&mut stack.files), inserts);
        if by_path {
            self.by_path
                .symbolize(&self.symbolizer, &mut stack.frames, Some(&mut stack.files));
        }
    }
}

/// Normalizes and symbolizes at once, for callers that can wait for symbols (tests,
/// benchmarks); recording splits the two ([`StackNormalizer`], [`SymbolWorker`]).
#[derive(Debug, Default)]
pub struct StackResolver {
    pub normalizer: StackNormalizer,
    pub symbolizer: StackSymbolizer,
}

impl StackResolver {
    /// A resolver with empty caches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves the user stack `addrs` (innermost first) of the live process `pid`: one
    /// frame per address, in order, each with its symbol or why it has none.
    pub fn resolve(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let mut stack = self.normalizer.normalize(pid, addrs);
        self.symbolizer.symbolize(&mut stack);
        stack.frames
    }
}

/// A stack handed to the [`SymbolWorker`], and handed back symbolized.
#[derive(Debug)]
pub struct Job {
    /// The trace's stack id.
    pub id: u32,
    pub stack: Normalized,
}

/// Symbolizes stacks on a thread of its own, in the order they were submitted, so that a
/// large library being read for the first time never holds up the ring buffer.
#[derive(Debug)]
pub struct SymbolWorker {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Submitted and not yet taken back.
    outstanding: usize,
}

impl SymbolWorker {
    /// Starts the thread.
    pub fn spawn() -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || {
                let mut symbolizer = StackSymbolizer::new();
                for mut job in rx {
                    symbolizer.symbolize(&mut job.stack);
                    if tx.send(job).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            outstanding: 0,
        })
    }

    /// Queues a stack for symbolization; `false` when the thread is gone (the stack then
    /// stays as normalized).
    pub fn submit(&mut self, job: Job) -> bool {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        if sent {
            self.outstanding += 1;
        }
        sent
    }

    /// Stacks submitted and not yet taken back.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// A symbolized stack, if one is ready; never waits.
    pub fn try_done(&mut self) -> Option<Job> {
        match self.done.try_recv() {
            Ok(job) => {
                self.outstanding -= 1;
                Some(job)
            }
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                // The thread is gone (it panicked): what it had will never come back.
                self.outstanding = 0;
                None
            }
        }
    }

    /// The next symbolized stack, waiting for it; `None` when nothing is outstanding (or
    /// the thread is gone).
    pub fn wait_done(&mut self) -> Option<Job> {
        if self.outstanding == 0 {
            return None;
        }
        match self.done.recv() {
            Ok(job) => {
                self.outstanding -= 1;
                Some(job)
            }
            Err(_) => {
                self.outstanding = 0;
                None
            }
        }
    }
}

impl Drop for SymbolWorker {
    fn drop(&mut self) {
        // Hanging up ends the thread's loop once the job in hand is done.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The path that a `/proc/PID/map_files/` link names, without the kernel's ` (deleted)`.
fn mapped_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    let target = target.to_string_lossy();
    Some(
        target
            .strip_suffix(" (deleted)")
            .unwrap_or(&target)
            .to_string(),
    )
}

/// Fills `sym` and `src` of frames that were normalized (file and offset known) but not
/// symbolized, from the files on this machine: for analyzing a trace recorded elsewhere or
/// after the process is gone.
///
/// A frame whose recorded build ID differs from the local file's gets
/// `unknown = "build id mismatch"` rather than a wrong name; a missing file gets
/// `"file not found"`. Frames that already have a symbol or an `unknown` are left alone.
pub fn symbolize_offline(frames: &mut Vec<Frame>) {
    ByPath::default().symbolize(&new_symbolizer(), frames, None::<&mut Vec<()>>);
}

/// What symbolizing by path keeps between frames: each file's local build ID, and the
/// symbols found.
#[derive(Debug, Default)]
struct ByPath {
    local_ids: HashMap<String, Result<Option<String>, ()>>,
    symbols: HashMap<(String, u64), Symbol>,
}

impl ByPath {
    fn len(&self) -> usize {
        self.symbols.len()
    }

    /// [`symbolize_offline`] with `symbolizer` and these caches; `parallel`, one entry per
    /// frame, gets the entry of a frame repeated for the frames inlined there.
    fn symbolize<T: Clone>(
        &mut self,
        symbolizer: &Symbolizer,
        frames: &mut Vec<Frame>,
        parallel: Option<&mut Vec<T>>,
    ) {
        let mut inserts = Vec::new();
        for (i, frame) in frames.iter_mut().enumerate() {
            if frame.sym.is_some() || frame.unknown.is_some() {
                continue;
            }
            let (Some(file), Some(offset)) = (frame.file.clone(), frame.offset) else {
                continue;
            };
            let local = self.local_ids.entry(file.clone()).or_insert_with(|| {
                let path = Path::new(&file);
                if path.is_file() {
                    Ok(crate::probe::libcuda::build_id(path))
                } else {
                    Err(())
                }
            });
            match (&*local, &frame.build_id) {
                (Err(()), _) => {
                    frame.unknown = Some(reason::FILE_MISSING.to_string());
                    continue;
                }
                (Ok(local), Some(recorded)) if local.as_deref() != Some(recorded.as_str()) => {
                    frame.unknown = Some(reason::BUILD_ID_MISMATCH.to_string());
                    continue;
                }
                _ => {}
            }
            let inlined = self
                .symbols
                .entry((file, offset))
                .or_insert_with_key(|(file, offset)| {
                    symbolize_file(symbolizer, Path::new(file), *offset)
                })
                .apply(frame);
            if !inlined.is_empty() {
                inserts.push((i, inlined));
            }
        }
        insert_inlined(frames, parallel, inserts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker(x: u64) -> u64 {
        std::hint::black_box(x.wrapping_mul(3))
    }

    #[inline(never)]
    fn other_marker(x: u64) -> u64 {
        std::hint::black_box(x.wrapping_add(7))
    }

    type Unary = fn(u64) -> u64;

    /// An address inside the function at `f`, as a return address into it would be.
    fn inside(f: usize) -> u64 {
        f as u64 + 1
    }

    fn getpid_addr() -> usize {
        libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize
    }

    fn own_exe() -> String {
        fs::read_link("/proc/self/exe")
            .expect("own exe")
            .to_string_lossy()
            .into_owned()
    }

    /// The file offset that `/proc/self/maps` gives for an address of this process.
    fn maps_offset(addr: u64) -> (String, u64) {
        let maps = fs::read_to_string("/proc/self/maps").expect("own maps");
        for line in maps.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(range), Some(_perms), Some(off)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let path = fields.nth(2).unwrap_or("").to_string();
            let (start, end) = range.split_once('-').expect("range");
            let start = u64::from_str_radix(start, 16).expect("start");
            let end = u64::from_str_radix(end, 16).expect("end");
            let off = u64::from_str_radix(off, 16).expect("offset");
            if (start..end).contains(&addr) {
                return (path, addr - start + off);
            }
        }
        panic!("{addr:#x} is not mapped");
    }

    #[test]
    fn resolves_own_functions() {
        let pid = std::process::id();
        let libc_fn = inside(getpid_addr());
        let addrs = [
            inside(marker as Unary as usize),
            inside(other_marker as Unary as usize),
            libc_fn,
            0x10,
        ];
        let mut resolver = StackResolver::new();
        let frames = resolver.resolve(pid, &addrs);
        assert_eq!(frames.len(), addrs.len());
        for frame in &frames {
            println!("{frame:?}");
        }
        // Both calls agree: the second is answered from the cache.
        assert_eq!(resolver.resolve(pid, &addrs), frames);

        let exe = own_exe();
        for (frame, name) in frames[..2]
            .iter()
            .zip(["stacks::tests::marker", "stacks::tests::other_marker"])
        {
            assert_eq!(frame.file.as_deref(), Some(exe.as_str()));
            assert_eq!(frame.offset, Some(maps_offset(frame.addr).1));
            let sym = frame.sym.as_deref().unwrap_or_default();
            assert!(sym.contains(name), "{sym}");
            assert_eq!(frame.unknown, None);
            let src = frame.src.as_deref().unwrap_or_default();
            assert!(src.contains("stacks/mod.rs:"), "{src}");
            assert!(
                frame.build_id.is_some()
                    || crate::probe::libcuda::build_id(Path::new(&exe)).is_none()
            );
        }

        let libc_frame = &frames[2];
        let (libc_path, libc_offset) = maps_offset(libc_fn);
        assert_eq!(libc_frame.file.as_deref(), Some(libc_path.as_str()));
        assert!(libc_path.contains("libc"), "{libc_path}");
        assert_eq!(libc_frame.offset, Some(libc_offset));
        assert!(
            libc_frame
                .sym
                .as_deref()
                .is_some_and(|s| s.contains("getpid")),
            "{libc_frame:?}"
        );
        assert_eq!(
            libc_frame.build_id,
            crate::probe::libcuda::build_id(Path::new(&libc_path))
        );

        let unmapped = &frames[3];
        assert_eq!(unmapped.addr, 0x10);
        assert_eq!(unmapped.file, None);
        assert_eq!(unmapped.sym, None);
        assert!(unmapped.unknown.is_some());
    }

    /// A child that exits at once (`true`), not yet waited for.
    fn short_child() -> (std::process::Child, u32) {
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        (child, pid)
    }

    #[test]
    fn an_exited_process_gives_unknown_frames() {
        let (mut child, pid) = short_child();
        child.wait().expect("wait");
        let frames = StackResolver::new().resolve(pid, &[0x1000, 0x2000]);
        assert_eq!(frames.len(), 2);
        for frame in &frames {
            assert_eq!(frame.unknown.as_deref(), Some(reason::PROCESS_EXITED));
        }
        assert!(StackResolver::new().resolve(pid, &[]).is_empty());
    }

    /// A process first read as a zombie has no mappings: nothing is kept for it, and once
    /// it is gone its frames say that it exited, not that they lay in no mapping it had.
    #[test]
    fn a_process_read_as_it_exits_leaves_no_empty_snapshot() {
        let (mut child, pid) = short_child();
        let zombie = || {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with('Z')))
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie() {
            assert!(std::time::Instant::now() < deadline, "{pid} never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut normalizer = StackNormalizer::new();
        normalizer.remember(pid);
        child.wait().expect("wait");
        let n = normalizer.normalize(pid, &[0x1000, 0x2000]);
        assert_eq!(n.frames.len(), 2);
        for frame in &n.frames {
            assert_eq!(frame.unknown.as_deref(), Some(reason::PROCESS_EXITED));
        }
    }

    #[test]
    fn offline_symbolization_checks_build_ids() {
        let addrs = [inside(marker as Unary as usize), inside(getpid_addr())];
        let frames = StackResolver::new().resolve(std::process::id(), &addrs);
        // As a trace would carry them: normalized, not symbolized.
        let strip = |f: &Frame| Frame {
            sym: None,
            src: None,
            ..f.clone()
        };
        let mut offline: Vec<Frame> = frames.iter().map(strip).collect();
        symbolize_offline(&mut offline);
        assert_eq!(offline, frames);

        let mut wrong = strip(&frames[1]);
        wrong.build_id = Some("00".repeat(20));
        let mut missing = strip(&frames[1]);
        missing.file = Some("/nonexistent/libc.so.6".to_string());
        let mut already = frames[0].clone();
        already.unknown = None;
        let mut batch = vec![
            wrong,
            missing,
            already.clone(),
            Frame {
                addr: 0x10,
                ..Frame::default()
            },
        ];
        symbolize_offline(&mut batch);
        assert_eq!(batch[0].unknown.as_deref(), Some(reason::BUILD_ID_MISMATCH));
        assert_eq!(batch[0].sym, None);
        assert_eq!(batch[1].unknown.as_deref(), Some(reason::FILE_MISSING));
        assert_eq!(batch[2], already);
        assert_eq!(
            batch[3],
            Frame {
                addr: 0x10,
                ..Frame::default()
            }
        );
    }

    /// Normalized while the process lives, symbolized on the worker after it is gone and
    /// its file deleted: the descriptor opened at normalization still reaches the file.
    #[test]
    fn the_worker_symbolizes_after_the_process_and_its_file_are_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("sleep");
        fs::copy("/usr/bin/sleep", &copy).expect("copy sleep");
        let mut child = std::process::Command::new(&copy)
            .arg("30")
            .spawn()
            .expect("spawn the copy of sleep");
        let pid = child.id();
        // An address in the copy's first executable mapping, once it is mapped.
        let mut addr = None;
        for _ in 0..200 {
            let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            addr = parse_maps(&maps)
                .iter()
                .find(|m| Path::new(&m.path) == copy)
                .map(|m| m.start + 0x10);
            if addr.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let addr = addr.expect("sleep maps its executable");
        let mut normalizer = StackNormalizer::new();
        let stack = normalizer.normalize(pid, &[addr]);
        let _ = child.kill();
        let _ = child.wait();
        fs::remove_file(&copy).expect("delete the copy");
        drop(normalizer);
        assert!(stack.needs_symbols(), "{stack:?}");
        assert!(stack.files[0].is_some(), "{stack:?}");

        let mut worker = SymbolWorker::spawn().expect("worker");
        worker.submit(Job { id: 7, stack });
        assert_eq!(worker.outstanding(), 1);
        let done = worker.wait_done().expect("symbolized");
        assert_eq!(done.id, 7);
        assert_eq!(worker.wait_done().map(|j| j.id), None);
        let frame = &done.stack.frames[0];
        println!("{frame:?}");
        assert_eq!(frame.file.as_deref(), copy.to_str());
        // Read from the file (a stripped binary may have no symbol there: then the reason
        // is the symbolizer's, not a missing file).
        assert!(
            frame.sym.is_some()
                || frame
                    .unknown
                    .as_deref()
                    .is_some_and(|u| u != reason::FILE_MISSING && u != reason::PROCESS_EXITED),
            "{frame:?}"
        );
    }

    /// A process with its own root (as in a container) that maps a libc which is then
    /// deleted: no path reaches it any more, only the mapping. Needs root for `chroot`, as
    /// the tracer needs it.
    #[test]
    fn resolves_a_deleted_file_mapped_by_a_chrooted_process() {
        let host_libc = fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").expect("host libc");
        let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("host ld.so");
        let root = tempfile::tempdir().expect("tempdir");
        for (from, to) in [
            (Path::new("/usr/bin/sleep"), "sleep"),
            (loader.as_path(), "lib64/ld-linux-x86-64.so.2"),
            (host_libc.as_path(), "onlyhere/libc.so.6"),
        ] {
            let to = root.path().join(to);
            fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            fs::copy(from, &to).expect("copy");
        }
        let mut child = std::process::Command::new("chroot")
            .arg(root.path())
            .args([
                "/lib64/ld-linux-x86-64.so.2",
                "--library-path",
                "/onlyhere",
                "/sleep",
                "30",
            ])
            .spawn()
            .expect("spawn chroot");
        let pid = child.id();
        let result = std::panic::catch_unwind(|| {
            // getpid's offset in libc, from this process's own copy of the same file.
            let (_, getpid_offset) = maps_offset(inside(getpid_addr()));
            let mut addr = None;
            for _ in 0..200 {
                let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
                addr = maps.lines().find_map(|line| {
                    let f: Vec<&str> = line.split_ascii_whitespace().collect();
                    if f.len() < 6 || !f[5].ends_with("/onlyhere/libc.so.6") {
                        return None;
                    }
                    let (start, end) = f[0].split_once('-')?;
                    let start = u64::from_str_radix(start, 16).ok()?;
                    let end = u64::from_str_radix(end, 16).ok()?;
                    let off = u64::from_str_radix(f[2], 16).ok()?;
                    (off..off + (end - start))
                        .contains(&getpid_offset)
                        .then(|| start + getpid_offset - off)
                });
                if addr.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let addr =
                addr.expect("the chrooted sleep maps /onlyhere/libc.so.6 (chroot needs root)");
            let copy = root.path().join("onlyhere/libc.so.6");
            fs::remove_file(&copy).expect("delete the mapped copy");
            let frames = StackResolver::new().resolve(pid, &[addr]);
            let frame = &frames[0];
            println!("{frame:?}");
            assert_eq!(frame.file.as_deref(), copy.to_str());
            assert_eq!(frame.offset, Some(getpid_offset));
            assert_eq!(frame.build_id, crate::probe::libcuda::build_id(&host_libc));
            assert!(
                frame.sym.as_deref().is_some_and(|s| s.contains("getpid")),
                "{frame:?}"
            );
        });
        let _ = child.kill();
        let _ = child.wait();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
