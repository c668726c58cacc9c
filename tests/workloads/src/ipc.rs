//! Memory shared between two processes: the exporter (`ipc`) allocates, exports by every
//! way the driver offers (IPC handles, a pool pointer, a shareable VMM handle) and spawns the
//! importer (`ipc-importer`, this same program), which maps everything, uses and closes it.
//! The exporter frees one allocation while the importer still maps it.
//!
//! The handles and the file descriptor go to the importer through its environment (the
//! descriptor is inherited); the two talk over the importer's stdin and stdout: it writes
//! `opened` once its mappings are made, waits for a line on stdin, closes the rest, and
//! writes its ground truth as its last line, which the exporter puts in its own.

use std::ffi::{c_int, c_uint};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::book::Label::{KvCache, Weights};
use crate::call;
use crate::driver::*;
use crate::rt::{MIB, Rt, SyncPoint};
use crate::scenarios::Extra;

/// `CUipcMemHandle`, `CUmemPoolPtrExportData`: 64 opaque bytes, passed by value to
/// `cuIpcOpenMemHandle`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handle64 {
    pub reserved: [u8; 64],
}

pub type FnIpcGet = unsafe extern "C" fn(*mut Handle64, u64) -> R;
pub type FnIpcOpen = unsafe extern "C" fn(*mut u64, Handle64, c_uint) -> R;
pub type FnPoolExport = unsafe extern "C" fn(*mut Handle64, u64) -> R;
pub type FnPoolImport = unsafe extern "C" fn(*mut u64, P, *const Handle64) -> R;
pub type FnShExport = unsafe extern "C" fn(P, u64, c_int, u64) -> R;
pub type FnShImport = unsafe extern "C" fn(*mut u64, P, c_int) -> R;
pub type FnRetain = unsafe extern "C" fn(*mut u64, P) -> R;
pub type FnPoolShExport = unsafe extern "C" fn(P, P, c_int, u64) -> R;
pub type FnPoolShImport = unsafe extern "C" fn(*mut P, P, c_int, u64) -> R;

