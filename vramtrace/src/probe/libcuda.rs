//! Finds the CUDA driver library (`libcuda.so.1`) and the entry points it exports.
//!
//! The probes go on NVIDIA's exported symbols, so the first job is to find every copy of the
//! library that a traced process may load: where the dynamic loader would look, and, for a
//! running process, what it has actually mapped (reached through `/proc/PID/map_files/`, which
//! names exactly the mapped file, in a container too) or, when it has not loaded the driver
//! yet, where its loader would look inside its own root (opened with every link resolved in
//! that root, never in ours). Uprobes are per inode, so copies are deduplicated by (device,
//! inode).
//!
//! The second job is to list each entry point's exported variants (`cuMemAlloc`,
//! `cuMemAlloc_v2`, `cuMemAllocAsync_ptsz`, ...): CUDA 12 runtimes call through
//! `cuGetProcAddress`, which hands out exactly these exported addresses (see DESIGN.md,
//! "The hooking surface"), so every variant must be hooked.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader as _, ProgramHeader as _, Sym as _};
use object::{Architecture, Endianness, Object as _, ObjectSymbol as _};

/// The driver's soname: what the loader opens for a CUDA program.
pub const SONAME: &str = "libcuda.so.1";

/// An exported function of the driver library.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExportedFn {
    /// Symbol name, e.g. `cuMemAlloc_v2`.
    pub name: String,
    /// Offset of the first instruction in the file: what a uprobe is attached at.
    pub file_offset: u64,
    /// Virtual address in the ELF file (unrelocated).
    pub vaddr: u64,
    /// Symbol size in bytes (0 when the symbol table does not say).
    pub size: u64,
}

/// One copy of the driver library that probes can be attached to.
#[derive(Clone, Debug)]
pub struct Library {
    /// Path to attach to: canonical on the host; `/proc/PID/map_files/...` for the copy a
    /// process maps; `/proc/self/fd/N` for a copy found inside a process's root, valid while
    /// [`Library::file`] is held.
    pub path: PathBuf,
    /// The file, held open when `path` names it through this process's descriptor: keep the
    /// `Library` until the probes are attached.
    pub file: Option<Arc<fs::File>>,
    /// GNU build ID, hex.
    pub build_id: Option<String>,
    /// (device, inode) of the file: uprobes are per inode, so this identifies the copy.
    pub dev_ino: (u64, u64),
    /// Every exported function, in symbol-table order.
    pub symbols: Vec<ExportedFn>,
    /// Where it was found, for logs and error messages (`ld.so cache`, `PID 4242 maps`, ...).
    pub found_by: String,
    /// The name to show for it (trace header, messages): `path` for a file found in this
    /// process's root, else the path as the traced process names it, and whose it is
    /// (`/usr/lib/x86_64-linux-gnu/libcuda.so.1 (mapped by PID 4242)`).
    pub shown: String,
}

/// Why an ELF file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("reading {} failed", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The file is not a 64-bit ELF file.
    #[error("{} is not a 64-bit ELF file", path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: object::Error,
    },
    /// The file is an ELF file for another machine.
    #[error("{} is built for {found:?}, not for this machine ({expected:?})", path.display())]
    WrongArchitecture {
        /// The file.
        path: PathBuf,
        /// Its architecture.
        found: Architecture,
        /// This machine's.
        expected: Architecture,
    },
}

/// Why no driver library could be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A path given with `--libcuda` does not exist or cannot be opened.
    #[error("the driver library {} given with --libcuda cannot be opened", path.display())]
    Missing {
        /// The path as given.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A path given with `--libcuda` is not a usable library.
    #[error("the driver library {} given with --libcuda is not usable", path.display())]
    Unusable {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: ElfError,
    },
    /// Nothing was found anywhere.
    #[error("{}", not_found_message(searched))]
    NotFound {
        /// Every place that was looked at, with what was found there.
        searched: Vec<String>,
    },
}

fn not_found_message(searched: &[String]) -> String {
    let mut msg = format!(
        "no NVIDIA driver library ({SONAME}) found. Install the driver, or name the \
         library with --libcuda PATH. Looked in:"
    );
    for place in searched {
        msg.push_str("\n  - ");
        msg.push_str(place);
    }
    msg
}

/// The architecture of this build: only libraries for it can be loaded by local processes.
fn host_architecture() -> Architecture {
    if cfg!(target_arch = "x86_64") {
        Architecture::X86_64
    } else if cfg!(target_arch = "aarch64") {
        Architecture::Aarch64
    } else {
        Architecture::Unknown
    }
}

/// The Debian-style multiarch directory name of this machine.
const MULTIARCH: &str = if cfg!(target_arch = "aarch64") {
    "aarch64-linux-gnu"
} else {
    "x86_64-linux-gnu"
};

/// What `ldconfig -p` prints for this machine's libraries: `(libc6,x86-64)`.
fn ldconfig_arch_tag() -> Option<&'static str> {
    if cfg!(target_arch = "x86_64") {
        Some("x86-64")
    } else if cfg!(target_arch = "aarch64") {
        Some("AArch64")
    } else {
        None
    }
}

