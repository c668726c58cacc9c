//! Normalizes user stacks at record time and symbolizes them, then or later.
//!
//! A stack captured in the kernel is a list of virtual addresses, meaningful only while the
//! process lives and keeps its mappings. At record time each address is normalized to (file,
//! build ID, file offset), which stays meaningful after the process is gone and on another
//! machine ([`symbolize_offline`]). Symbolization fills the function name and source line.
//! Failing at either step is data ([`Frame::unknown`]), never an error (blazesym's model).
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
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use blazesym::normalize::{self, NormalizeOpts, Normalizer, UserMeta};
use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::{ErrorKind, Pid};

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

/// What symbolization found for one (file, offset).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Symbol {
    Found {
        sym: String,
        src: Option<String>,
    },
    Unknown(String),
    /// Not looked up yet.
    Pending,
}

impl Symbol {
    fn apply(&self, frame: &mut Frame) {
        match self {
            Symbol::Found { sym, src } => {
                frame.sym = Some(sym.clone());
                frame.src = src.clone();
            }
            Symbol::Unknown(reason) => frame.unknown = Some(reason.clone()),
            Symbol::Pending => {}
        }
    }
}

/// Symbolizes `offset` (a return address's file offset) in the ELF file at `path`.
fn symbolize_file(symbolizer: &Symbolizer, path: &Path, offset: u64) -> Symbol {
    let src = Source::Elf(Elf::new(path));
    // The byte before a return address is inside the call instruction.
    let lookup = offset.saturating_sub(1);
    match symbolizer.symbolize_single(&src, Input::FileOffset(lookup)) {
        Ok(Symbolized::Sym(sym)) => {
            let src = sym.code_info.as_ref().map(|info| {
                let file = info.to_path();
                match info.line {
                    Some(line) => format!("{}:{line}", file.display()),
                    None => file.display().to_string(),
                }
            });
            Symbol::Found {
                sym: sym.name.into_owned(),
                src,
            }
        }
        Ok(Symbolized::Unknown(reason)) => Symbol::Unknown(reason.to_string()),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            Symbol::Unknown(reason::FILE_MISSING.to_string())
        }
        Err(err) => Symbol::Unknown(format!("symbolization failed: {err}")),
    }
}

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        // A frame has one name and one line; inlined callees have no field of their own.
        .enable_inlined_fns(false)
        .enable_demangling(true)
        .build()
}

/// Normalizes and symbolizes the stacks of live processes, with caches that make repeated
/// stacks cheap.
///
/// Files are reached through `/proc/PID/map_files/`, which names exactly the file the process
/// mapped, whatever its mount namespace or root (a container, a chroot) and even when the
/// file was replaced on disk since. The path recorded in [`Frame::file`] is that link's
/// target: the path the kernel gives for the file (for a container process, the path inside
/// the container).
pub struct StackResolver {
    normalizer: Normalizer,
    symbolizer: Symbolizer,
    /// (device, inode, file offset) → symbol; the same file is one entry whichever process
    /// or path reached it.
    symbols: HashMap<(u64, u64, u64), Symbol>,
    /// The file mappings of each process, read when it was first seen: stacks of a process
    /// that exits before they are resolved (a crash right after an OOM, a short job) are
    /// normalized from here.
    maps: HashMap<u32, Vec<MapsFile>>,
    /// Build IDs of files reached through a maps snapshot.
    build_ids: HashMap<String, Option<String>>,
}

impl Default for StackResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StackResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackResolver")
            .field("cached_symbols", &self.symbols.len())
            .finish_non_exhaustive()
    }
}

impl StackResolver {
    /// A resolver with empty caches.
    pub fn new() -> Self {
        Self {
            normalizer: Normalizer::builder()
                .enable_build_ids(true)
                .enable_build_id_caching(true)
                .build(),
            symbolizer: new_symbolizer(),
            symbols: HashMap::new(),
            maps: HashMap::new(),
            build_ids: HashMap::new(),
        }
    }