/// `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`.
const LAZY_PEER_ACCESS: c_uint = 1;
/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`.
const POSIX_FD: c_int = 1;

const SHARED_BYTES: u64 = 16 * MIB;
const KEPT_BYTES: u64 = 8 * MIB;
const POOL_BYTES: u64 = 4 * MIB;
const VMM_BYTES: u64 = 2 * MIB;

const ENV_HANDLES: &str = "VRAMTRACE_WORKLOAD_IPC_HANDLES";
const ENV_FD: &str = "VRAMTRACE_WORKLOAD_IPC_FD";
const ENV_POOL_FD: &str = "VRAMTRACE_WORKLOAD_IPC_POOL_FD";

/// Lets a child inherit `fd` across exec: the driver may make its descriptors
/// close-on-exec.
fn inheritable(fd: c_int) -> anyhow::Result<()> {
    // SAFETY: F_SETFD on a descriptor this process holds; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        bail!(
            "fcntl(F_SETFD) on descriptor {fd}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn hex(h: &Handle64) -> String {
    h.reserved.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Handle64> {
    let mut h = Handle64 { reserved: [0; 64] };
    if s.len() != 128 {
        bail!("a handle is 128 hex digits, got {}", s.len());
    }
    for (i, b) in h.reserved.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).context("hex handle")?;
    }
    Ok(h)
}

/// What a shared descriptor is, as the kernel shows it: what it links to, its file type,
/// device and inode, and its fdinfo. Whether two processes' descriptors of one export can be
/// told to be the same object depends on it.
fn describe_fd(fd: c_int) -> Value {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = format!("/proc/self/fd/{fd}");
    let link = std::fs::read_link(&path).map(|p| p.display().to_string());
    let meta = std::fs::metadata(&path);
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"));
    json!({
        "link": link.unwrap_or_else(|e| e.to_string()),
        "char_device": meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()),
        "dev": meta.as_ref().map_or(0, |m| m.dev()),
        "rdev": meta.as_ref().map_or(0, |m| m.rdev()),
        "ino": meta.as_ref().map_or(0, |m| m.ino()),
        "fdinfo": fdinfo.unwrap_or_else(|e| e.to_string()),
    })
}

/// The exporter: 16 MiB and 8 MiB by `cuMemAlloc_v2` shared by IPC handle (the 16 MiB freed
/// while the importer maps it), 4 MiB from a pool made shareable (exported by POSIX
/// descriptor, its pointer by export data), 2 MiB of VMM memory made shareable, by POSIX
/// descriptor. 8 + 4 MiB live at exit. Only what was made shareable exports, on NVIDIA's
/// driver as on the simulated one: not the default pool's pointers, not memory made without
/// `requestedHandleTypes`.
pub fn exporter(rt: &Rt, lib: &str) -> anyhow::Result<Extra> {
    let d = &rt.d;
    let v = CUDA_VERSION;
    let get: Sym<FnIpcGet> = d.resolve("cuIpcGetMemHandle", v, 0, "cuIpcGetMemHandle")?;
    let pool_export: Sym<FnPoolExport> =
        d.resolve("cuMemPoolExportPointer", v, 0, "cuMemPoolExportPointer")?;
    let sh_export: Sym<FnShExport> = d.resolve(
        "cuMemExportToShareableHandle",
        v,
        0,
        "cuMemExportToShareableHandle",
    )?;
    let pool_sh_export: Sym<FnPoolShExport> = d.resolve(
        "cuMemPoolExportToShareableHandle",
        v,
        0,
        "cuMemPoolExportToShareableHandle",
    )?;
    let pool = rt
        .pool_create_shareable(1, 1, rt.device, POSIX_FD as u32)
        .context("ipc: a shareable pool")?;
    let (Some(a), Some(b), Some(p), Some(vmm)) = (
        rt.alloc(SHARED_BYTES, Weights),
        rt.alloc(KEPT_BYTES, KvCache),
        rt.alloc_from_pool(rt.cu.alloc_from_pool, pool, POOL_BYTES),
        rt.mem_create_shareable(VMM_BYTES, Some(KvCache), POSIX_FD as u32),
    ) else {
        bail!("ipc: the exporter's allocations failed");
    };
    // The pool allocation is ready for another process once its stream has run.
    rt.sync(SyncPoint::Stream);
    let mut ha = Handle64 { reserved: [0; 64] };
    let mut hb = ha;
    let mut hp = ha;
    let mut fd: c_int = -1;
    let mut pool_fd: c_int = -1;
    let rets = [
        call!(d, get, &mut ha, a),
        call!(d, get, &mut hb, b),
        call!(
            d,
            pool_sh_export,
            (&mut pool_fd as *mut c_int).cast(),
            pool as P,
            POSIX_FD,
            0
        ),
        call!(d, pool_export, &mut hp, p),
        call!(
            d,
            sh_export,
            (&mut fd as *mut c_int).cast(),
            vmm,
            POSIX_FD,
            0
        ),
    ];
    if rets.iter().any(|&r| r != 0) {
        bail!("ipc: exports failed: {rets:?}");
    }
    inheritable(fd)?;
    inheritable(pool_fd)?;
    let descriptors = json!({"vmm": describe_fd(fd), "pool": describe_fd(pool_fd)});
    // Not the base of an allocation: CUDA_ERROR_INVALID_VALUE.
    let mut junk = Handle64 { reserved: [0; 64] };
    call!(d, get, &mut junk, a + 4096);

    let exe = std::env::current_exe().context("current_exe")?;
    let mut child = Command::new(exe)
        .args(["--lib", lib, "ipc-importer"])
        .env(
            ENV_HANDLES,
            format!("{},{},{}", hex(&ha), hex(&hb), hex(&hp)),
        )
        .env(ENV_FD, fd.to_string())
        .env(ENV_POOL_FD, pool_fd.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the importer")?;
    let mut lines = BufReader::new(child.stdout.take().context("importer stdout")?).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    if first != "opened" {
        bail!("ipc: the importer said {first:?}, not opened");
    }
    // Freed while the importer still maps it: the driver keeps it until its last close.
    rt.free(a);
    let mut stdin = child.stdin.take().context("importer stdin")?;
    writeln!(stdin, "go")?;
    drop(stdin);
    let mut last = String::new();
    for line in lines {
        last = line?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("ipc: the importer failed: {status}");
    }
    let importer: Value = serde_json::from_str(&last).context("the importer's ground truth")?;
    // SAFETY: closes the descriptors the exports made, once; the importer had its own copies.
    unsafe {
        libc::close(fd);
        libc::close(pool_fd);
    }
    rt.mem_release(vmm);
    let mut extra = Extra::new();
    extra.insert(
        "ipc".into(),
        json!({
            "addrs": {"a": a, "b": b, "p": p},
            "bytes": {"a": SHARED_BYTES, "b": KEPT_BYTES, "p": POOL_BYTES, "vmm": VMM_BYTES},
            "handles": {"a": hex(&ha), "b": hex(&hb), "p": hex(&hp)},
            "fd": fd,
            "pool_fd": pool_fd,
            "descriptors": descriptors,
            "importer": importer,
        }),
    );
    Ok(extra)
}

/// The importer: opens `a` twice (`cuIpcOpenMemHandle_v2`) and `b` once (the CUDA 4.1 name,
/// `cuIpcOpenMemHandle`), a handle it was never given (fails), imports the pool and then its
/// pointer, and the VMM handle (mapped, retained and released, unmapped); closes one open of
/// `a`, says `opened`, then on a line from stdin closes the rest, frees the pool pointer and
/// destroys the imported pool.
pub fn importer(rt: &Rt) -> anyhow::Result<Extra> {
    let d = &rt.d;
    let v = CUDA_VERSION;
    let handles = std::env::var(ENV_HANDLES).context("no handles given")?;
    let hs: Vec<Handle64> = handles.split(',').map(unhex).collect::<Result<_, _>>()?;
    let [ha, hb, hp] = hs[..] else {
        bail!("three handles expected");
    };
    let fd: c_int = std::env::var(ENV_FD)
        .context("no descriptor given")?
        .parse()?;
    let pool_fd: c_int = std::env::var(ENV_POOL_FD)
        .context("no pool descriptor given")?
        .parse()?;
    let open: Sym<FnIpcOpen> = d.resolve("cuIpcOpenMemHandle", v, 0, "cuIpcOpenMemHandle_v2")?;
    let open_v1: Sym<FnIpcOpen> = d.resolve("cuIpcOpenMemHandle", 4010, 0, "cuIpcOpenMemHandle")?;
    let close: Sym<FnU64> = d.resolve("cuIpcCloseMemHandle", v, 0, "cuIpcCloseMemHandle")?;
    let pool_import: Sym<FnPoolImport> =
        d.resolve("cuMemPoolImportPointer", v, 0, "cuMemPoolImportPointer")?;
    let sh_import: Sym<FnShImport> = d.resolve(
        "cuMemImportFromShareableHandle",
        v,
        0,
        "cuMemImportFromShareableHandle",
    )?;
    let retain: Sym<FnRetain> = d.resolve(
        "cuMemRetainAllocationHandle",
        v,
        0,
        "cuMemRetainAllocationHandle",
    )?;
    let pool_sh_import: Sym<FnPoolShImport> = d.resolve(
        "cuMemPoolImportFromShareableHandle",
        v,
        0,
        "cuMemPoolImportFromShareableHandle",
    )?;

    let (mut a, mut a2, mut b, mut p, mut bad) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut pool: P = std::ptr::null_mut();
    let mut rets = vec![
        call!(d, open, &mut a, ha, LAZY_PEER_ACCESS),
        call!(d, open, &mut a2, ha, LAZY_PEER_ACCESS),
        call!(d, open_v1, &mut b, hb, LAZY_PEER_ACCESS),
        call!(
            d,
            pool_sh_import,
            &mut pool,
            pool_fd as usize as P,
            POSIX_FD,
            0
        ),
    ];
    rets.push(call!(d, pool_import, &mut p, pool, &hp));
    // A handle no process made: CUDA_ERROR_INVALID_VALUE.
    let bad_ret = call!(
        d,
        open,
        &mut bad,
        Handle64 {
            reserved: [0x5a; 64]
        },
        LAZY_PEER_ACCESS
    );
    let mut h = 0u64;
    rets.push(call!(d, sh_import, &mut h, fd as usize as P, POSIX_FD));
    let va = rt.reserve(VMM_BYTES).context("reserve")?;
    rets.push(call!(d, rt.cu.map, va, VMM_BYTES as usize, 0, h, 0));
    rt.set_access(va, VMM_BYTES);
    let mut retained = 0u64;
    rets.push(call!(d, retain, &mut retained, va as P));
    rets.push(call!(d, rt.cu.mem_release, retained));
    rets.push(call!(d, rt.cu.unmap, va, VMM_BYTES as usize));
    rets.push(call!(d, rt.cu.mem_release, h));
    rt.addr_free(va, VMM_BYTES);
    rets.push(call!(d, close, a));
    if rets.iter().any(|&r| r != 0) || a != a2 || retained != h {
        bail!("ipc-importer: {rets:?}, a {a:#x} a2 {a2:#x}, retained {retained:#x} h {h:#x}");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "opened")?;
    out.flush()?;
    drop(out);
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let rets = [
        call!(d, close, a),
        call!(d, close, b),
        call!(d, rt.cu.mem_free, p),
        call!(d, rt.cu.pool_destroy, pool),
    ];
    if rets.iter().any(|&r| r != 0) {
        bail!("ipc-importer: closing failed: {rets:?}");
    }
    let mut extra = Extra::new();
    extra.insert(
        "ipc".into(),
        json!({
            "addrs": {"a": a, "b": b, "p": p, "vmm": va},
            "vmm_handle": h,
            "bad_open_ret": bad_ret,
        }),
    );
    Ok(extra)
}