/// Directories where distributions and NVIDIA's installers put the driver library, after
/// the ld.so cache and `LD_LIBRARY_PATH`. The CUDA toolkit's `.../stubs` copy is a link-time
/// stand-in with no driver behind it, so it is never one of these.
fn usual_dirs() -> Vec<PathBuf> {
    [
        format!("/usr/lib/{MULTIARCH}"),
        "/usr/lib64".to_string(),
        "/usr/lib".to_string(),
        format!("/lib/{MULTIARCH}"),
        "/lib64".to_string(),
        "/usr/local/nvidia/lib64".to_string(),
        "/usr/local/nvidia/lib".to_string(),
        "/usr/lib/wsl/lib".to_string(),
        format!("/run/nvidia/driver/usr/lib/{MULTIARCH}"),
        "/run/nvidia/driver/usr/lib64".to_string(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// True for a CUDA toolkit stub library (`.../stubs/libcuda.so`): it exports the API but has
/// no driver behind it, so probing it would trace nothing.
fn is_stub(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c, Component::Normal(s) if s == "stubs"))
}

/// A place that may hold the library, and how it was found.
struct Candidate {
    path: PathBuf,
    found_by: String,
    /// The name to show, when it is not `path` (see [`Library::shown`]).
    shown: Option<String>,
    /// Keep this path as is: it is a `/proc` link to one file, which canonicalizing would
    /// follow to a name in another mount namespace.
    keep_path: bool,
    /// The file already opened (inside a process's root); `path` names it through our
    /// descriptor.
    file: Option<Arc<fs::File>>,
}

impl Candidate {
    /// A path in this process's root, resolved as the loader would.
    fn host(path: PathBuf, found_by: &str) -> Self {
        Candidate {
            path,
            found_by: found_by.to_string(),
            shown: None,
            keep_path: false,
            file: None,
        }
    }
}

/// Finds the driver libraries to attach to.
///
/// With `explicit` paths, exactly those are used, and each must be a readable ELF library
/// for this machine. Otherwise the libraries are gathered from where the dynamic loader
/// looks (the ld.so cache, `LD_LIBRARY_PATH`, the usual driver directories) and from what
/// the processes in `pids` have mapped, deduplicated by (device, inode).
pub fn discover(explicit: &[PathBuf], pids: &[u32]) -> Result<Vec<Library>, DiscoverError> {
    if !explicit.is_empty() {
        return explicit.iter().map(|path| open_explicit(path)).collect();
    }

    let mut searched = Vec::new();
    let mut candidates = Vec::new();
    ld_cache_candidates(&mut candidates, &mut searched);
    match std::env::var_os("LD_LIBRARY_PATH") {
        Some(value) if !value.is_empty() => {
            for dir in std::env::split_paths(&value).filter(|d| !d.as_os_str().is_empty()) {
                candidates.push(Candidate::host(dir.join(SONAME), "LD_LIBRARY_PATH"));
            }
        }
        _ => searched.push("LD_LIBRARY_PATH: not set".to_string()),
    }
    for dir in usual_dirs() {
        candidates.push(Candidate::host(dir.join(SONAME), "driver directory"));
    }
    for &pid in pids {
        mapped_candidates(pid, &mut candidates, &mut searched);
    }

    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for candidate in candidates {
        let shown = candidate.path.display();
        if is_stub(&candidate.path) {
            searched.push(format!(
                "{shown} ({}): a CUDA toolkit stub, skipped",
                candidate.found_by
            ));
            continue;
        }
        let meta = match candidate
            .file
            .as_ref()
            .map_or_else(|| fs::metadata(&candidate.path), |file| file.metadata())
        {
            Ok(meta) => meta,
            Err(err) => {
                searched.push(format!("{shown} ({}): {err}", candidate.found_by));
                continue;
            }
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let path = if candidate.keep_path {
            candidate.path.clone()
        } else {
            fs::canonicalize(&candidate.path).unwrap_or_else(|_| candidate.path.clone())
        };
        if is_stub(&path) {
            searched.push(format!(
                "{shown} ({}): links to the stub {}, skipped",
                candidate.found_by,
                path.display()
            ));
            continue;
        }
        match inspect(&path) {
            Ok((build_id, symbols)) => {
                searched.push(format!("{shown} ({}): found", candidate.found_by));
                found.push(Library {
                    shown: candidate
                        .shown
                        .unwrap_or_else(|| path.display().to_string()),
                    path,
                    file: candidate.file,
                    build_id,
                    dev_ino: (meta.dev(), meta.ino()),
                    symbols,
                    found_by: candidate.found_by,
                });
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %ErrorChain(&err), "skipping a driver library candidate");
                searched.push(format!(
                    "{shown} ({}): {}",
                    candidate.found_by,
                    ErrorChain(&err)
                ));
            }
        }
    }
    if found.is_empty() {
        return Err(DiscoverError::NotFound { searched });
    }
    Ok(found)
}

/// Displays an error with its sources, for the one-line notes of the search.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

fn open_explicit(path: &Path) -> Result<Library, DiscoverError> {
    let meta = fs::metadata(path).map_err(|source| DiscoverError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    let canonical = fs::canonicalize(path).map_err(|source| DiscoverError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    let (build_id, symbols) = inspect(&canonical).map_err(|source| DiscoverError::Unusable {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Library {
        shown: canonical.display().to_string(),
        path: canonical,
        file: None,
        build_id,
        dev_ino: (meta.dev(), meta.ino()),
        symbols,
        found_by: "--libcuda".to_string(),
    })
}

/// Adds the ld.so cache's `libcuda.so*` entries for this machine's architecture.
fn ld_cache_candidates(candidates: &mut Vec<Candidate>, searched: &mut Vec<String>) {
    let entries = match ldconfig_entries() {
        Ok(entries) => entries,
        Err(ldconfig_err) => match fs::read(LD_SO_CACHE) {
            Ok(bytes) => match parse_ld_so_cache(&bytes) {
                Some(entries) => entries,
                None => {
                    searched.push(format!(
                        "ld.so cache: {ldconfig_err}; {LD_SO_CACHE} has an unknown format"
                    ));
                    return;
                }
            },
            Err(err) => {
                searched.push(format!("ld.so cache: {ldconfig_err}; {LD_SO_CACHE}: {err}"));
                return;
            }
        },
    };
    let mut any = false;
    for entry in entries {
        if entry.name.starts_with("libcuda.so") && entry.for_this_machine() {
            any = true;
            candidates.push(Candidate::host(PathBuf::from(entry.path), "ld.so cache"));
        }
    }
    if !any {
        searched.push("ld.so cache: no libcuda.so entry".to_string());
    }
}

/// The system's ld.so cache file.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// One library of the ld.so cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LdCacheEntry {
    /// The soname, e.g. `libcuda.so.1`.
    pub name: String,
    /// The architecture tag as `ldconfig -p` shows it, e.g. `x86-64`; empty when unknown.
    pub arch: String,
    /// Where the file is.
    pub path: String,
}

impl LdCacheEntry {
    fn for_this_machine(&self) -> bool {
        match ldconfig_arch_tag() {
            Some(tag) => self.arch == tag,
            None => true,
        }
    }
}

/// Runs `ldconfig -p`, the loader's own view of its cache.
fn ldconfig_entries() -> Result<Vec<LdCacheEntry>, String> {
    let mut last_err = String::from("ldconfig not found");
    for ldconfig in ["/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        match Command::new(ldconfig).arg("-p").output() {
            Ok(out) if out.status.success() => {
                return Ok(parse_ldconfig_output(&String::from_utf8_lossy(&out.stdout)));
            }
            Ok(out) => last_err = format!("{ldconfig} -p failed ({})", out.status),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => last_err = format!("{ldconfig} -p: {err}"),
        }
    }
    Err(last_err)
}

/// Parses `ldconfig -p` output: `\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/.../libcuda.so.1`.
pub fn parse_ldconfig_output(text: &str) -> Vec<LdCacheEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.trim().split_once(" => ")?;
            let (name, flags) = left.split_once(" (")?;
            let flags = flags.strip_suffix(')')?;
            // "libc6,x86-64" or "libc6,x86-64, hwcap: 0x..., OS ABI: Linux 3.2.0".
            let arch = flags.split(',').nth(1).unwrap_or("").trim().to_string();
            Some(LdCacheEntry {
                name: name.to_string(),
                arch,
                path: path.to_string(),
            })
        })
        .collect()
}

