//! Loads the eBPF programs, attaches them to every exported variant of every hooked driver
//! entry point, and reads what they send: ring-buffer events, stacks and loss counters.

pub mod btf;
mod caps;
pub mod libcuda;
pub mod placement;

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use thiserror::Error;
use vramtrace_common::{MAX_API_IDS, counter, filter};

use crate::api::{APIS, Hooked};
use crate::decode::{RawEvent, SampleView, is_sample, parse, parse_sample};
use crate::trace::{Library as LibraryRecord, Lost, Probe};

/// The BPF object built by build.rs from vramtrace-ebpf.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vramtrace"));

/// How the tracer should run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Driver libraries to attach to.
    pub libraries: Vec<PathBuf>,
    /// Trace only these processes (and their descendants). Empty: every process.
    pub pids: Vec<u32>,
    /// Trace the children this process starts (for `record -- CMD`), not the process itself.
    pub follow_children_of_self: bool,
    /// How user stacks of allocations are captured.
    pub stacks: StackMode,
    /// Stop each new process at its first driver call until user space has read it.
    pub hold_new: bool,
    /// Signal sent to a thread that places memory in host RAM; 0 for none.
    pub host_signal: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Pending bytes above which a submission wakes the reader.
    pub wakeup_bytes: u64,
    /// Where on each function the probes go.
    pub probe_at: placement::ProbeAt,
    /// Capacities of the kernel side's bookkeeping maps.
    pub maps: MapSizes,
}

/// How user stacks are captured (`--stacks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StackMode {
    /// Copy the stack at each call and unwind it in user space from the libraries' CFI
    /// (`.eh_frame`), following frame pointers where a library has none: right for code
    /// built without frame pointers (libcudart, libtorch, CPython).
    #[default]
    Dwarf,
    /// The kernel's frame-pointer walk: cheapest, right only for code built with frame
    /// pointers.
    Fp,
    /// No stacks; the immediate caller only.
    Off,
}

impl StackMode {
    /// The value the probes read (`stack_mode::*`).
    pub fn wire(self) -> u32 {
        match self {
            StackMode::Dwarf => vramtrace_common::stack_mode::COPY,
            StackMode::Fp => vramtrace_common::stack_mode::FRAME_POINTERS,
            StackMode::Off => vramtrace_common::stack_mode::OFF,
        }
    }
}

/// Capacities of the kernel side's bookkeeping maps. What does not fit is counted as lost,
/// never dropped silently; the defaults are far above what a machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Calls in flight at once, over all threads (`INFLIGHT`).
    pub inflight: u32,
    /// Threads that entered a hooked call and are alive (`THREADS`).
    pub threads: u32,
    /// Processes and threads in the PID filter (`FILTER`).
    pub filter: u32,
    /// Processes with delivered events that are alive (`SEEN`).
    pub seen: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            inflight: 65536,
            threads: 65536,
            filter: 8192,
            seen: 16384,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            libraries: Vec::new(),
            pids: Vec::new(),
            follow_children_of_self: false,
            stacks: StackMode::default(),
            hold_new: false,
            host_signal: 0,
            ring_bytes: 32 << 20,
            wakeup_bytes: 256 << 10,
            probe_at: placement::ProbeAt::Auto,
            maps: MapSizes::default(),
        }
    }
}

/// What can go wrong while loading and attaching.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("not permitted to {action}: {}", caps::advice())]
    Permission {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("loading the eBPF programs failed")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF program {name} was rejected")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading the tracepoint format {path}")]
    Format {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} exports none of the CUDA driver's memory functions: is it libcuda?")]
    NoSymbols { path: PathBuf },
    #[error("listing the symbols of {path}")]
    Symbols {
        path: PathBuf,
        #[source]
        source: libcuda::ElfError,
    },
    #[error("attaching to {symbols} symbols of {path} failed")]
    Attach {
        path: PathBuf,
        symbols: usize,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("no process with PID {0}")]
    NoSuchPid(u32),
    #[error("{count} driver symbols to hook; the probes handle at most {max}")]
    TooManySymbols { count: usize, max: u32 },
}

/// Wraps an error as advice when its cause is missing privileges (EPERM or EACCES anywhere in
/// its source chain), as opposed to guessing from the user id.
fn or_permission<E>(err: E, otherwise: impl FnOnce(E) -> ProbeError) -> ProbeError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            return ProbeError::Permission {
                action: "load and attach the eBPF programs".into(),
                source: Box::new(err),
            };
        }
        source = e.source();
    }
    otherwise(err)
}

