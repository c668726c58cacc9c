//! Unwinds copied user stacks (`--stacks dwarf`) in user space, from the call frame
//! information of the files the process has mapped (`.eh_frame` with `.eh_frame_hdr`, and
//! `.debug_frame` where a file has one), with framehop; where a module has no CFI, framehop
//! follows the frame pointer.
//!
//! A copy is unwound when it is drained from the ring buffer, before the call's event is
//! converted: the process usually still runs then, so its mappings are read from `/proc`
//! and its files through `/proc/PID/map_files/` (the mapped file itself, in a container
//! too). A stack ends where unwinding stops, with the reason, and never carries an address
//! outside the process's executable file mappings.

use std::collections::HashMap;
use std::fs::{self, File};
use std::ops::{Deref, Range};
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{
    Error as UnwindError, ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _,
};
use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSegment as _};
use vramtrace_common::{MAX_STACK_DEPTH, STACK_COPY_BYTES};

use crate::decode::SampleView;
use crate::probe::libcuda::{MapsFile, parse_maps};

/// A process's mappings are read again at most this often when an address falls outside
/// them (a library loaded since, or an address that is not code at all).
const REFRESH_EVERY: Duration = Duration::from_millis(20);
/// Unwound stacks whose call never arrived (its event was lost) are dropped after this long.
const PENDING_TTL_NS: u64 = 60_000_000_000;
/// Files whose unwind sections are kept mapped, at most.
const FILES_LIMIT: usize = 4096;

/// The bytes of one section of a mapped file, shared by every process that maps it.
#[derive(Clone)]
pub struct SectionBytes {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.get(self.range.clone()).unwrap_or(&[])
    }
}

/// What unwinding needs from one ELF file, read once per file (device and inode).
struct ElfUnwindInfo {
    eh_frame: Option<(Range<u64>, SectionBytes)>,
    eh_frame_hdr: Option<(Range<u64>, SectionBytes)>,
    debug_frame: Option<SectionBytes>,
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    /// `(p_vaddr, p_offset, p_filesz)` of each loadable segment: where a mapping's file
    /// offset lands in the file's own addresses, for the load bias.
    loads: Vec<(u64, u64, u64)>,
}

impl ElfUnwindInfo {
    fn read(file: &File) -> Option<ElfUnwindInfo> {
        // SAFETY: the file is one a process has mapped and executes; it is read-only here.
        // Shared libraries are replaced by rename, not rewritten in place, so the mapping
        // stays valid (the process itself relies on that as much as we do).
        let map = Arc::new(unsafe { Mmap::map(file) }.ok()?);
        let elf = object::File::parse(&map[..]).ok()?;
        let section = |name: &str| {
            let s = elf.section_by_name(name)?;
            let (offset, size) = s.file_range()?;
            let range = usize::try_from(offset).ok()?..usize::try_from(offset + size).ok()?;
            map.get(range.clone())?;
            Some((
                s.address()..s.address() + s.size(),
                SectionBytes {
                    map: map.clone(),
                    range,
                },
            ))
        };
        let address_range = |name: &str| {
            elf.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        let loads = elf
            .segments()
            .map(|seg| {
                let (offset, filesz) = seg.file_range();
                (seg.address(), offset, filesz)
            })
            .collect();
        Some(ElfUnwindInfo {
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame").map(|(_, bytes)| bytes),
            text: address_range(".text"),
            got: address_range(".got"),
            loads,
        })
    }

    /// The load bias of a mapping of this file at `start` from file offset `offset`. The
    /// loader maps a segment from the page that holds its first byte, so a mapping's offset
    /// is its segment's offset rounded down to a page.
    fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        const PAGE: u64 = 4096;
        let &(vaddr, seg_offset, _) = self
            .loads
            .iter()
            .find(|&&(_, o, _)| o & !(PAGE - 1) == offset)
            .or_else(|| {
                self.loads
                    .iter()
                    .find(|&&(_, o, size)| o <= offset && offset < o + size)
            })?;
        let vaddr_at_offset = vaddr.wrapping_sub(seg_offset).wrapping_add(offset);
        Some(start.wrapping_sub(vaddr_at_offset))
    }