/// Parses the binary `/etc/ld.so.cache` in glibc's "new" format (`glibc-ld.so.cache1.1`,
/// the only one written since glibc 2.32; older files carry it after the old-format
/// table). Layout from glibc's `sysdeps/generic/dl-cache.h`. `None` when the format is not
/// recognized.
pub fn parse_ld_so_cache(bytes: &[u8]) -> Option<Vec<LdCacheEntry>> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    let start = bytes.windows(MAGIC.len()).position(|w| w == MAGIC)?;
    let cache = &bytes[start..];
    let u32_at = |off: usize| -> Option<u32> {
        let b = cache.get(off..off + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    };
    let nlibs = usize::try_from(u32_at(20)?).ok()?;
    let cstr_at = |off: u32| -> Option<String> {
        let s = cache.get(usize::try_from(off).ok()?..)?;
        let end = s.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    let mut entries = Vec::new();
    for i in 0..nlibs {
        let off = HEADER.checked_add(i.checked_mul(ENTRY)?)?;
        let flags = u32_at(off)?;
        let name = cstr_at(u32_at(off + 4)?)?;
        let path = cstr_at(u32_at(off + 8)?)?;
        // Type in the low byte (libc6 = 3), architecture in the next (dl-cache.h FLAG_*).
        let arch = match flags & 0xff00 {
            0x0300 => "x86-64",
            0x0a00 => "AArch64",
            0x0800 => "x32",
            _ => "",
        };
        entries.push(LdCacheEntry {
            name,
            arch: arch.to_string(),
            path,
        });
    }
    Some(entries)
}

/// Adds the `libcuda.so*` files mapped by `pid`, each through `/proc/PID/map_files/`: the
/// mapping reaches exactly the file the process runs, in a container, a chroot or after the
/// file was replaced on disk, and no path is resolved on the way. (The path that
/// `/proc/PID/maps` shows is the file's name in the process's mount namespace or in ours,
/// whichever reaches it; opened in our root, or under `/proc/PID/root`, any absolute link on
/// it would resolve in our root, to another file or to one of the host's that the process
/// chose.) A process that maps none yet is searched where its loader would look, inside its
/// own root ([`root_candidates`]).
fn mapped_candidates(pid: u32, candidates: &mut Vec<Candidate>, searched: &mut Vec<String>) {
    let maps_path = format!("/proc/{pid}/maps");
    let text = match fs::read_to_string(&maps_path) {
        Ok(text) => text,
        Err(err) => {
            searched.push(format!("{maps_path}: {err}"));
            return;
        }
    };
    let mut any = false;
    let mut seen = HashSet::new();
    for mapping in parse_maps(&text) {
        let is_libcuda = Path::new(&mapping.path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libcuda.so"));
        if !is_libcuda || !seen.insert(mapping.path.clone()) {
            continue;
        }
        any = true;
        if is_stub(Path::new(&mapping.path)) {
            searched.push(format!(
                "{maps_path}: maps the CUDA toolkit stub {}, skipped",
                crate::procinfo::sanitize(&mapping.path)
            ));
            continue;
        }
        candidates.push(Candidate {
            path: PathBuf::from(format!("/proc/{pid}/map_files/{}", mapping.range)),
            found_by: format!(
                "mapped by PID {pid} as {}",
                crate::procinfo::sanitize(&mapping.path)
            ),
            shown: Some(format!(
                "{} (mapped by PID {pid})",
                crate::procinfo::sanitize(&mapping.path)
            )),
            keep_path: true,
            file: None,
        });
    }
    if !any {
        searched.push(format!("{maps_path}: no libcuda.so mapped (yet)"));
        match crate::procinfo::root_of(pid) {
            Ok(root) => root_candidates(&root, &format!("PID {pid}'s root"), candidates, searched),
            Err(err) => searched.push(format!("/proc/{pid}/root: {err}")),
        }
    }
}

/// Adds the copies of the library that the loader of a process whose root is `root` would
/// find: the entries of that root's ld.so cache, then the usual driver directories. Each path
/// is opened inside `root` ([`crate::procinfo::open_beneath`]): an absolute link in it (an
/// image's `libcuda.so.1 -> /usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05`, `/usr/lib64 ->
/// /usr/lib`) resolves in that root as it does for the process, and no link leads out of it.
/// The open file is what the probes are attached to, through our descriptor, so the copy
/// cannot be swapped between this look and the attachment.
fn root_candidates(
    root: &fs::File,
    name: &str,
    candidates: &mut Vec<Candidate>,
    searched: &mut Vec<String>,
) {
    let mut paths: Vec<(PathBuf, &str)> = Vec::new();
    match crate::procinfo::open_beneath(root, Path::new(LD_SO_CACHE)) {
        Ok(mut file) => {
            let mut bytes = Vec::new();
            match io::Read::read_to_end(&mut file, &mut bytes) {
                Ok(_) => match parse_ld_so_cache(&bytes) {
                    Some(entries) => paths.extend(
                        entries
                            .into_iter()
                            .filter(|e| e.name.starts_with("libcuda.so") && e.for_this_machine())
                            .map(|e| (PathBuf::from(e.path), "ld.so cache")),
                    ),
                    None => searched.push(format!("{LD_SO_CACHE} in {name}: an unknown format")),
                },
                Err(err) => searched.push(format!("{LD_SO_CACHE} in {name}: {err}")),
            }
        }
        Err(err) => searched.push(format!("{LD_SO_CACHE} in {name}: {err}")),
    }
    paths.extend(
        usual_dirs()
            .into_iter()
            .map(|dir| (dir.join(SONAME), "driver directory")),
    );
    for (path, how) in paths {
        let found_by = format!("{how} in {name}: {}", path.display());
        if is_stub(&path) {
            searched.push(format!("{found_by}: a CUDA toolkit stub, skipped"));
            continue;
        }
        match crate::procinfo::open_beneath(root, &path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => {
                let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
                if fs::read_link(&by_fd).is_ok_and(|target| is_stub(&target)) {
                    searched.push(format!("{found_by}: links to a CUDA toolkit stub, skipped"));
                    continue;
                }
                candidates.push(Candidate {
                    path: by_fd,
                    shown: Some(format!("{} (in {name})", path.display())),
                    found_by,
                    keep_path: true,
                    file: Some(Arc::new(file)),
                });
            }
            Ok(_) => searched.push(format!("{found_by}: not a regular file")),
            Err(err) => searched.push(format!("{found_by}: {err}")),
        }
    }
}

/// A file-backed line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsFile {
    /// `start-end`, hex, as in `/proc/PID/map_files/`.
    pub range: String,
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// The file's path in the process's mount namespace, without ` (deleted)`.
    pub path: String,
    /// The file was deleted or replaced after it was mapped.
    pub deleted: bool,
    /// The mapping is executable.
    pub exec: bool,
}

/// Parses the file-backed mappings of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Vec<MapsFile> {
    text.lines()
        .filter_map(|line| {
            // address perms offset dev inode [padding] pathname; the pathname may have spaces.
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let exec = fields.next()?.contains('x');
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let path = fields.nth(2)?.trim_start();
            if !path.starts_with('/') {
                return None;
            }
            let (path, deleted) = match path.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (path, false),
            };
            Some(MapsFile {
                range: range.to_string(),
                start,
                end,
                offset,
                path: path.to_string(),
                deleted,
                exec,
            })
        })
        .collect()
}

