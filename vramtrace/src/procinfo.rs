//! What `/proc` says about a traced process: names, parent, start time, container.
//!
//! Everything read here is controlled by the traced process (it can rename itself, put escape
//! sequences in its arguments), so every string goes through [`sanitize`] before it can reach
//! a terminal. Only `/proc/PID/stat` is required; the rest is best effort, because a zombie, a
//! kernel thread or a process owned by another user legitimately hides some of it.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use crate::trace::Process;

/// What could be read about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id, as the host sees it.
    pub pid: u32,
    /// Parent process id (`/proc/PID/stat` field 4).
    pub ppid: Option<u32>,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22). With the PID it
    /// identifies a process across PID reuse.
    pub start_time: Option<u64>,
    /// Short name, sanitized.
    pub comm: String,
    /// Command line, sanitized; empty for kernel threads and zombies.
    pub cmdline: Vec<String>,
    /// Executable path, sanitized, when readable.
    pub exe: Option<String>,
    /// Container id (64 hex digits) from the process's cgroup, when it runs in one.
    pub container: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` from `/proc/PID/environ`, sanitized, when set and readable.
    pub cuda_visible_devices: Option<String>,
    /// The Kubernetes pod it runs in, when it runs in one.
    pub pod: Option<Pod>,
}

/// The Kubernetes pod a process runs in. The UID comes from the process's cgroup (the kubelet
/// names the pod's cgroup after it), so it is there for every pod; the name and namespace only
/// where the pod itself holds them (see [`read_pod`]), never guessed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// The pod's UID, `8-4-4-4-12` hex digits (32 for a static pod's, which is a hash).
    pub uid: String,
    /// The pod's name, when the process's environment says it.
    pub name: Option<String>,
    /// The pod's namespace, when the pod's service-account mount or environment says it.
    pub namespace: Option<String>,
}

impl ProcInfo {
    /// The trace record for this process, under the trace-wide `id`.
    pub fn into_record(self, id: u32) -> Process {
        Process {
            id,
            pid: self.pid,
            start_time: self.start_time,
            ppid: self.ppid,
            comm: self.comm,
            cmdline: self.cmdline,
            exe: self.exe,
            container: self.container,
            cuda_visible_devices: self.cuda_visible_devices,
            pod_uid: self.pod.as_ref().map(|p| p.uid.clone()),
            pod_name: self.pod.as_ref().and_then(|p| p.name.clone()),
            pod_namespace: self.pod.and_then(|p| p.namespace),
        }
    }
}

/// Why a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The PID names no live process (or it exited while being read).
    #[error("no process with PID {pid}")]
    NoSuchProcess {
        /// The PID asked for.
        pid: u32,
    },
    /// A `/proc` file exists but could not be read (permissions, I/O).
    #[error("reading {} failed", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// `/proc/PID/stat` did not have the expected shape.
    #[error("{} is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
    },
}

/// The fields of `/proc/PID/stat` that vramtrace uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 2, without the parentheses. Unsanitized.
    pub comm: String,
    /// Field 4.
    pub ppid: u32,
    /// Field 22, clock ticks after boot.
    pub start_time: u64,
}

/// Parses one `/proc/PID/stat` line.
///
/// The name (field 2) is in parentheses and may itself contain spaces, parentheses and any
/// other byte but NUL, so it runs from the first `(` to the *last* `)`: the fields after it
/// are numbers and a state letter, which never contain `)`.
pub fn parse_stat(line: &str) -> Result<Stat, &'static str> {
    let open = line.find('(').ok_or("no '(' before the name")?;
    let close = line.rfind(')').ok_or("no ')' after the name")?;
    if close < open {
        return Err("')' before '('");
    }
    let comm = line[open + 1..close].to_string();
    // Fields from 3 (state) on; index = field number - 3.
    let rest: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied().ok_or("too few fields");
    let ppid = field(4)?
        .parse()
        .map_err(|_| "field 4 (ppid) is not a number")?;
    let start_time = field(22)?
        .parse()
        .map_err(|_| "field 22 (starttime) is not a number")?;
    Ok(Stat {
        comm,
        ppid,
        start_time,
    })
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// True for the errors that mean "this process is gone" rather than "cannot read it".
fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

fn read_stat(pid: u32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, "stat");
    // PID 0 is no process; `/proc/0` does not exist either, but say so without asking.
    if pid == 0 {
        return Err(ProcError::NoSuchProcess { pid });
    }
    let bytes = fs::read(&path).map_err(|source| {
        if is_gone(&source) {
            ProcError::NoSuchProcess { pid }
        } else {
            ProcError::Read {
                path: path.clone(),
                source,
            }
        }
    })?;
    // The name may hold bytes that are not UTF-8; the numbers after it are ASCII.
    let line = String::from_utf8_lossy(&bytes);
    parse_stat(&line).map_err(|reason| ProcError::Malformed { path, reason })
}

/// Reads what `/proc` says about `pid`.
///
/// Fails only when the process does not exist or its `stat` cannot be read; the other fields
/// are `None` or empty when the system hides them.
pub fn read_process(pid: u32) -> Result<ProcInfo, ProcError> {
    let stat = read_stat(pid)?;
    // `comm` in `/proc/PID/comm` and in `stat` is the same 16-byte name; `stat` already has
    // it, so there is no second read to race with an exit.
    let cmdline = fs::read(proc_path(pid, "cmdline"))
        .map(|bytes| split_cmdline(&bytes))
        .unwrap_or_default();
    let exe = fs::read_link(proc_path(pid, "exe"))
        .ok()
        .map(|p| sanitize(&p.to_string_lossy()));
    let cgroup = fs::read_to_string(proc_path(pid, "cgroup")).unwrap_or_default();
    let container = container_id(&cgroup);
    // Only the owner and root may read it; unreadable is unknown, like unset.
    let environ = fs::read(proc_path(pid, "environ")).unwrap_or_default();
    let cuda_visible_devices = env_var(&environ, "CUDA_VISIBLE_DEVICES");
    let pod = pod_uid(&cgroup).map(|uid| read_pod(pid, uid, &environ));
    Ok(ProcInfo {
        pid,
        ppid: Some(stat.ppid),
        start_time: Some(stat.start_time),
        comm: sanitize(&stat.comm),
        cmdline,
        exe,
        container,
        cuda_visible_devices,
        pod,
    })
}

/// Where the kubelet writes a pod's namespace, in every container that mounts the pod's
/// service-account token (the default). Relative to the container's root.
const SERVICE_ACCOUNT_NAMESPACE: &str = "var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The name and namespace of the pod `uid` that `pid` runs in, from what the pod holds:
///
/// - the namespace from the service-account mount the kubelet makes in the container (read
///   inside the process's root, see [`read_in_root`]), else from `POD_NAMESPACE`, the usual
///   name of a downward-API variable;
/// - the name from `POD_NAME` (downward API), else from `HOSTNAME`, which the runtime sets to
///   the pod's hostname: its name unless the pod sets `spec.hostname`. `HOSTNAME` is taken only
///   when `KUBERNETES_SERVICE_HOST` is set too, which the kubelet puts in every container, so
///   that a process that only sits in a pod's cgroup (a `nsenter`ed one) is not named after
///   the node.
///
/// The process controls all of these, so a value that is not shaped like a Kubernetes name
/// (a DNS label for a namespace, a DNS subdomain for a pod) is left out.
pub fn read_pod(pid: u32, uid: String, environ: &[u8]) -> Pod {
    let mounted = read_in_root(pid, SERVICE_ACCOUNT_NAMESPACE, 256)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    pod_from_env(uid, environ, mounted)
}

/// [`read_pod`] once the files are read: `mounted` is the service-account mount's namespace.
fn pod_from_env(uid: String, environ: &[u8], mounted: Option<String>) -> Pod {
    let var = |name| env_var(environ, name).filter(|v| !v.is_empty());
    let in_kubernetes = var("KUBERNETES_SERVICE_HOST").is_some();
    Pod {
        uid,
        name: var("POD_NAME")
            .or_else(|| var("HOSTNAME").filter(|_| in_kubernetes))
            .filter(|n| is_dns_name(n, 253, true)),
        namespace: mounted
            .or_else(|| var("POD_NAMESPACE"))
            .filter(|n| is_dns_name(n, 63, false)),
    }
}

/// A DNS label (`dots` false) or subdomain (`dots` true) as Kubernetes names objects: at most
/// `max` lower-case letters, digits, '-' (and '.'), starting and ending with a letter or digit.
fn is_dns_name(s: &str, max: usize, dots: bool) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| ok(b) || b == b'-' || (dots && b == b'.'))
        && s.bytes().next().is_some_and(ok)
        && s.bytes().last().is_some_and(ok)
}

/// Reads at most `max` bytes of the regular file `path` inside the root directory of `pid`, as
/// the process would see it (see [`open_in_root`]). `None` when it cannot be read.
pub fn read_in_root(pid: u32, path: &str, max: usize) -> Option<String> {
    let file = open_in_root(pid, Path::new(path)).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(max as u64).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Opens `path` for reading inside the root directory of `pid`, as the process would see it:
/// every symbolic link on the way, absolute ones included, resolves within that root. Through
/// `/proc/PID/root/PATH` alone an absolute link would resolve in the reader's root: a
/// container's `/var/run -> /run` or `/usr/lib64 -> /usr/lib` would miss or find the host's
/// file, and a link a process planted would open a file of the host's.
pub fn open_in_root(pid: u32, path: &Path) -> io::Result<fs::File> {
    open_beneath(&root_of(pid)?, path)
}

/// The root directory of `pid`, open: what [`open_beneath`] resolves paths in for it.
pub fn root_of(pid: u32) -> io::Result<fs::File> {
    fs::File::open(proc_path(pid, "root"))
}

/// Opens `path` (absolute or relative, both taken from `root`) for reading with the directory
/// `root` as its `/`: `openat2` with `RESOLVE_IN_ROOT`, so that neither `..` nor a symbolic
/// link, absolute or relative, leaves it, and with `RESOLVE_NO_MAGICLINKS`, so that no
/// `/proc/*/fd` link inside it does either. Fails on a kernel without `openat2` (before 5.6).
pub fn open_beneath(root: &fs::File, path: &Path) -> io::Result<fs::File> {
    let path = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: open_how is three integers; all zero is a valid value, set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the directory descriptor is open for the call's length, `path` is a
    // NUL-terminated string that lives through it, and `how` is an `open_how` of the size
    // passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("openat2 gave no descriptor"))?;
    // SAFETY: `fd` was just returned by openat2 and is owned by nothing else.
    Ok(fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Finds the UID of the Kubernetes pod in the text of `/proc/PID/cgroup`.
///
/// The kubelet makes one cgroup per pod under its `kubepods` root, named after the pod's UID:
/// with the cgroupfs driver `/kubepods/<qos>/pod<uid>/` (`/kubepods/pod<uid>/` for a
/// Guaranteed pod), with the systemd driver
/// `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _ for ->.slice/`; both under
/// cgroup v1 (one line per hierarchy) and v2 (`0::`). Only a path under a `kubepods` component
/// counts.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let mut components = path.split('/');
        components.find(|c| c.contains("kubepods"))?;
        components.find_map(pod_uid_in_component)
    })
}

fn pod_uid_in_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-").to_ascii_lowercase();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    let uuid = groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| hex(g, n));
    (uuid || hex(&uid, 32)).then_some(uid)
}

/// The value of `name` in the bytes of `/proc/PID/environ` (`NAME=value` entries separated by
/// NUL), sanitized. That file holds the environment the process started with: a change the
/// process makes later (`os.environ[...] = ...` before CUDA initializes) is not in it.
fn env_var(environ: &[u8], name: &str) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(sanitize(&String::from_utf8_lossy(value)))
    })
}

/// Splits `/proc/PID/cmdline` (arguments separated and ended by NUL) into sanitized strings.
fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| sanitize(&String::from_utf8_lossy(arg)))
        .collect()
}

/// True when a process with this PID exists now (zombies included).
pub fn process_exists(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}/stat")).exists()
}

/// The start time of `pid` in clock ticks after boot, when the process exists.
pub fn start_time(pid: u32) -> Option<u64> {
    read_stat(pid).ok().map(|s| s.start_time)
}

/// Finds a container id in the text of `/proc/PID/cgroup`.
///
/// Container runtimes name the process's cgroup after the 64-hex-digit container id:
/// `/docker/<id>` (cgroupfs driver), `/system.slice/docker-<id>.scope` (systemd driver),
/// `.../cri-containerd-<id>.scope`, `.../crio-<id>.scope`, `.../libpod-<id>.scope` (podman),
/// and Kubernetes' cgroupfs layout `/kubepods/<qos>/pod<uid>/<id>`. The innermost matching
/// path component wins. Runtime helpers (`crio-conmon-<id>`, `libpod-conmon-<id>`) run
/// outside the container and are not matched.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        // hierarchy-ID:controller-list:cgroup-path; the path may contain ':'.
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(container_id_in_component)
    })
}

fn container_id_in_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|prefix| name.strip_prefix(prefix))
    .unwrap_or(name);
    // Reject other prefixes ("crio-conmon-<id>") by requiring the id to be all that is left.
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// Makes an untrusted string safe to print to a terminal.
///
/// Removes terminal escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ST`, and
/// two-byte `ESC x`), C0 and C1 control characters and DEL, and the Unicode bidirectional
/// overrides that can make text display differently from what it is. Tabs and line breaks
/// become spaces, so words stay apart.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in 0x40..=0x7e.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS, SOS, PM, APC: a string ended by BEL or ST (`ESC \`).
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Any other escape is two characters long.
                _ => {}
            },
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_test_process_itself() {
        let pid = std::process::id();
        let info = read_process(pid).expect("the test process exists");
        assert_eq!(info.pid, pid);
        let ppid = std::os::unix::process::parent_id();
        assert_eq!(info.ppid, Some(ppid));
        assert!(info.start_time.is_some());
        assert_eq!(start_time(pid), info.start_time);
        assert!(!info.comm.is_empty());
        let expected_comm = fs::read_to_string("/proc/self/comm").expect("own comm");
        assert_eq!(info.comm, expected_comm.trim_end());
        let args: Vec<String> = std::env::args().collect();
        assert_eq!(info.cmdline, args);
        let exe = std::env::current_exe().expect("own exe");
        assert_eq!(info.exe.as_deref(), exe.to_str());
        assert!(process_exists(pid));

        let record = info.clone().into_record(7);
        assert_eq!(record.id, 7);
        assert_eq!(record.pid, pid);
        assert_eq!(record.comm, info.comm);
        assert_eq!(record.start_time, info.start_time);
    }

    #[test]
    fn a_missing_pid_is_a_clear_error() {
        // PIDs are at most 2^22 on Linux, so this one cannot exist.
        let pid = 4_194_304 + 4242;
        let err = read_process(pid).expect_err("no such process");
        assert!(matches!(err, ProcError::NoSuchProcess { .. }));
        assert_eq!(err.to_string(), format!("no process with PID {pid}"));
        assert!(!process_exists(pid));
        assert_eq!(start_time(pid), None);
        assert_eq!(
            read_process(0).expect_err("PID 0").to_string(),
            "no process with PID 0"
        );
        assert!(!process_exists(0));
    }

    fn stat_line(comm: &str) -> String {
        format!(
            "4242 ({comm}) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 \
             1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0"
        )
    }

    #[test]
    fn parses_stat_with_tricky_names() {
        for comm in [
            "python3",
            "my prog",
            "a) S 1 2 3 (",
            ")",
            "((",
            "",
            "x) 99 99",
            "pt_main_thread",
        ] {
            let stat = parse_stat(&stat_line(comm)).expect(comm);
            assert_eq!(stat.comm, comm);
            assert_eq!(stat.ppid, 17, "{comm}");
            assert_eq!(stat.start_time, 98765, "{comm}");
        }
    }

    #[test]
    fn rejects_malformed_stat() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("4242 comm S 1").is_err());
        assert!(parse_stat("4242 (comm) S 1 2 3").is_err());
        assert!(
            parse_stat("4242 (comm) S x 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20").is_err()
        );
        assert!(parse_stat(") 4242 (").is_err());
    }

    const ID: &str = "3f4b9a2c1d0e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a";

    #[test]
    fn finds_container_ids_in_cgroups() {
        let samples = [
            format!("12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/kubepods.slice/kubepods-pod99.slice/crio-{ID}.scope\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"
            ),
            format!(
                "11:cpu,cpuacct:/kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-0123456789ab/{ID}\n"
            ),
            format!("0::/docker/{}\n", ID.to_ascii_uppercase()),
        ];
        for text in &samples {
            assert_eq!(container_id(text).as_deref(), Some(ID), "{text}");
        }
    }

    #[test]
    fn no_container_id_outside_containers() {
        for text in [
            "0::/\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "4:memory:/process_api/fc8a5fdedaf03654c0e6c7d1b05cecde\n0::/\n",
            &format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
            &format!("0::/system.slice/crio-conmon-{ID}.scope\n"),
            &format!("0::/system.slice/docker-{}.scope\n", &ID[..63]),
            "",
            "garbage",
        ] {
            assert_eq!(container_id(text), None, "{text}");
        }
        // Here, too: the test process runs on the host or in a container; either way it
        // must not panic, and an id, when found, has the right shape.
        if let Ok(text) = fs::read_to_string("/proc/self/cgroup")
            && let Some(id) = container_id(&text)
        {
            assert_eq!(id.len(), 64);
        }
    }

    const UID: &str = "0f1e2d3c-aaaa-4bbb-8ccc-0123456789ab";

    /// `/proc/PID/cgroup` of a container process in a pod, as each runtime and cgroup driver
    /// lays it out, with the container id and pod UID each should give.
    fn pod_samples() -> Vec<(String, &'static str)> {
        let u = UID.replace('-', "_");
        vec![
            // containerd, systemd driver, cgroup v2 (kubeadm's default today).
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/\
                     kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"
                ),
                UID,
            ),
            // CRI-O, systemd driver, cgroup v2, a Guaranteed pod (no QoS level).
            (
                format!("0::/kubepods.slice/kubepods-pod{u}.slice/crio-{ID}.scope\n"),
                UID,
            ),
            // containerd, cgroupfs driver, cgroup v1: one line per hierarchy.
            (
                format!(
                    "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
                     11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n\
                     1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n"
                ),
                UID,
            ),
            // CRI-O, cgroupfs driver, cgroup v2, Guaranteed.
            (format!("0::/kubepods/pod{UID}/crio-{ID}\n"), UID),
            // Docker (dockershim or cri-dockerd), systemd driver, cgroup v1.
            (
                format!(
                    "4:memory:/kubepods.slice/kubepods-besteffort.slice/\
                     kubepods-besteffort-pod{u}.slice/docker-{ID}.scope\n"
                ),
                UID,
            ),
            // kind: the node is itself a container, the kubelet's root nested in it.
            (
                format!(
                    "0::/system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/\
                     kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/\
                     cri-containerd-{ID}.scope\n",
                    "ab".repeat(32)
                ),
                UID,
            ),
            // A static pod: its UID is a 32-digit hash.
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/\
                     kubepods-burstable-pod6e1b7a5c9d3f4e2a8b0c1d2e3f4a5b6c.slice/\
                     cri-containerd-{ID}.scope\n"
                ),
                "6e1b7a5c9d3f4e2a8b0c1d2e3f4a5b6c",
            ),
        ]
    }

    #[test]
    fn finds_pod_uids_and_container_ids_of_each_runtime() {
        for (text, uid) in pod_samples() {
            assert_eq!(pod_uid(&text).as_deref(), Some(uid), "{text}");
            // The container is the innermost id, not the kind node's.
            assert_eq!(container_id(&text).as_deref(), Some(ID), "{text}");
        }
    }

    #[test]
    fn no_pod_outside_kubernetes() {
        for text in [
            "0::/\n".to_owned(),
            "0::/user.slice/user-1000.slice/session-2.scope\n".to_owned(),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:memory:/docker/{ID}\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            // A pod-shaped name outside a kubepods root is not a pod.
            format!("0::/system.slice/pod{UID}.slice\n"),
            // The pod's own cgroup name cut short, or not hex.
            "0::/kubepods.slice/kubepods-pod0f1e2d3c_aaaa.slice\n".to_owned(),
            "0::/kubepods/besteffort/podzzzzzzzz-aaaa-4bbb-8ccc-0123456789ab/x\n".to_owned(),
            // The kubepods slices above any pod (a QoS-level process).
            "0::/kubepods.slice/kubepods-burstable.slice\n".to_owned(),
            String::new(),
        ] {
            assert_eq!(pod_uid(&text), None, "{text}");
        }
    }

    #[test]
    fn pod_name_and_namespace_only_where_the_pod_says_them() {
        let uid = || UID.to_owned();
        let k8s = b"PATH=/bin\0HOSTNAME=vllm-7d9f-x2\0KUBERNETES_SERVICE_HOST=10.96.0.1\0";
        let pod = pod_from_env(uid(), k8s, Some("inference".into()));
        assert_eq!(pod.uid, UID);
        assert_eq!(pod.name.as_deref(), Some("vllm-7d9f-x2"));
        assert_eq!(pod.namespace.as_deref(), Some("inference"));
        // The downward API's variables, where the pod spec sets them, say it outright.
        let downward =
            b"HOSTNAME=custom-host\0KUBERNETES_SERVICE_HOST=10.96.0.1\0POD_NAME=trainer-0\0POD_NAMESPACE=ml\0";
        let pod = pod_from_env(uid(), downward, None);
        assert_eq!(pod.name.as_deref(), Some("trainer-0"));
        assert_eq!(pod.namespace.as_deref(), Some("ml"));
        // The mount wins over a variable that could be anything.
        let pod = pod_from_env(uid(), downward, Some("kube-ml".into()));
        assert_eq!(pod.namespace.as_deref(), Some("kube-ml"));
        // HOSTNAME without the kubelet's variables is the host's or a runtime's name.
        let pod = pod_from_env(uid(), b"HOSTNAME=node-3\0", None);
        assert_eq!((pod.name, pod.namespace), (None, None));
        let pod = pod_from_env(uid(), b"", None);
        assert_eq!((pod.name, pod.namespace), (None, None));
    }

    #[test]
    fn pod_names_that_are_not_kubernetes_names_are_left_out() {
        let env = b"KUBERNETES_SERVICE_HOST=10.96.0.1\0HOSTNAME=Evil\x1b[31m\0POD_NAMESPACE=a/b\0";
        let pod = pod_from_env(UID.to_owned(), env, None);
        assert_eq!((pod.name, pod.namespace), (None, None));
        let pod = pod_from_env(UID.to_owned(), b"", Some("x".repeat(64)));
        assert_eq!(pod.namespace, None);
        let env = b"POD_NAME=web-0.shard-a\0";
        let pod = pod_from_env(UID.to_owned(), env, Some("kube-system".into()));
        assert_eq!(pod.name.as_deref(), Some("web-0.shard-a"));
        assert_eq!(pod.namespace.as_deref(), Some("kube-system"));
    }

    /// A thread with a root of its own (`unshare(CLONE_FS)`, `chroot`), as a container's
    /// process has: the service-account file is found through the image's absolute
    /// `/var/run -> /run` link, and a link a process planted towards a host file reads nothing.
    /// Needs root (chroot), as CI is.
    #[test]
    fn reads_inside_the_process_root_with_its_own_links() {
        let image = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        let secret = host.path().join("secret");
        fs::write(&secret, "host-secret").expect("host file");
        let sa = image
            .path()
            .join("run/secrets/kubernetes.io/serviceaccount");
        fs::create_dir_all(&sa).expect("mkdir");
        fs::write(sa.join("namespace"), "inference\n").expect("namespace");
        fs::create_dir_all(image.path().join("var")).expect("mkdir");
        std::os::unix::fs::symlink("/run", image.path().join("var/run")).expect("symlink");
        std::os::unix::fs::symlink(&secret, image.path().join("leak")).expect("symlink");

        let (namespace, leaked, through_proc) =
            crate::testing::with_own_root(image.path(), |tid| {
                (
                    read_in_root(tid, SERVICE_ACCOUNT_NAMESPACE, 256),
                    read_in_root(tid, "leak", 256),
                    fs::read_to_string(proc_path(tid, "root").join("leak")).ok(),
                )
            });
        assert_eq!(namespace.as_deref(), Some("inference\n"));
        assert_eq!(leaked, None);
        // Through /proc/TID/root alone, the planted link reads the host's file.
        assert_eq!(through_proc.as_deref(), Some("host-secret"));
    }

    #[test]
    fn the_test_process_is_read_without_a_pod_unless_in_one() {
        let me = read_process(std::process::id()).expect("self");
        let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        assert_eq!(me.pod.as_ref().map(|p| p.uid.clone()), pod_uid(&cgroup));
    }

    #[test]
    fn env_var_finds_the_whole_name_only() {
        let environ = b"PATH=/bin\0XCUDA_VISIBLE_DEVICES=9\0CUDA_VISIBLE_DEVICES=1,GPU-ab\0";
        assert_eq!(
            env_var(environ, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some("1,GPU-ab")
        );
        assert_eq!(
            env_var(b"CUDA_VISIBLE_DEVICES=\0", "CUDA_VISIBLE_DEVICES").as_deref(),
            Some("")
        );
        assert_eq!(
            env_var(b"CUDA_VISIBLE_DEVICESX=1", "CUDA_VISIBLE_DEVICES"),
            None
        );
        assert_eq!(env_var(b"", "CUDA_VISIBLE_DEVICES"), None);
    }

    #[test]
    fn sanitize_strips_escapes_and_controls() {
        assert_eq!(sanitize("python3"), "python3");
        assert_eq!(sanitize("naïve 名前"), "naïve 名前");
        assert_eq!(sanitize("\x1b[2J\x1b[31mred\x1b[0m"), "red");
        assert_eq!(sanitize("a\x1b]0;evil title\x07b"), "ab");
        assert_eq!(
            sanitize("a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b"),
            "alinkb"
        );
        assert_eq!(sanitize("a\x1bcb"), "ab");
        assert_eq!(sanitize("tab\there\nnl\r"), "tab here nl ");
        assert_eq!(sanitize("bell\x07del\x7f\u{9b}31m"), "belldel31m");
        assert_eq!(sanitize("abc\u{202e}fdp.exe"), "abcfdp.exe");
        assert_eq!(sanitize("trailing\x1b"), "trailing");
        assert_eq!(sanitize("\x1b[12;"), "");
        assert_eq!(sanitize("\x1b[1;31mx"), "x");
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(split_cmdline(b""), Vec::<String>::new());
        assert_eq!(
            split_cmdline(b"python\0-c\0print(1)\0"),
            ["python", "-c", "print(1)"]
        );
        assert_eq!(split_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        // A process that rewrote its argv may leave no trailing NUL.
        assert_eq!(split_cmdline(b"nginx: worker"), ["nginx: worker"]);
        assert_eq!(split_cmdline(b"x\x1b[2J\0"), ["x"]);
    }
}