    fn module(&self, name: &str, m: &MapsFile) -> Option<Module<SectionBytes>> {
        let bias = self.bias(m.start, m.offset)?;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text.clone(),
            text: None,
            stubs_svma: None,
            stub_helper_svma: None,
            got_svma: self.got.clone(),
            unwind_info: None,
            eh_frame_svma: self.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: self.eh_frame.as_ref().map(|(_, b)| b.clone()),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|(_, b)| b.clone()),
            debug_frame: self.debug_frame.clone(),
            text_segment_svma: None,
            text_segment: None,
        };
        Some(Module::new(name.to_string(), m.start..m.end, bias, info))
    }
}

/// One process: its executable mappings and an unwinder over them.
struct ProcessUnwind {
    unwinder: UnwinderX86_64<SectionBytes>,
    maps: Vec<MapsFile>,
    exec: Vec<Range<u64>>,
    read_at: Instant,
}

impl ProcessUnwind {
    fn in_exec(&self, addr: u64) -> bool {
        self.exec.iter().any(|r| r.contains(&addr))
    }
}

/// A stack unwound from a copy: return addresses, innermost first (the driver entry point
/// itself is left out), and why it ends early, when it does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwound {
    pub addrs: Vec<u64>,
    pub truncated: Option<String>,
}

/// Unwinds copied stacks and keeps each result until its call's event asks for it.
pub struct CopyUnwinder {
    procs: HashMap<u32, ProcessUnwind>,
    /// (device, inode) → unwind sections; `None` for a file that is not a readable ELF.
    files: HashMap<(u64, u64), Option<Arc<ElfUnwindInfo>>>,
    cache: CacheX86_64,
    /// (thread, entry time) → the unwound stack of that call.
    pending: HashMap<(u32, u64), Unwound>,
    newest_ns: u64,
    /// Copies unwound, and how many of them ended early.
    pub unwound: u64,
    pub truncated: u64,
}