fn read_elf(path: &Path) -> Result<Vec<u8>, ElfError> {
    fs::read(path).map_err(|source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_elf<'d>(path: &Path, data: &'d [u8]) -> Result<ElfFile64<'d, Endianness>, ElfError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|source| ElfError::NotElf {
        path: path.to_path_buf(),
        source,
    })?;
    let expected = host_architecture();
    let found = file.architecture();
    if expected != Architecture::Unknown && found != expected {
        return Err(ElfError::WrongArchitecture {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    Ok(file)
}

/// Build ID and exports, from one read of the file.
fn inspect(path: &Path) -> Result<(Option<String>, Vec<ExportedFn>), ElfError> {
    let data = read_elf(path)?;
    let file = parse_elf(path, &data)?;
    Ok((build_id_of(&file), exports_of(&file)))
}

fn build_id_of(file: &ElfFile64<'_, Endianness>) -> Option<String> {
    file.build_id().ok().flatten().map(hex::encode)
}

/// The GNU build ID of an ELF file, hex; `None` when it has none or cannot be read.
pub fn build_id(path: &Path) -> Option<String> {
    let data = fs::read(path).ok()?;
    let file = ElfFile64::<Endianness>::parse(&*data).ok()?;
    build_id_of(&file)
}

/// The functions that an ELF library exports: defined `STT_FUNC` symbols of the dynamic
/// symbol table with global or weak binding, with their file offsets.
///
/// `STT_GNU_IFUNC` symbols are left out: their address is a resolver, not the function.
pub fn exported_functions(path: &Path) -> Result<Vec<ExportedFn>, ElfError> {
    let data = read_elf(path)?;
    let file = parse_elf(path, &data)?;
    Ok(exports_of(&file))
}

fn exports_of(file: &ElfFile64<'_, Endianness>) -> Vec<ExportedFn> {
    let endian = file.endian();
    let loads: Vec<(u64, u64, u64)> = file
        .elf_header()
        .program_headers(endian, file.data())
        .unwrap_or(&[])
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| (ph.p_vaddr(endian), ph.p_offset(endian), ph.p_filesz(endian)))
        .collect();
    file.dynamic_symbols()
        .filter_map(|symbol| {
            let raw = symbol.elf_symbol();
            let bind = raw.st_bind();
            if raw.st_type() != elf::STT_FUNC
                || raw.st_shndx(endian) == elf::SHN_UNDEF
                || !(bind == elf::STB_GLOBAL || bind == elf::STB_WEAK)
            {
                return None;
            }
            let name = symbol.name().ok()?;
            let vaddr = raw.st_value(endian);
            // The code is in the file part of its PT_LOAD segment.
            let file_offset = loads.iter().find_map(|&(seg_vaddr, seg_offset, filesz)| {
                let delta = vaddr.checked_sub(seg_vaddr)?;
                (delta < filesz).then(|| seg_offset + delta)
            })?;
            Some(ExportedFn {
                name: name.to_string(),
                file_offset,
                vaddr,
                size: raw.st_size(endian),
            })
        })
        .collect()
}

/// Every exported variant of an entry point: `base` itself and the names that the driver
/// derives from it, `^base(_v[0-9]+)?(_pt(sz|ds))?$` (`cuMemAlloc_v2`,
/// `cuMemAllocAsync_ptsz`, `cuMemcpyHtoD_v2_ptds`). Other functions that merely share the
/// prefix (`cuMemAllocHost` for `cuMemAlloc`) are not variants. Sorted by name.
pub fn variants<'a>(exports: &'a [ExportedFn], base: &str) -> Vec<&'a ExportedFn> {
    let mut found: Vec<&ExportedFn> = exports
        .iter()
        .filter(|f| crate::api::is_variant(&f.name, base))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// One function per code address: where two exported names alias one address, a probe on