/// Cumulative loss counters: the kernel side's, summed over CPUs, and the two that user space
/// keeps for what reached it and could not become a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub lost_ringbuf: u64,
    pub lost_entry: u64,
    pub lost_exit: u64,
    pub stack_failed: u64,
    pub return_without_entry: u64,
    pub submitted: u64,
    pub filter_full: u64,
    pub seen_full: u64,
    pub threads_full: u64,
    /// API ids outside the table: the probes' count plus the converter's.
    pub unknown_api: u64,
    /// Ring-buffer items that could not be decoded (counted by the reader, not the probes).
    pub undecodable: u64,
}

impl Counters {
    /// The loss since `earlier`, as a trace record.
    pub fn lost_since(&self, earlier: &Counters, ts_ns: u64) -> Lost {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Lost {
            ts_ns,
            ringbuf_full: d(self.lost_ringbuf, earlier.lost_ringbuf),
            entry_map_full: d(self.lost_entry, earlier.lost_entry),
            exit_dropped: d(self.lost_exit, earlier.lost_exit),
            stack_failed: d(self.stack_failed, earlier.stack_failed),
            return_without_entry: d(self.return_without_entry, earlier.return_without_entry),
            filter_map_full: d(self.filter_full, earlier.filter_full),
            seen_map_full: d(self.seen_full, earlier.seen_full),
            thread_map_full: d(self.threads_full, earlier.threads_full),
            unknown_api: d(self.unknown_api, earlier.unknown_api),
            undecodable: d(self.undecodable, earlier.undecodable),
        }
    }
}

/// Loaded and attached probes.
pub struct Tracer {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    stacks: StackTraceMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// Hooked symbols; the index is the API id in each event.
    pub apis: Vec<Hooked>,
    /// What was attached where, for the trace header.
    pub libraries: Vec<LibraryRecord>,
}

/// Reads the byte offset of `field` from a tracepoint's format file.
fn tracepoint_field_offset(
    category: &str,
    name: &str,
    field: &str,
) -> Result<Option<u32>, ProbeError> {
    let roots = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    let mut first_error = None;
    for root in roots {
        let path = format!("{root}/events/{category}/{name}/format");
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(parse_field_offset(&text, field)),
            // Not being allowed to read tracefs means not being allowed to trace.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(ProbeError::Permission {
                    action: format!("read {path} (tracefs is readable by root only)"),
                    source: Box::new(e),
                });
            }
            Err(e) => {
                first_error.get_or_insert((path, e));
            }
        }
    }
    let (path, source) = first_error.expect("two roots were tried");
    Err(ProbeError::Format {
        path: format!("{path} (is tracefs mounted? mount -t tracefs tracefs /sys/kernel/tracing)"),
        source,
    })
}

fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        let name = decl.rsplit([' ', '*']).next()?.split('[').next()?;
        if name != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