impl Default for CopyUnwinder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for CopyUnwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyUnwinder")
            .field("processes", &self.procs.len())
            .field("files", &self.files.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl CopyUnwinder {
    pub fn new() -> Self {
        CopyUnwinder {
            procs: HashMap::new(),
            files: HashMap::new(),
            cache: CacheX86_64::new(),
            pending: HashMap::new(),
            newest_ns: 0,
            unwound: 0,
            truncated: 0,
        }
    }

    /// Unwinds the copy `s` now and keeps the result for its call ([`take`](Self::take)).
    pub fn add(&mut self, s: &SampleView<'_>) {
        let unwound = self.unwind(s);
        self.unwound += 1;
        self.truncated += u64::from(unwound.truncated.is_some());
        self.newest_ns = self.newest_ns.max(s.ts_entry_ns);
        if self.pending.len() > 4096 {
            let horizon = self.newest_ns.saturating_sub(PENDING_TTL_NS);
            self.pending.retain(|&(_, ts), _| ts >= horizon);
        }
        self.pending.insert((s.tid, s.ts_entry_ns), unwound);
    }

    /// The unwound stack of the call that thread `tid` entered at `ts_entry_ns`, once.
    pub fn take(&mut self, tid: u32, ts_entry_ns: u64) -> Option<Unwound> {
        self.pending.remove(&(tid, ts_entry_ns))
    }

    /// Reads the mappings of `pid` now, if they were not read yet (a process stopped at its
    /// first call, before any copy of its stack arrived).
    pub fn learn(&mut self, pid: u32) {
        if !self.knows(pid) {
            self.read_process(pid);
        }
    }

    /// Whether the mappings of `pid` were read (it was seen and had not exited then).
    pub fn knows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// The file mappings of `pid` as last read.
    pub fn maps(&self, pid: u32) -> Option<&[MapsFile]> {
        self.procs.get(&pid).map(|p| p.maps.as_slice())
    }

    /// Process `pid` ended: its mappings can go.
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Unwinds one copy. Reads the process's mappings the first time, and again (at most
    /// every `REFRESH_EVERY`) when an address falls outside them.
    pub fn unwind(&mut self, s: &SampleView<'_>) -> Unwound {
        if !self.procs.contains_key(&s.pid) {
            self.read_process(s.pid);
        }
        let first = self.walk(s);
        let stale = first
            .truncated
            .as_deref()
            .is_some_and(|r| r.contains(OUTSIDE));
        if stale
            && self
                .procs
                .get(&s.pid)
                .is_none_or(|p| p.read_at.elapsed() >= REFRESH_EVERY)
        {
            self.read_process(s.pid);
            return self.walk(s);
        }
        first
    }

    fn walk(&mut self, s: &SampleView<'_>) -> Unwound {
        let Some(proc) = self.procs.get(&s.pid) else {
            return Unwound {
                addrs: Vec::new(),
                truncated: Some("process exited before its mappings were read".into()),
            };
        };
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let at = usize::try_from(addr.checked_sub(s.base).ok_or(())?).map_err(|_| ())?;
            let word = s.stack.get(at..at + 8).ok_or(())?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(s.ip, s.sp, s.bp);
        let mut frames = proc
            .unwinder
            .iter_frames(s.ip, regs, &mut self.cache, &mut read_stack);
        let mut out = Unwound::default();
        loop {
            match frames.next() {
                Ok(Some(FrameAddress::InstructionPointer(_))) => {}
                Ok(Some(FrameAddress::ReturnAddress(ra))) => {
                    let ra = u64::from(ra);
                    if !proc.in_exec(ra) {
                        out.truncated = Some(format!(
                            "return address {ra:#x} {OUTSIDE}; unwinding stopped"
                        ));
                        break;
                    }
                    if out.addrs.len() == MAX_STACK_DEPTH {
                        out.truncated = Some(format!("deeper than {MAX_STACK_DEPTH} frames"));
                        break;
                    }
                    out.addrs.push(ra);
                }
                Ok(None) => break,
                Err(err) => {
                    out.truncated = Some(why_stopped(err, s));
                    break;
                }
            }
        }
        out
    }

    fn read_process(&mut self, pid: u32) {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let maps = parse_maps(&text);
        if maps.is_empty() {
            // A zombie: its mappings are gone; what was read before stays.
            return;
        }
        if self.files.len() > FILES_LIMIT {
            self.files.clear();
        }
        let mut unwinder = UnwinderX86_64::new();
        let mut exec = Vec::new();
        for m in maps.iter().filter(|m| m.exec) {
            exec.push(m.start..m.end);
            let Some(info) = self.file_info(pid, m) else {
                continue;
            };
            if let Some(module) = info.module(&m.path, m) {
                unwinder.add_module(module);
            }
        }
        self.procs.insert(
            pid,
            ProcessUnwind {
                unwinder,
                maps,
                exec,
                read_at: Instant::now(),
            },
        );
    }

    fn file_info(&mut self, pid: u32, m: &MapsFile) -> Option<Arc<ElfUnwindInfo>> {
        let file = File::open(format!("/proc/{pid}/map_files/{}", m.range))
            .or_else(|_| File::open(&m.path))
            .ok()?;
        let meta = file.metadata().ok()?;
        self.files
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| ElfUnwindInfo::read(&file).map(Arc::new))
            .clone()
    }
}

/// How the reason for stopping names an address outside every executable mapping.
const OUTSIDE: &str = "outside the process's executable mappings";

fn why_stopped(err: UnwindError, s: &SampleView<'_>) -> String {
    match err {
        UnwindError::CouldNotReadStack(addr)
            if addr >= s.base + s.stack.len() as u64 && s.stack.len() == STACK_COPY_BYTES =>
        {
            format!(
                "stack deeper than the {} KiB copied",
                STACK_COPY_BYTES / 1024
            )
        }
        UnwindError::CouldNotReadStack(addr) => {
            format!("stack memory at {addr:#x} is outside the copy; unwinding stopped")
        }
        other => format!("unwinding stopped: {other}"),
    }
}
