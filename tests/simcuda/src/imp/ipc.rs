//! Memory shared between simulated processes: legacy IPC handles (`cuIpc*MemHandle`), pool
//! pointer export and import, shareable VMM handles (POSIX file descriptors) and
//! `cuMemRetainAllocationHandle`.
//!
//! Each process has its own simulated driver, so what another process needs is written into
//! the 64 bytes it is given (an IPC handle, pool pointer export data, or the contents of the
//! memfd a shareable handle is): a tag, the exporter's pid, device, address or handle, size,
//! and a serial that makes each export unique. The importer gets its own address for the
//! mapping (from its device's address range, never charged: the memory is the exporter's).

use std::ffi::{c_int, c_uint, c_void};

use super::{
    CUdeviceptr, CUresult, GRANULE, INVALID_CONTEXT, INVALID_DEVICE, INVALID_HANDLE, INVALID_VALUE,
    NOT_SUPPORTED, Phys, State, code, nonnull, put, round_up, with,
};

/// `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`: the only flag `cuIpcOpenMemHandle` takes.
const IPC_MEM_LAZY_ENABLE_PEER_ACCESS: c_uint = 1;
/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`.
const HANDLE_TYPE_POSIX_FD: c_int = 1;

const TAG_IPC: u64 = u64::from_le_bytes(*b"SIMCUIPC");
const TAG_POOL: u64 = u64::from_le_bytes(*b"SIMCUPTR");
const TAG_VMM: u64 = u64::from_le_bytes(*b"SIMCUVMM");
const TAG_MEMPOOL: u64 = u64::from_le_bytes(*b"SIMCPOOL");

/// `CUipcMemHandle` and `CUmemPoolPtrExportData`: 64 opaque bytes (`char reserved[64]`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IpcMemHandle {
    pub reserved: [u8; 64],
}

/// What the 64 bytes say.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shared {
    tag: u64,
    pid: u32,
    dev: usize,
    /// The exporter's address, or its VMM handle.
    at: u64,
    size: u64,
    serial: u64,
    /// The exporter's pool: of a pool pointer, or the pool itself.
    pool: u64,
}

impl Shared {
    fn encode(&self) -> [u8; 64] {
        let words = [
            self.tag,
            u64::from(self.pid),
            self.dev as u64,
            self.at,
            self.size,
            self.serial,
            self.pool,
            0,
        ];
        let mut out = [0u8; 64];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// The bytes, checked: a tag of `tag`, from another process that still runs, for a device
    /// of this one.
    fn decode(bytes: &[u8; 64], tag: u64, st: &State) -> Result<Shared, CUresult> {
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        if w(0) != tag {
            return Err(INVALID_VALUE);
        }
        let s = Shared {
            tag,
            pid: u32::try_from(w(1)).map_err(|_| INVALID_VALUE)?,
            dev: usize::try_from(w(2)).map_err(|_| INVALID_VALUE)?,
            at: w(3),
            size: w(4),
            serial: w(5),
            pool: w(6),
        };
        if s.pid == std::process::id() {
            // Memory of this very process cannot be opened as another's.
            return Err(INVALID_CONTEXT);
        }
        if !std::path::Path::new(&format!("/proc/{}", s.pid)).exists() {
            return Err(INVALID_HANDLE);
        }
        if s.dev >= st.devices.len() {
            return Err(INVALID_DEVICE);
        }
        Ok(s)
    }
}

/// A mapping of another process's memory.
pub(super) struct Import {
    size: u64,
    /// `cuIpcOpenMemHandle` counts opens of the same handle (one address, closed as often as
    /// opened); a pool pointer import is freed once.
    opens: u32,
    pool: bool,
    /// The exporter's (pid, address), to give a second open the same address.
    key: (u32, u64),
}

impl State {
    fn export_serial(&mut self) -> u64 {
        self.exports += 1;
        self.exports
    }

    /// A fresh address on `dev` for another process's memory: address space only.
    fn map_foreign(&mut self, dev: usize, size: u64) -> Result<u64, CUresult> {
        let span = round_up(size.max(1), GRANULE);
        let d = &mut self.devices[dev];
        if d.next + span > d.end {
            return Err(super::OUT_OF_MEMORY);
        }
        let a = d.next;
        d.next += span;
        Ok(a)
    }

    fn import(&mut self, s: &Shared, pool: bool) -> Result<u64, CUresult> {
        self.current()?;
        let key = (s.pid, s.at);
        if let Some((&addr, imp)) = self.imports.iter_mut().find(|(_, i)| i.key == key) {
            if pool {
                // A pointer is imported once per process.
                return Err(INVALID_VALUE);
            }
            imp.opens += 1;
            return Ok(addr);
        }
        let addr = self.map_foreign(s.dev, s.size)?;
        self.imports.insert(
            addr,
            Import {
                size: s.size,
                opens: 1,
                pool,
                key,
            },
        );
        Ok(addr)
    }

    /// `cuMemFree*` of an imported pool pointer ends it. Whether `ptr` was one; an IPC
    /// mapping is closed with `cuIpcCloseMemHandle`, not freed.
    pub(super) fn free_import(&mut self, ptr: u64) -> Result<bool, CUresult> {
        match self.imports.get(&ptr) {
            Some(i) if i.pool => {
                self.imports.remove(&ptr);
                Ok(true)
            }
            Some(_) => Err(INVALID_VALUE),
            None => Ok(false),
        }
    }

    /// Whether `p` lies in imported memory, and if so whether `[p, end)` does.
    pub(super) fn imported_range(&self, p: u64, end: u64) -> Option<bool> {
        let (a, i) = self.imports.range(..=p).next_back()?;
        (p < a + i.size).then_some(end <= a + i.size)
    }
}

/// Writes through `out` what another process needs to map the allocation at `ptr`: one made
/// by `cuMemAlloc*` (`pooled` false) or from a pool (`pooled` true), by its base address
/// (CUDA driver API reference).
fn export_alloc(out: *mut IpcMemHandle, ptr: CUdeviceptr, pooled: bool, tag: u64) -> CUresult {
    code(with(|st| {
        nonnull(out)?;
        st.current()?;
        let a = st
            .allocs
            .get(&ptr)
            .filter(|a| a.pool.is_some() == pooled)
            .ok_or(INVALID_VALUE)?;
        let (dev, size, pool) = (a.dev, a.size, a.pool.unwrap_or(0));
        // Only a pool made with `handleTypes` can export its pointers (the default pool has
        // none): CUDA_ERROR_INVALID_VALUE, as driver 580 answers.
        if pooled && st.pools.get(&pool).is_none_or(|p| p.handle_types == 0) {
            return Err(INVALID_VALUE);
        }
        let s = Shared {
            tag,
            pid: std::process::id(),
            dev,
            at: ptr,
            size,
            serial: st.export_serial(),
            pool,
        };
        put(
            out,
            IpcMemHandle {
                reserved: s.encode(),
            },
        );
        Ok(())
    }))
}

pub extern "C" fn cuIpcGetMemHandle(handle: *mut IpcMemHandle, dptr: CUdeviceptr) -> CUresult {
    export_alloc(handle, dptr, false, TAG_IPC)
}

fn ipc_open(pdptr: *mut CUdeviceptr, handle: IpcMemHandle, flags: c_uint) -> CUresult {
    code(with(|st| {
        nonnull(pdptr)?;
        if flags & !IPC_MEM_LAZY_ENABLE_PEER_ACCESS != 0 {
            return Err(INVALID_VALUE);
        }
        let s = Shared::decode(&handle.reserved, TAG_IPC, st)?;
        let addr = st.import(&s, false)?;
        put(pdptr, addr);
        Ok(())
    }))
}

pub extern "C" fn cuIpcOpenMemHandle(
    pdptr: *mut CUdeviceptr,
    handle: IpcMemHandle,
    flags: c_uint,
) -> CUresult {
    ipc_open(pdptr, handle, flags)
}

pub extern "C" fn cuIpcOpenMemHandle_v2(
    pdptr: *mut CUdeviceptr,
    handle: IpcMemHandle,
    flags: c_uint,
) -> CUresult {
    ipc_open(pdptr, handle, flags)
}

pub extern "C" fn cuIpcCloseMemHandle(dptr: CUdeviceptr) -> CUresult {
    code(with(|st| {
        st.current()?;
        let imp = st
            .imports
            .get_mut(&dptr)
            .filter(|i| !i.pool)
            .ok_or(INVALID_VALUE)?;
        imp.opens -= 1;
        if imp.opens == 0 {
            st.imports.remove(&dptr);
        }
        Ok(())
    }))
}

pub extern "C" fn cuMemPoolExportPointer(share: *mut IpcMemHandle, ptr: CUdeviceptr) -> CUresult {
    export_alloc(share, ptr, true, TAG_POOL)
}

pub extern "C" fn cuMemPoolImportPointer(
    ptr_out: *mut CUdeviceptr,
    pool: u64,
    share: *const IpcMemHandle,
) -> CUresult {
    code(with(|st| {
        nonnull(ptr_out)?;
        nonnull(share)?;
        // The pool the pointer is imported into is the exporter's pool, imported first.
        let origin = match st.pools.get(&pool) {
            None => return Err(INVALID_HANDLE),
            Some(p) if !p.imported || p.destroyed => return Err(INVALID_VALUE),
            Some(p) => p.origin,
        };
        // SAFETY: checked non-null; the caller passes a `CUmemPoolPtrExportData`.
        let bytes = unsafe { (*share).reserved };
        let s = Shared::decode(&bytes, TAG_POOL, st)?;
        if (s.pid, s.pool) != origin {
            return Err(INVALID_VALUE);
        }
        let addr = st.import(&s, true)?;
        put(ptr_out, addr);
        Ok(())
    }))
}

pub extern "C" fn cuMemExportToShareableHandle(
    out: *mut c_void,
    handle: u64,
    handle_type: c_int,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        nonnull(out)?;
        posix_fd_only(handle_type, flags)?;
        let p = st.phys.get(&handle).ok_or(INVALID_HANDLE)?;
        // Memory made without this handle type among `requestedHandleTypes`:
        // CUDA_ERROR_INVALID_VALUE, as driver 580 answers.
        if p.handle_types & handle_type as u32 == 0 {
            return Err(INVALID_VALUE);
        }
        let dev = p.dev.ok_or(NOT_SUPPORTED)?;
        let s = Shared {
            tag: TAG_VMM,
            pid: std::process::id(),
            dev,
            at: handle,
            size: p.size,
            serial: st.export_serial(),
            pool: 0,
        };
        put(out.cast::<c_int>(), share_fd(&s)?);
        Ok(())
    }))
}

/// The flags and handle types the simulated driver shares by: no flags, POSIX file
/// descriptors only (others give `CUDA_ERROR_NOT_SUPPORTED`).
fn posix_fd_only(handle_type: c_int, flags: u64) -> Result<(), CUresult> {
    if flags != 0 {
        return Err(INVALID_VALUE);
    }
    if handle_type != HANDLE_TYPE_POSIX_FD {
        return Err(NOT_SUPPORTED);
    }
    Ok(())
}

/// A memfd that carries `s`; inherited across exec (no close-on-exec), as a descriptor
/// passed over a socket would be.
fn share_fd(s: &Shared) -> Result<c_int, CUresult> {
    // SAFETY: a NUL-terminated name and no flags.
    let fd = unsafe { libc::memfd_create(c"simcuda-share".as_ptr(), 0) };
    if fd < 0 {
        return Err(super::OUT_OF_MEMORY);
    }
    let bytes = s.encode();
    // SAFETY: `fd` is the descriptor just made; `bytes` is a live 64-byte buffer.
    let n = unsafe { libc::pwrite(fd, bytes.as_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // SAFETY: closes the descriptor made above, once.
        unsafe { libc::close(fd) };
        return Err(super::OUT_OF_MEMORY);
    }
    Ok(fd)
}

/// The 64 bytes of a memfd made by [`share_fd`]; the descriptor is the pointer's value.
fn read_share_fd(os_handle: *mut c_void) -> Result<[u8; 64], CUresult> {
    let fd = os_handle as usize as c_int;
    let mut bytes = [0u8; 64];
    // SAFETY: `bytes` is a live 64-byte buffer; a bad descriptor makes pread fail.
    let n = unsafe { libc::pread(fd, bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(INVALID_VALUE);
    }
    Ok(bytes)
}

/// `cuMemPoolExportToShareableHandle(void *handle_out, CUmemoryPool pool,
/// CUmemAllocationHandleType handleType, unsigned long long flags)`: the pool, for another
/// process to import before it imports the pool's pointers. Only a pool made with that handle
/// type among its `handleTypes`.
pub extern "C" fn cuMemPoolExportToShareableHandle(
    out: *mut c_void,
    pool: u64,
    handle_type: c_int,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        nonnull(out)?;
        let p = st.pools.get(&pool).ok_or(INVALID_VALUE)?;
        if p.destroyed || p.imported || p.handle_types & handle_type as u32 == 0 {
            return Err(INVALID_VALUE);
        }
        posix_fd_only(handle_type, flags)?;
        let s = Shared {
            tag: TAG_MEMPOOL,
            pid: std::process::id(),
            dev: p.dev,
            at: pool,
            size: 0,
            serial: st.export_serial(),
            pool,
        };
        put(out.cast::<c_int>(), share_fd(&s)?);
        Ok(())
    }))
}