/// each would fire twice per call. Keeps the first name of each address, in input order.
pub fn dedup_by_address<'a>(fns: &[&'a ExportedFn]) -> Vec<&'a ExportedFn> {
    let mut seen = HashSet::new();
    fns.iter()
        .copied()
        .filter(|f| seen.insert(f.file_offset))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVIDIA's own driver library from Debian's `libcuda1` (driver 535), which the
    /// development and CI machines have installed (DESIGN.md, "The machine facts").
    const NVIDIA_LIBCUDA: &str = "/usr/lib/x86_64-linux-gnu/libcuda.so.1";

    /// The entry points of DESIGN.md's hooking table, by family.
    const FAMILIES: &[(&str, &[&str])] = &[
        (
            "device memory",
            &["cuMemAlloc", "cuMemAllocPitch", "cuMemFree"],
        ),
        (
            "stream-ordered pools",
            &[
                "cuMemAllocAsync",
                "cuMemAllocFromPoolAsync",
                "cuMemFreeAsync",
                "cuMemPoolTrimTo",
                "cuMemPoolCreate",
                "cuMemPoolDestroy",
                "cuDeviceGetDefaultMemPool",
                "cuMemPoolSetAttribute",
                "cuMemPoolGetAttribute",
            ],
        ),
        (
            "synchronizations",
            &[
                "cuCtxSynchronize",
                "cuStreamSynchronize",
                "cuEventSynchronize",
            ],
        ),
        (
            "virtual memory",
            &[
                "cuMemCreate",
                "cuMemRelease",
                "cuMemMap",
                "cuMemUnmap",
                "cuMemAddressReserve",
                "cuMemAddressFree",
            ],
        ),
        (
            "multicast objects",
            &[
                "cuMulticastCreate",
                "cuMulticastBindMem",
                "cuMulticastBindAddr",
                "cuMulticastUnbind",
            ],
        ),
        (
            "arrays",
            &[
                "cuArrayCreate",
                "cuArray3DCreate",
                "cuMipmappedArrayCreate",
                "cuArrayDestroy",
                "cuMipmappedArrayDestroy",
                "cuMemMapArrayAsync",
            ],
        ),
        (
            "host-side memory",
            &[
                "cuMemAllocManaged",
                "cuMemAllocHost",
                "cuMemHostAlloc",
                "cuMemFreeHost",
                "cuMemHostRegister",
                "cuMemHostUnregister",
            ],
        ),
        (
            "contexts",
            &[
                "cuCtxCreate",
                "cuCtxDestroy",
                "cuDevicePrimaryCtxRetain",
                "cuDevicePrimaryCtxRelease",
                "cuCtxSetCurrent",
                "cuCtxPushCurrent",
                "cuCtxPopCurrent",
            ],
        ),
        ("fill", &["cuMemcpyHtoD", "cuMemcpyHtoDAsync"]),
        (
            "graph memory",
            &[
                "cuGraphAddMemAllocNode",
                "cuGraphAddMemFreeNode",
                "cuGraphInstantiate",
                "cuGraphInstantiateWithFlags",
                "cuGraphInstantiateWithParams",
                "cuGraphLaunch",
                "cuGraphExecDestroy",
                "cuGraphDestroy",
                "cuDeviceGraphMemTrim",
                "cuDeviceGetGraphMemAttribute",
                "cuDeviceSetGraphMemAttribute",
            ],
        ),
        ("proc address", &["cuGetProcAddress"]),
    ];

    /// The exports of one of NVIDIA's driver generations (`testing::nvidia`).
    fn nvidia_exports(generation: &crate::testing::nvidia::Generation) -> Vec<ExportedFn> {
        exported_functions(&generation.path)
            .unwrap_or_else(|err| panic!("{}: {}", generation.label(), ErrorChain(&err)))
    }

    fn names<'a>(fns: &[&'a ExportedFn]) -> Vec<&'a str> {
        fns.iter().map(|f| f.name.as_str()).collect()
    }

    fn fake(name: &str, file_offset: u64) -> ExportedFn {
        ExportedFn {
            name: name.to_string(),
            file_offset,
            vaddr: file_offset,
            size: 16,
        }
    }

    #[test]
    fn variants_match_only_derived_names() {
        let exports: Vec<ExportedFn> = [
            "cuMemAlloc",
            "cuMemAlloc_v2",
            "cuMemAllocHost",
            "cuMemAllocHost_v2",
            "cuMemAllocAsync",
            "cuMemAllocAsync_ptsz",
            "cuMemAlloc_v",
            "cuMemAlloc_vx",
            "cuMemAlloc_v12_ptds",
            "cuMemAlloc_ptsz_v2",
            "cuMemAlloc_pt",
            "cuMemFree",
            "cuMemFreeAsync",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| fake(n, i as u64 * 16))
        .collect();
        assert_eq!(
            names(&variants(&exports, "cuMemAlloc")),
            ["cuMemAlloc", "cuMemAlloc_v12_ptds", "cuMemAlloc_v2"]
        );
        assert_eq!(names(&variants(&exports, "cuMemFree")), ["cuMemFree"]);
        assert!(variants(&exports, "cuMemCreate").is_empty());
    }

    #[test]
    fn dedup_keeps_one_name_per_address() {
        let exports = [
            fake("a", 0x100),
            fake("a_v2", 0x200),
            fake("a_alias", 0x100),
        ];
        let all: Vec<&ExportedFn> = exports.iter().collect();
        assert_eq!(names(&dedup_by_address(&all)), ["a", "a_v2"]);
    }

    #[test]
    fn nvidia_variants_of_every_hooked_family() {
        // What each generation exports decides what is expected of it: every name the
        // driver derives from a hooked base (`base_...`) is one of its variants, and each
        // `cuCtxCreate` variant is one whose signature the decoder knows.
        for generation in crate::testing::nvidia::generations() {
            let exports = exported_functions(&generation.path)
                .unwrap_or_else(|err| panic!("{}: {}", generation.label(), ErrorChain(&err)));
            println!("{}:", generation.label());
            for (family, bases) in FAMILIES {
                println!("  {family}:");
                for base in *bases {
                    let found = variants(&exports, base);
                    let listed: Vec<String> = found
                        .iter()
                        .map(|f| format!("{} @ {:#x}", f.name, f.file_offset))
                        .collect();
                    println!("    {base}: {}", listed.join(", "));
                    assert!(
                        !found.is_empty(),
                        "{base} is not exported by {}",
                        generation.label()
                    );
                    let derived: Vec<&str> = exports
                        .iter()
                        .map(|f| f.name.as_str())
                        .filter(|n| {
                            n.strip_prefix(base)
                                .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
                        })
                        .collect();
                    let mut derived = derived;
                    derived.sort_unstable();
                    assert_eq!(
                        names(&found),
                        derived,
                        "{}: every name derived from {base} is a variant of it",
                        generation.label()
                    );
                }
            }
            for f in variants(&exports, "cuCtxCreate") {
                assert!(
                    [
                        "cuCtxCreate",
                        "cuCtxCreate_v2",
                        "cuCtxCreate_v3",
                        "cuCtxCreate_v4"
                    ]
                    .contains(&f.name.as_str()),
                    "{}: {} has a signature the decoder does not know (api::CtxArgs)",
                    generation.label(),
                    f.name
                );
            }
        }
    }

    #[test]
    fn nvidia_exports_have_sane_offsets_and_no_aliases() {
        for generation in crate::testing::nvidia::generations() {
            let label = generation.label();
            let path = generation.path.as_path();
            let exports = nvidia_exports(&generation);
            assert!(exports.len() > 500, "{label}: {} exports", exports.len());
            let len = fs::metadata(path).expect("libcuda metadata").len();
            for f in &exports {
                assert!(f.file_offset < len, "{label}: {} past the end", f.name);
                assert!(f.size > 0, "{label}: {} has no size", f.name);
            }
            // Probes go on the file offset; the driver's code segment is loaded at an offset
            // equal to its address, so the two agree. A wrong segment computation would not.
            let alloc = exports
                .iter()
                .find(|f| f.name == "cuMemAlloc_v2")
                .expect("cuMemAlloc_v2");
            assert_eq!(alloc.file_offset, alloc.vaddr, "{label}");

            // Each generation gives each exported name its own code: no two names share an
            // address, so `dedup_by_address` is a no-op for them (it guards other builds).
            let all: Vec<&ExportedFn> = exports.iter().collect();
            let unique = dedup_by_address(&all);
            let aliased: Vec<&str> = exports
                .iter()
                .filter(|f| !unique.iter().any(|u| std::ptr::eq(*u, *f)))
                .map(|f| f.name.as_str())
                .collect();
            assert!(
                aliased.is_empty(),
                "{label}: names sharing an address with an earlier one: {aliased:?}"
            );
        }
    }

    #[test]
    fn build_id_of_nvidia_library() {
        let id = build_id(Path::new(NVIDIA_LIBCUDA)).expect("libcuda has a build id");
        assert_eq!(id.len(), 40);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(build_id(Path::new("/nonexistent/libcuda.so.1")), None);
    }

    #[test]
    fn discovers_the_installed_driver() {
        let libs = discover(&[], &[]).expect("the driver is installed here");
        let expected = fs::metadata(NVIDIA_LIBCUDA).expect("libcuda");
        let lib = libs
            .iter()
            .find(|l| l.dev_ino == (expected.dev(), expected.ino()))
            .expect("the installed libcuda is among the found");
        assert_eq!(
            lib.path,
            fs::canonicalize(NVIDIA_LIBCUDA).expect("canonical")
        );
        assert!(lib.build_id.is_some());
        assert!(!variants(&lib.symbols, "cuMemAlloc").is_empty());
        // Every copy appears once, however many names led to it.
        let inodes: HashSet<_> = libs.iter().map(|l| l.dev_ino).collect();
        assert_eq!(inodes.len(), libs.len());
    }

    #[test]
    fn explicit_paths_are_used_exactly() {
        let libs = discover(&[PathBuf::from(NVIDIA_LIBCUDA)], &[]).expect("explicit libcuda");
        assert_eq!(libs.len(), 1);
        assert_eq!(libs[0].found_by, "--libcuda");

        let err =
            discover(&[PathBuf::from("/nonexistent/libcuda.so.1")], &[]).expect_err("missing");
        assert!(matches!(err, DiscoverError::Missing { .. }), "{err:?}");

        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("libcuda.so.1");
        fs::write(&text, "not an ELF file").expect("write");
        let err = discover(&[text], &[]).expect_err("not ELF");
        assert!(
            matches!(
                err,
                DiscoverError::Unusable {
                    source: ElfError::NotElf { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn finds_the_library_mapped_by_a_process() {
        // Map NVIDIA's library into a child the way a CUDA program would, without running it
        // (no GPU needed): a `sleep` with the library preloaded never calls into it.
        let mut child = Command::new("sleep")
            .arg("30")
            .env("LD_PRELOAD", NVIDIA_LIBCUDA)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // Wait until the loader has mapped it.
        let mut libs = Vec::new();
        for _ in 0..100 {
            let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            if maps.contains("libcuda.so") {
                libs = discover(&[], &[pid]).expect("discover");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            libs.iter()
                .any(|l| !l.found_by.starts_with(&format!("mapped by PID {pid}"))),
            "system copy found"
        );
        let expected = fs::metadata(NVIDIA_LIBCUDA).expect("libcuda");
        // The mapped copy is the same inode as the system one, so it is not listed twice.
        assert_eq!(
            libs.iter()
                .filter(|l| l.dev_ino == (expected.dev(), expected.ino()))
                .count(),
            1
        );
    }

    #[test]
    fn finds_a_mapped_library_that_was_deleted() {
        // A driver upgraded under a running process: the file it mapped has no path any more.
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("libcuda.so.1");
        fs::copy(NVIDIA_LIBCUDA, &copy).expect("copy libcuda");
        let mut child = Command::new("sleep")
            .arg("30")
            .env("LD_PRELOAD", &copy)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let mut mapped = false;
        for _ in 0..100 {
            let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            if maps.contains(copy.to_str().expect("utf-8 temp path")) {
                mapped = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let removed = fs::remove_file(&copy);
        let libs = discover(&[], &[pid]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(mapped, "sleep never mapped the copy");
        removed.expect("delete the copy");
        let libs = libs.expect("discover");
        let from_process: Vec<&Library> = libs
            .iter()
            .filter(|l| l.found_by.starts_with(&format!("mapped by PID {pid} as ")))
            .collect();
        assert_eq!(from_process.len(), 1, "{libs:#?}");
        let lib = from_process[0];
        assert!(
            lib.path.starts_with(format!("/proc/{pid}/map_files/")),
            "{}",
            lib.path.display()
        );
        assert_eq!(lib.build_id, build_id(Path::new(NVIDIA_LIBCUDA)));
        assert_eq!(variants(&lib.symbols, "cuMemAlloc").len(), 2);
        // Shown as the process names it, not by the `/proc` link it is attached through.
        assert_eq!(
            lib.shown,
            format!("{} (mapped by PID {pid})", copy.display()),
        );
    }

    /// The (device, inode) of what `path` names, following links as the kernel does for us.
    fn inode(path: &Path) -> Option<(u64, u64)> {
        fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
        if let Some(dir) = link.as_ref().parent() {
            fs::create_dir_all(dir).expect("mkdir");
        }
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    /// A container image's root as its own processes see it: `/usr/lib64 -> /usr/lib` and
    /// `libcuda.so.1 -> /usr/lib/libcuda.so.580.95.05`, both absolute, lead to the image's
    /// copy, and links planted towards a file outside the root, absolute or climbing with
    /// `..`, find nothing. Read from outside as a plain path, the same links reach the file
    /// outside.
    #[test]
    fn a_root_is_searched_with_its_own_absolute_links_and_none_leads_out() {
        let image = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        let outside = host.path().join("libcuda.so.1");
        fs::write(&outside, "a file of the host's").expect("write");
        let copy = image.path().join("usr/lib/libcuda.so.580.95.05");
        fs::create_dir_all(image.path().join("usr/lib")).expect("mkdir");
        fs::write(&copy, "the image's driver").expect("write");
        symlink(
            "/usr/lib/libcuda.so.580.95.05",
            image.path().join("usr/lib").join(SONAME),
        );
        symlink("/usr/lib", image.path().join("usr/lib64"));
        let planted = image
            .path()
            .join(format!("usr/lib/{MULTIARCH}"))
            .join(SONAME);
        symlink(&outside, &planted);
        let climbing = Path::new("../../../../../../../../../..")
            .join(outside.strip_prefix("/").expect("an absolute temp path"));
        symlink(&climbing, image.path().join("lib64").join(SONAME));

        let root = fs::File::open(image.path()).expect("open the image");
        let (mut candidates, mut searched) = (Vec::new(), Vec::new());
        root_candidates(&root, "the image", &mut candidates, &mut searched);

        let copy_inode = inode(&copy);
        let found: Vec<(&str, Option<(u64, u64)>)> = candidates
            .iter()
            .map(|c| {
                let file = c.file.as_ref().expect("opened in the root");
                let meta = file.metadata().expect("metadata");
                assert_eq!(
                    inode(&c.path),
                    Some((meta.dev(), meta.ino())),
                    "{}",
                    c.found_by
                );
                (c.found_by.as_str(), Some((meta.dev(), meta.ino())))
            })
            .collect();
        assert_eq!(
            found,
            [
                (
                    "driver directory in the image: /usr/lib64/libcuda.so.1",
                    copy_inode
                ),
                (
                    "driver directory in the image: /usr/lib/libcuda.so.1",
                    copy_inode
                ),
            ],
            "{searched:#?}"
        );
        for path in [
            format!("/usr/lib/{MULTIARCH}/{SONAME}"),
            format!("/lib64/{SONAME}"),
        ] {
            assert!(
                searched
                    .iter()
                    .any(|s| s.contains(&path) && s.contains("No such file")),
                "{path}: {searched:#?}"
            );
        }
        // A plain path resolves the planted links in our root: the host's file.
        assert_eq!(inode(&planted), inode(&outside));
        assert_eq!(
            inode(&image.path().join("lib64").join(SONAME)),
            inode(&outside)
        );
    }

    /// A process whose root is an image (a thread that chroots, as a container's process has
    /// its own root) and that has not loaded the driver yet: its loader's cache names
    /// `/lib/x86_64-linux-gnu/libcuda.so.1`, which the image's absolute links `/lib ->
    /// /usr/lib` and `libcuda.so.1 -> /usr/lib/.../libcuda.so.535.309.01` lead to its own
    /// copy. Through `/proc/TID/root` the same path reaches the host's library instead. Needs
    /// root (chroot), as CI is.
    #[test]
    fn finds_the_copy_in_a_process_root_through_its_absolute_links() {
        let image = tempfile::tempdir().expect("tempdir");
        let real = format!("/usr/lib/{MULTIARCH}/nvidia/current/libcuda.so.535.309.01");
        let copy = image.path().join(real.trim_start_matches('/'));
        fs::create_dir_all(copy.parent().expect("a directory")).expect("mkdir");
        fs::copy(NVIDIA_LIBCUDA, &copy).expect("copy libcuda");
        symlink(
            &real,
            image.path().join(format!("usr/lib/{MULTIARCH}/{SONAME}")),
        );
        symlink("/usr/lib", image.path().join("lib"));
        fs::create_dir_all(image.path().join("etc")).expect("mkdir");
        fs::copy(LD_SO_CACHE, image.path().join("etc/ld.so.cache")).expect("copy the cache");

        let (tid, through_proc, libs) = crate::testing::with_own_root(image.path(), |tid| {
            let path = format!("/proc/{tid}/root/lib/{MULTIARCH}/{SONAME}");
            (tid, inode(Path::new(&path)), discover(&[], &[tid]))
        });
        let libs = libs.expect("discover");

        let host = inode(Path::new(NVIDIA_LIBCUDA));
        assert_eq!(through_proc, host, "the plain path reaches the host's copy");
        let ours: Vec<&Library> = libs
            .iter()
            .filter(|l| Some(l.dev_ino) == inode(&copy))
            .collect();
        assert_eq!(ours.len(), 1, "{libs:#?}");
        let lib = ours[0];
        assert_eq!(
            lib.found_by,
            format!("ld.so cache in PID {tid}'s root: /lib/{MULTIARCH}/{SONAME}")
        );
        assert!(
            lib.path.starts_with("/proc/self/fd/"),
            "{}",
            lib.path.display()
        );
        assert!(lib.file.is_some());
        assert_eq!(lib.build_id, build_id(Path::new(NVIDIA_LIBCUDA)));
        assert_eq!(variants(&lib.symbols, "cuMemAlloc").len(), 2);
        // The host's copy is found once, by the host's own search.
        assert_eq!(libs.iter().filter(|l| Some(l.dev_ino) == host).count(), 1);
    }

    #[test]
    fn parses_ldconfig_output() {
        let text = "\
531 libs found in cache `/etc/ld.so.cache'
\tlibcuda.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6) => /lib/i386-linux-gnu/libcuda.so.1
\tlibfoo.so (libc6,x86-64, OS ABI: Linux 3.2.0) => /usr/lib/libfoo.so
Cache generated by: ldconfig (GNU libc) stable release version 2.36
";
        let entries = parse_ldconfig_output(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].name, "libcuda.so.1");
        assert_eq!(entries[0].arch, "x86-64");
        assert_eq!(entries[0].path, "/lib/x86_64-linux-gnu/libcuda.so.1");
        assert_eq!(entries[1].arch, "");
        assert_eq!(entries[2].arch, "x86-64");
    }

    #[test]
    fn the_cache_file_parser_agrees_with_ldconfig() {
        let Ok(from_ldconfig) = ldconfig_entries() else {
            panic!("ldconfig -p must run here");
        };
        let bytes = fs::read(LD_SO_CACHE).expect("/etc/ld.so.cache");
        let from_file = parse_ld_so_cache(&bytes).expect("a glibc 1.1 cache");
        let key = |e: &LdCacheEntry| (e.name.clone(), e.arch.clone(), e.path.clone());
        let a: HashSet<_> = from_ldconfig.iter().map(key).collect();
        let b: HashSet<_> = from_file.iter().map(key).collect();
        assert_eq!(a, b);
        assert!(parse_ld_so_cache(b"junk").is_none());
        // A truncated file gives `None`, never a panic.
        for cut in [30, 60, 100, bytes.len() / 2] {
            let _ = parse_ld_so_cache(&bytes[..cut.min(bytes.len())]);
        }
    }

    #[test]
    fn parses_maps_lines() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234   /usr/bin/python3.11
7f0000000000-7f0000100000 r-xp 000e1000 08:01 5678                       /usr/lib/x86_64-linux-gnu/libcuda.so.535.309.01
7f0000200000-7f0000300000 r-xp 00000000 08:01 91011                      /opt/my dir/libcuda.so.1 (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00101000 rw-p 00000000 00:00 0
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(
            maps[1].path,
            "/usr/lib/x86_64-linux-gnu/libcuda.so.535.309.01"
        );
        assert_eq!(maps[1].range, "7f0000000000-7f0000100000");
        assert!(!maps[1].deleted);
        assert_eq!(maps[2].path, "/opt/my dir/libcuda.so.1");
        assert!(maps[2].deleted);
    }

    #[test]
    fn not_found_names_every_place_and_the_flag() {
        let err = DiscoverError::NotFound {
            searched: vec![
                "ld.so cache: no libcuda.so entry".into(),
                "/usr/lib64/libcuda.so.1: No such file".into(),
            ],
        };
        let msg = err.to_string();
        assert!(msg.contains("--libcuda PATH"), "{msg}");
        assert!(msg.contains("ld.so cache"), "{msg}");
        assert!(msg.contains("/usr/lib64/libcuda.so.1"), "{msg}");
    }

    #[test]
    fn stubs_are_recognized() {
        assert!(is_stub(Path::new("/usr/local/cuda/lib64/stubs/libcuda.so")));
        assert!(!is_stub(Path::new(
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
        )));
    }
}