/// Every signal the calling thread can block, blocked until dropped, then the thread's mask as
/// it was. The verifier gives up on a program with `EAGAIN` whenever a signal is pending for
/// the thread that loads it; aya tries five times, and a program that takes the verifier a
/// second on a busy machine fails all five when the process is signalled about once a second
/// (a failed spawn in another thread does that: its exit signal is queued because the
/// spawning thread blocks every signal while it waits). Blocked, a signal to the process goes
/// to another thread, or waits the second or so the programs take to load.
struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    fn block_all() -> SignalsHeld {
        // SAFETY: sigset_t is plain data for which all zeroes is a valid (empty) value;
        // sigfillset and pthread_sigmask write only the sets they are given, which live here.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut before);
            SignalsHeld(before)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: the mask is the one pthread_sigmask returned for this thread; a pending
        // signal is delivered as it returns.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

impl Tracer {
    /// Loads the programs with `config` and attaches them everywhere.
    pub fn start(config: &Config) -> Result<Tracer, ProbeError> {
        let fork_child =
            tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?.unwrap_or(20);
        let exit_group_dead =
            tracepoint_field_offset("sched", "sched_process_exit", "group_dead")?.unwrap_or(0);
        // Without them a shareable handle's descriptor is not followed to its open file, and
        // an import of one is not attributed to its exporter; everything else is the same.
        let files = btf::FileOffsets::of_running_kernel()
            .inspect_err(|e| {
                tracing::warn!(
                    error = %e,
                    "kernel field offsets unknown: shareable handles will not be matched to their exporters"
                )
            })
            .ok();
        let files_known = u32::from(files.is_some());
        let files = files.unwrap_or(btf::FileOffsets {
            task_files: 0,
            files_fdt: 0,
            fdt_max_fds: 0,
            fdt_fd: 0,
        });
        let filter_enabled = u32::from(!config.pids.is_empty() || config.follow_children_of_self);
        let stacks = config.stacks.wire();
        let hold_new = u32::from(config.hold_new);
        // Wake the reader well before the ring fills, whatever its size.
        let wakeup_bytes = config.wakeup_bytes.min(u64::from(config.ring_bytes / 4));
        // The API ids are known before anything is loaded: their count bounds the loop that
        // clears an exiting thread's in-flight calls.
        let mut apis = Vec::new();
        let mut libraries = Vec::new();
        let mut targets = Vec::new();
        for path in &config.libraries {
            let exports =
                libcuda::exported_functions(path).map_err(|source| ProbeError::Symbols {
                    path: path.clone(),
                    source,
                })?;
            let mut probes = Vec::new();
            let mut points = Vec::new();
            for def in APIS {
                for f in libcuda::dedup_by_address(&libcuda::variants(&exports, def.base)) {
                    let hooked = Hooked::new(def, &f.name);
                    let id = match apis.iter().position(|h: &Hooked| h.symbol == hooked.symbol) {
                        Some(i) => i,
                        None => {
                            apis.push(hooked.clone());
                            apis.len() - 1
                        }
                    };
                    let cookie = hooked.cookie(id as u16);
                    let place = placement::place(path, f.file_offset, config.probe_at);
                    tracing::debug!("{}+{}: {}", f.name, place.offset, place.reason);
                    points.push((f.file_offset + place.offset, cookie));
                    probes.push(Probe {
                        symbol: f.name.clone(),
                        symbol_offset: f.file_offset,
                        probe_offset: place.offset,
                    });
                }
            }
            if points.is_empty() {
                return Err(ProbeError::NoSymbols { path: path.clone() });
            }
            libraries.push(LibraryRecord {
                path: path.display().to_string(),
                build_id: libcuda::build_id(path),
                probes,
            });
            targets.push((path.clone(), points));
        }
        let api_count = u32::try_from(apis.len())
            .ok()
            .filter(|&n| n <= MAX_API_IDS)
            .ok_or(ProbeError::TooManySymbols {
                count: apis.len(),
                max: MAX_API_IDS,
            })?;
        let sizes = config.maps;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("FILTER_ENABLED", &filter_enabled, true)
            .override_global("STACK_MODE", &stacks, true)
            .override_global("HOLD_NEW", &hold_new, true)
            .override_global("HOST_SIGNAL", &config.host_signal, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("FORK_CHILD_PID_OFFSET", &fork_child, true)
            .override_global("EXIT_GROUP_DEAD_OFFSET", &exit_group_dead, true)
            .override_global("API_COUNT", &api_count, true)
            .override_global("FILE_OFFSETS_KNOWN", &files_known, true)
            .override_global("TASK_FILES_OFFSET", &files.task_files, true)
            .override_global("FILES_FDT_OFFSET", &files.files_fdt, true)
            .override_global("FDT_MAX_FDS_OFFSET", &files.fdt_max_fds, true)
            .override_global("FDT_FD_OFFSET", &files.fdt_fd, true)
            .map_max_entries("EVENTS", config.ring_bytes)
            .map_max_entries("INFLIGHT", sizes.inflight)
            .map_max_entries("THREADS", sizes.threads)
            .map_max_entries("FILTER", sizes.filter)
            .map_max_entries("SEEN", sizes.seen);
        // From here to the return every program is verified and attached with this thread's
        // signals blocked: see `SignalsHeld`.
        let _held = SignalsHeld::block_all();
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .map_err(|e| or_permission(e, ProbeError::Load))?;

        // The filter goes in before anything is attached, so nothing untraced slips through.
        {
            let map = ebpf
                .map_mut("FILTER")
                .ok_or(ProbeError::Missing("FILTER map"))?;
            let mut filter_map: BpfHashMap<_, u32, u32> =
                BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
                    name: "FILTER",
                    source,
                })?;
            for &pid in &config.pids {
                if !crate::procinfo::process_exists(pid) {
                    return Err(ProbeError::NoSuchPid(pid));
                }
                filter_map
                    .insert(&pid, &filter::TRACE, 0)
                    .map_err(|source| ProbeError::Map {
                        name: "FILTER",
                        source,
                    })?;
            }
            if config.follow_children_of_self {
                filter_map
                    .insert(&std::process::id(), &filter::FOLLOW_ONLY, 0)
                    .map_err(|source| ProbeError::Map {
                        name: "FILTER",
                        source,
                    })?;
            }
        }

        for (prog, name) in [
            ("process_exit", "sched_process_exit"),
            ("process_fork", "sched_process_fork"),
        ] {
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or(ProbeError::Missing("tracepoint program"))?
                .try_into()
                .map_err(|source| ProbeError::Program {
                    name: "tracepoint",
                    source,
                })?;
            tp.load().map_err(|e| {
                or_permission(e, |source| ProbeError::Program {
                    name: "tracepoint",
                    source,
                })
            })?;
            tp.attach("sched", name).map_err(|e| {
                or_permission(e, |source| ProbeError::Program {
                    name: "tracepoint",
                    source,
                })
            })?;
        }

        // The return program goes in first: a call that enters while only one of the two is
        // attached then shows as a return without entry, which is counted, instead of an
        // entry whose return never comes, which would pass for a call that never returned.
        for (prog, name) in [("call_return", "uretprobe"), ("call_entry", "uprobe")] {
            let p: &mut UProbe = ebpf
                .program_mut(prog)
                .ok_or(ProbeError::Missing("uprobe program"))?
                .try_into()
                .map_err(|source| ProbeError::Program { name, source })?;
            p.load()
                .map_err(|e| or_permission(e, |source| ProbeError::Program { name, source }))?;
            for (path, points) in &targets {
                attach_points(p, path, points)?;
            }
        }

        let ring = take_map(&mut ebpf, "EVENTS")?;
        let stacks = take_map(&mut ebpf, "STACKS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        Ok(Tracer {
            ebpf,
            ring,
            stacks,
            counters,
            apis,
            libraries,
        })
    }

    /// Moves every event waiting in the ring buffer into `out`, and hands each stack copy to
    /// `on_sample` in place, in ring order (a call's copy comes before its event);
    /// undecodable items are counted in the return value, never dropped silently.
    pub fn drain(
        &mut self,
        out: &mut Vec<RawEvent>,
        on_sample: &mut dyn FnMut(&SampleView<'_>),
    ) -> u64 {
        let mut bad = 0;
        while let Some(item) = self.ring.next() {
            if is_sample(&item) {
                match parse_sample(&item) {
                    Ok(sample) => on_sample(&sample),
                    Err(err) => {
                        bad += 1;
                        tracing::warn!("undecodable ring buffer item: {err}");
                    }
                }
                continue;
            }
            match parse(&item) {
                Ok(ev) => out.push(ev),
                Err(err) => {
                    bad += 1;
                    tracing::warn!("undecodable ring buffer item: {err}");
                }
            }
        }
        bad
    }

    /// The ring buffer, to wait for readiness on.
    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.ring.as_fd()
    }

    /// The frames of a stack captured by the probes, innermost first.
    pub fn stack(&self, id: u32) -> Option<Vec<u64>> {
        let trace = self.stacks.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }

    /// The map of CPython layouts per process (`PY_PROCS`), for the thread that finds
    /// interpreters; `None` once taken.
    pub fn take_python_map(
        &mut self,
    ) -> Result<aya::maps::HashMap<MapData, u32, vramtrace_common::PyConfig>, ProbeError> {
        take_map(&mut self.ebpf, "PY_PROCS")
    }

    /// Loss and delivery counters, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let read = |index: u32| -> u64 {
            self.counters
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Counters {
            lost_ringbuf: read(counter::LOST_RINGBUF),
            lost_entry: read(counter::LOST_ENTRY),
            lost_exit: read(counter::LOST_EXIT),
            stack_failed: read(counter::STACK_FAILED) + read(counter::LOST_SAMPLE),
            return_without_entry: read(counter::RETURN_WITHOUT_ENTRY),
            submitted: read(counter::SUBMITTED),
            filter_full: read(counter::FILTER_FULL),
            seen_full: read(counter::SEEN_FULL),
            threads_full: read(counter::THREADS_FULL),
            unknown_api: read(counter::UNKNOWN_API),
            undecodable: 0,
        }
    }

    /// Adds a process to the PID filter (and so its future children).
    pub fn trace_pid(&mut self, pid: u32) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut("FILTER")
            .ok_or(ProbeError::Missing("FILTER map"))?;
        let mut filter_map: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: "FILTER",
                source,
            })?;
        filter_map
            .insert(&pid, &filter::TRACE, 0)
            .map_err(|source| ProbeError::Map {
                name: "FILTER",
                source,
            })
    }
}

/// Takes the map `name` out of the object as the typed map `T`.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

fn attach_points(p: &mut UProbe, path: &Path, points: &[(u64, u64)]) -> Result<(), ProbeError> {
    let attach_points: Vec<UProbeAttachPoint<'static>> = points
        .iter()
        .map(|&(offset, cookie)| UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        })
        .collect();
    p.attach(attach_points, path, UProbeScope::AllProcesses)
        .map_err(|e| {
            or_permission(e, |source| ProbeError::Attach {
                path: path.to_path_buf(),
                symbols: points.len(),
                source,
            })
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_field_offsets_in_a_format_file() {
        let format = "name: sched_process_fork\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n\
            \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(parse_field_offset(format, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(format, "parent_comm"), Some(8));
        assert_eq!(parse_field_offset(format, "group_dead"), Some(32));
        assert_eq!(parse_field_offset(format, "missing"), None);
    }
}