    /// Reads and keeps the file mappings of `pid` (a process seen for the first time), so
    /// that its stacks can be normalized even after it has exited.
    pub fn remember(&mut self, pid: u32) {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) {
            self.maps.insert(pid, parse_maps(&text));
        }
    }

    /// Forgets what [`remember`](Self::remember) kept for `pid` (its exit was processed).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
    }

    /// Normalizes from the snapshot of a process that is gone, symbolizing from the files on
    /// this machine. `None` when there is no snapshot.
    fn resolve_from_snapshot(&mut self, pid: u32, addrs: &[u64]) -> Option<Vec<Frame>> {
        let maps = self.maps.get(&pid)?;
        let mut frames: Vec<Frame> = addrs
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
        symbolize_offline(&mut frames);
        Some(frames)
    }

    /// Resolves the user stack `addrs` (innermost first) of the live process `pid`.
    ///
    /// Returns one frame per address, in order. A frame that cannot be normalized or
    /// symbolized carries the reason in `unknown`; if the process is gone, every frame says
    /// "process exited".
    pub fn resolve(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let unknown = |addr: u64, reason: &str| Frame {
            addr,
            unknown: Some(reason.to_string()),
            ..Frame::default()
        };
        if addrs.is_empty() {
            return Vec::new();
        }
        // PID 0 would mean "this process" to blazesym.
        if pid == 0 || !procinfo::process_exists(pid) {
            if let Some(frames) = self.resolve_from_snapshot(pid, addrs) {
                return frames;
            }
            return addrs
                .iter()
                .map(|&a| unknown(a, reason::PROCESS_EXITED))
                .collect();
        }
        if self.symbols.len() >= CACHE_LIMIT {
            // blazesym's own caches grow with every file and path seen; start afresh.
            *self = Self::new();
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
                if let Some(frames) = self.resolve_from_snapshot(pid, addrs) {
                    return frames;
                }
                let gone = err.kind() == ErrorKind::NotFound || !procinfo::process_exists(pid);
                let reason = if gone {
                    reason::PROCESS_EXITED.to_string()
                } else {
                    format!("normalization failed: {err}")
                };
                return addrs.iter().map(|&a| unknown(a, &reason)).collect();
            }
        };

        // map_files path → the path it names, read once per mapping.
        let mut names: HashMap<&Path, Option<String>> = HashMap::new();
        let mut frames = Vec::with_capacity(addrs.len());
        for (&addr, &(offset, meta_idx)) in addrs.iter().zip(&output.outputs) {
            let mut frame = Frame {
                addr,
                ..Frame::default()
            };
            match output.meta.get(meta_idx) {
                Some(UserMeta::Elf(elf)) => {
                    frame.file = names
                        .entry(elf.path.as_path())
                        .or_insert_with(|| mapped_name(&elf.path))
                        .clone();
                    frame.offset = Some(offset);
                    frame.build_id = elf.build_id.as_deref().map(hex::encode);
                    let symbol = match fs::metadata(&elf.path) {
                        Ok(meta) => self
                            .symbols
                            .entry((meta.dev(), meta.ino(), offset))
                            .or_insert_with(|| symbolize_file(&self.symbolizer, &elf.path, offset))
                            .clone(),
                        // The process went away since normalization: the file is read from
                        // its path below instead.
                        Err(_) => Symbol::Pending,
                    };
                    symbol.apply(&mut frame);
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
            frames.push(frame);
        }
        if frames
            .iter()
            .any(|f| f.offset.is_some() && f.sym.is_none() && f.unknown.is_none())
        {
            // The process exited between normalization and symbolization: name the files
            // from the snapshot when the map_files links are gone, and read them by path.
            if let Some(maps) = self.maps.get(&pid) {
                for f in frames
                    .iter_mut()
                    .filter(|f| f.file.is_none() && f.offset.is_some())
                {
                    f.file = maps
                        .iter()
                        .find(|m| m.start <= f.addr && f.addr < m.end)
                        .map(|m| m.path.clone());
                }
            }
            symbolize_offline(&mut frames);
        }
        frames
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
pub fn symbolize_offline(frames: &mut [Frame]) {
    let symbolizer = new_symbolizer();
    // Per file: its local build ID, read once.
    let mut local_ids: HashMap<String, Result<Option<String>, ()>> = HashMap::new();
    let mut cache: HashMap<(String, u64), Symbol> = HashMap::new();
    for frame in frames.iter_mut() {
        if frame.sym.is_some() || frame.unknown.is_some() {
            continue;
        }
        let (Some(file), Some(offset)) = (frame.file.clone(), frame.offset) else {
            continue;
        };
        let local = local_ids.entry(file.clone()).or_insert_with(|| {
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
        cache
            .entry((file, offset))
            .or_insert_with_key(|(file, offset)| {
                symbolize_file(&symbolizer, Path::new(file), *offset)
            })
            .apply(frame);
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
            assert!(src.contains("stacks.rs:"), "{src}");
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

    #[test]
    fn an_exited_process_gives_unknown_frames() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        let frames = StackResolver::new().resolve(pid, &[0x1000, 0x2000]);
        assert_eq!(frames.len(), 2);
        for frame in &frames {
            assert_eq!(frame.unknown.as_deref(), Some(reason::PROCESS_EXITED));
        }
        assert!(StackResolver::new().resolve(pid, &[]).is_empty());
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
        let mut batch = [
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