/// `cuMemPoolImportFromShareableHandle(CUmemoryPool *pool_out, void *handle,
/// CUmemAllocationHandleType handleType, unsigned long long flags)`: another process's pool,
/// whose pointers `cuMemPoolImportPointer` then maps.
pub extern "C" fn cuMemPoolImportFromShareableHandle(
    pool_out: *mut u64,
    os_handle: *mut c_void,
    handle_type: c_int,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        nonnull(pool_out)?;
        posix_fd_only(handle_type, flags)?;
        let s = Shared::decode(&read_share_fd(os_handle)?, TAG_MEMPOOL, st)?;
        let h = st.handle();
        let mut imported = super::Pool::new(s.dev, false, false);
        imported.imported = true;
        imported.origin = (s.pid, s.pool);
        st.pools.insert(h, imported);
        put(pool_out, h);
        Ok(())
    }))
}

pub extern "C" fn cuMemImportFromShareableHandle(
    handle: *mut u64,
    os_handle: *mut c_void,
    handle_type: c_int,
) -> CUresult {
    code(with(|st| {
        nonnull(handle)?;
        if handle_type != HANDLE_TYPE_POSIX_FD {
            return Err(NOT_SUPPORTED);
        }
        // The descriptor is passed as the pointer's value.
        let s = Shared::decode(&read_share_fd(os_handle)?, TAG_VMM, st)?;
        let h = st.handle();
        st.phys.insert(
            h,
            Phys {
                size: s.size,
                dev: Some(s.dev),
                released: false,
                maps: 0,
                retains: 0,
                imported: true,
                handle_types: 0,
                binds: 0,
            },
        );
        put(handle, h);
        Ok(())
    }))
}

pub extern "C" fn cuMemRetainAllocationHandle(handle: *mut u64, addr: *mut c_void) -> CUresult {
    code(with(|st| {
        nonnull(handle)?;
        let a = addr as u64;
        let h = st
            .mappings
            .range(..=a)
            .next_back()
            .filter(|(m, rec)| a < *m + rec.size)
            .map(|(_, rec)| rec.handle)
            .ok_or(INVALID_VALUE)?;
        let p = st.phys.get_mut(&h).ok_or(INVALID_VALUE)?;
        p.retains += 1;
        put(handle, h);
        Ok(())
    }))
}
