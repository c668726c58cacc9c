//! The CUDA driver entry points vramtrace hooks: what each one means, which of its arguments
//! matter, and the attach cookie that tells the generic BPF programs what to capture.
//!
//! Signatures are those of the CUDA driver API reference (`cuda.h`,
//! <https://docs.nvidia.com/cuda/cuda-driver-api/>). Every exported variant of a base name
//! (`cuMemAlloc`, `cuMemAlloc_v2`, `cuMemAllocAsync_ptsz`, ...) is found in the library's
//! dynamic symbol table at attach time; the unversioned names of the oldest entry points are
//! the CUDA 3.x ABI with 32-bit sizes and device pointers, and are decoded as such.
//!
//! [`APIS`] is the one table of the hooked surface: each row names an entry point, what the
//! probes capture of it (the cookie flags) and its decoder, which says what each captured
//! word means. Adding an entry point is adding a row.

use cookie::{
    BATCH_ARRAYS, DEREF_ARG0, DEREF_ARG1, DEREF_ARG2, FD_IN_OUT0, FILE_OF_FD, HOST_IF_LOCATION,
    HOST_MEMORY, STACK, WIDE_AT_RETURN, WIDE_FROM_STACK, with_blob_arg, with_blob_skip,
    with_wide_skip,
};
use vramtrace_common::cookie;

mod args;

pub use args::{Args, ArrayShape, array_bytes};
use args::{
    U32, copy_3d_batch_op, copy_descriptor, file_of, os_handle, pool_attr_value, pool_location,
    share_of,
};

use crate::trace::{ArrayRegion, BatchCopy, Bound, Call, CopySrc, Mem, Record};

/// How a decoder turns one call into its record: it fills the call's fields from the
/// registers, out-parameters and windows its row asked for, and says which record it is.
pub type Decode = fn(&Args<'_>, &mut Call) -> Record;

/// A base name: what to capture for every exported variant of it, and what its arguments
/// mean.
#[derive(Clone, Copy, Debug)]
pub struct ApiDef {
    /// Base name; variants add `_v2`, `_ptsz`, ... suffixes.
    pub base: &'static str,
    /// `vramtrace_common::cookie` flags (without the API id).
    pub flags: u64,
    /// The unversioned symbol is the 32-bit CUDA 3.x ABI (sizes and device pointers are
    /// `unsigned int`).
    pub legacy32: bool,
    /// What its arguments mean.
    pub decode: Decode,
}

/// `CUDA_MEMCPY2D` (64-bit ABI, 16 words): the blob holds words 2..7 (`srcMemoryType`,
/// `srcHost`, `srcDevice`, `srcArray`, `srcPitch`), the wide window words 8..16 (`dstY`,
/// `dstMemoryType`, `dstHost`, `dstDevice`, `dstArray`, `dstPitch`, `WidthInBytes`,
/// `Height`). Only `dstXInBytes` (word 7) and `srcXInBytes`/`srcY` are left out.
const COPY_2D: u64 = with_blob_arg(0) | with_blob_skip(2) | with_wide_skip(8);
/// `CUDA_MEMCPY3D` (25 words): the blob holds words 4..9 (`srcMemoryType`, `srcHost`,
/// `srcDevice`, `srcArray`, `reserved0`), the wide window words 17..25 (`dstDevice`,
/// `dstArray`, `reserved1`, `dstPitch`, `dstHeight`, `WidthInBytes`, `Height`, `Depth`).
/// `dstMemoryType` (word 15) is left out: the destination is `dstDevice` when it is set, and
/// the Ledger takes it for device memory only inside a live device allocation.
const COPY_3D: u64 = with_blob_arg(0) | with_blob_skip(4) | with_wide_skip(17);

const fn def(base: &'static str, flags: u64, decode: Decode) -> ApiDef {
    ApiDef {
        base,
        flags,
        legacy32: false,
        decode,
    }
}

const fn legacy(base: &'static str, flags: u64, decode: Decode) -> ApiDef {
    ApiDef {
        base,
        flags,
        legacy32: true,
        decode,
    }
}

/// Every hooked base name (DESIGN.md, "The hooking surface"): its C signature (CUDA driver
/// API reference, `cuda.h`), what the probes capture of it, and what the capture means.
pub const APIS: &[ApiDef] = &[
    // ---- Device memory ----
    // cuMemAlloc(CUdeviceptr *dptr, size_t bytesize)
    legacy("cuMemAlloc", DEREF_ARG0 | STACK, |d, c| {
        c.mem = Some(Mem::Device);
        c.bytes = Some(d.word(d.a[1]));
        if d.ok {
            c.addr = d.out0(c);
        }
        d.done(c, Record::Alloc)
    }),
    // cuMemAllocPitch(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
    // unsigned ElementSizeBytes): the pitch is read at return.
    legacy(
        "cuMemAllocPitch",
        DEREF_ARG0 | DEREF_ARG1 | STACK,
        |d, c| {
            c.mem = Some(Mem::Device);
            let (width, height) = (d.word(d.a[2]), d.word(d.a[3]));
            // The pitch is never written on failure: the request was at least this.
            c.bytes = Some(width.saturating_mul(height));
            if d.ok {
                c.addr = d.out0(c);
                if let Some(pitch) = d.out1(c, "pitch") {
                    let pitch = d.word(pitch);
                    c.pitch = Some(pitch);
                    c.bytes = Some(pitch.saturating_mul(height));
                }
            }
            d.done(c, Record::Alloc)
        },
    ),
    // cuMemFree(CUdeviceptr dptr)
    legacy("cuMemFree", 0, |d, c| {
        c.addr = Some(d.word(d.a[0]));
        d.done(c, Record::Free)
    }),
    // ---- Stream-ordered pools ----
    // cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
    def("cuMemAllocAsync", DEREF_ARG0 | STACK, |d, c| {
        c.mem = Some(Mem::DeviceAsync);
        c.bytes = Some(d.a[1]);
        c.stream = Some(d.a[2]);
        if d.ok {
            c.addr = d.out0(c);
        }
        d.done(c, Record::Alloc)
    }),
    // cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
    // CUstream hStream)
    def("cuMemAllocFromPoolAsync", DEREF_ARG0 | STACK, |d, c| {
        c.mem = Some(Mem::DeviceAsync);
        c.bytes = Some(d.a[1]);
        c.pool = Some(d.a[2]);
        c.stream = Some(d.a[3]);
        if d.ok {
            c.addr = d.out0(c);
        }
        d.done(c, Record::Alloc)
    }),
    // cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
    def("cuMemFreeAsync", 0, |d, c| {
        c.mem = Some(Mem::DeviceAsync);
        c.addr = Some(d.a[0]);
        c.stream = Some(d.a[1]);
        d.done(c, Record::Free)
    }),
    // cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps): CUmemPoolProps is
    // allocType, handleTypes (word 0), location { type, id } (word 1), ... A pool of managed
    // memory, or one located in host memory, hands out host memory: its `mem` says which. A
    // device pool has none.
    def("cuMemPoolCreate", DEREF_ARG0 | with_blob_arg(1), |d, c| {
        if d.blob_ok {
            (c.mem, c.device) = pool_location(d.ev.blob[0] & U32, d.ev.blob[1]);
        } else {
            c.unreadable.push("props".into());
        }
        if d.ok {
            c.pool = d.out0(c);
        }
        d.done(c, Record::PoolCreate)
    }),
    // cuMemPoolDestroy(CUmemoryPool pool)
    def("cuMemPoolDestroy", 0, |d, c| {
        c.pool = Some(d.a[0]);
        d.done(c, Record::PoolDestroy)
    }),
    // cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
    def("cuMemPoolTrimTo", 0, |d, c| {
        c.pool = Some(d.a[0]);
        c.bytes = Some(d.a[1]);
        d.done(c, Record::PoolTrim)
    }),
    // cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value),
    // cuMemPoolGetAttribute (the same): the value is read at return, a set's input still
    // there, a get's output written. CU_MEMPOOL_ATTR_RELEASE_THRESHOLD (a cuuint64_t) is what
    // the pool keeps reserved at a synchronization.
    def("cuMemPoolSetAttribute", DEREF_ARG2, pool_attribute),
    def("cuMemPoolGetAttribute", DEREF_ARG2, pool_attribute),
    // Synchronizations: a pool releases what it holds above its release threshold at the
    // next stream, event or context synchronization (CUDA driver API reference,
    // "CUmemPool_attribute").
    // cuCtxSynchronize(void) (and CUDA 13.0's cuCtxSynchronize_v2(CUcontext))
    def("cuCtxSynchronize", 0, |d, c| d.done(c, Record::Sync)),
    // cuStreamSynchronize(CUstream hStream)
    def("cuStreamSynchronize", 0, |d, c| {
        c.stream = Some(d.a[0]);
        d.done(c, Record::Sync)
    }),
    // cuEventSynchronize(CUevent hEvent)
    def("cuEventSynchronize", 0, |d, c| {
        c.handle = Some(d.a[0]);
        d.done(c, Record::Sync)
    }),
    // cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev)
    def("cuDeviceGetDefaultMemPool", DEREF_ARG0, device_pool),
    // cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev): the device's current pool.
    def("cuDeviceGetMemPool", DEREF_ARG0, device_pool),
    // cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool): the pool cuMemAllocAsync takes
    // from on `dev` from now on.
    def("cuDeviceSetMemPool", 0, |d, c| {
        c.device = Some(d.int(0));
        c.pool = Some(d.a[1]);
        d.done(c, Record::PoolCreate)
    }),
    // CUDA 13.0: cuMemGetDefaultMemPool(CUmemoryPool *pool_out, CUmemLocation *location,
    // CUmemAllocationType type), cuMemGetMemPool (the same; the current pool of a location
    // and type), cuMemSetMemPool(CUmemLocation *location, CUmemAllocationType type,
    // CUmemoryPool pool). CUmemLocation is 8 bytes: the blob reads past it, into the caller's
    // frame (a read that faults leaves the location unreadable, nothing worse).
    def(
        "cuMemGetDefaultMemPool",
        DEREF_ARG0 | with_blob_arg(1),
        |d, c| pool_at_location(d, c, false),
    ),
    def("cuMemGetMemPool", DEREF_ARG0 | with_blob_arg(1), |d, c| {
        pool_at_location(d, c, false)
    }),
    def("cuMemSetMemPool", with_blob_arg(0), |d, c| {
        pool_at_location(d, c, true)
    }),
    // ---- Virtual memory management ----
    // cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp
    // *prop, unsigned long long flags): the prop is type, requestedHandleTypes, location
    // { type, id }, ...
    def(
        "cuMemCreate",
        DEREF_ARG0 | with_blob_arg(2) | STACK | HOST_IF_LOCATION,
        |d, c| {
            c.bytes = Some(d.a[1]);
            c.flags = Some(d.a[3]);
            if d.blob_ok {
                let location = d.ev.blob[1] as u32;
                if (2..=4).contains(&location) {
                    c.mem = Some(Mem::VmmHost);
                } else {
                    c.mem = Some(Mem::VmmDevice);
                    c.device = Some((d.ev.blob[1] >> 32) as i32);
                }
            } else {
                c.unreadable.push("prop".into());
            }
            if d.ok {
                c.handle = d.out0(c);
            }
            d.done(c, Record::VmmCreate)
        },
    ),
    // cuMemRelease(CUmemGenericAllocationHandle handle)
    def("cuMemRelease", 0, |d, c| {
        c.handle = Some(d.a[0]);
        d.done(c, Record::VmmRelease)
    }),
    // cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle
    // handle, unsigned long long flags)
    def("cuMemMap", 0, |d, c| {
        c.addr = Some(d.a[0]);
        c.bytes = Some(d.a[1]);
        c.offset = Some(d.a[2]);
        c.handle = Some(d.a[3]);
        c.flags = Some(d.a[4]);
        d.done(c, Record::VmmMap)
    }),
    // cuMemUnmap(CUdeviceptr ptr, size_t size)
    def("cuMemUnmap", 0, |d, c| {
        c.addr = Some(d.a[0]);
        c.bytes = Some(d.a[1]);
        d.done(c, Record::VmmUnmap)
    }),
    // cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
    // unsigned long long flags)
    def("cuMemAddressReserve", DEREF_ARG0, |d, c| {
        c.bytes = Some(d.a[1]);
        c.flags = Some(d.a[4]);
        if d.ok {
            c.addr = d.out0(c);
        }
        d.done(c, Record::Reserve)
    }),
    // cuMemAddressFree(CUdeviceptr ptr, size_t size)
    def("cuMemAddressFree", 0, |d, c| {
        c.addr = Some(d.a[0]);
        c.bytes = Some(d.a[1]);
        d.done(c, Record::Unreserve)
    }),
    // ---- Arrays ----
    // cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray)
    legacy(
        "cuArrayCreate",
        DEREF_ARG0 | with_blob_arg(1) | STACK,
        |d, c| array_create(d, c, ArrayShape::TwoD),
    ),
    // cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray)
    legacy(
        "cuArray3DCreate",
        DEREF_ARG0 | with_blob_arg(1) | STACK,
        |d, c| array_create(d, c, ArrayShape::ThreeD),
    ),
    // cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
    // unsigned int numMipmapLevels)
    def(
        "cuMipmappedArrayCreate",
        DEREF_ARG0 | with_blob_arg(1) | STACK,
        |d, c| array_create(d, c, ArrayShape::Mipmapped),
    ),
    // cuMemMapArrayAsync(CUarrayMapInfo *mapInfoList, unsigned int count, CUstream hStream):
    // the first CUarrayMapInfo (12 words) is read at entry, words 0..5 in the blob, 4..12 in
    // the wide window; `count` says how many there are.
    def(
        "cuMemMapArrayAsync",
        with_blob_arg(0) | with_wide_skip(4),
        array_map,
    ),
    // cuArrayDestroy(CUarray hArray)
    def("cuArrayDestroy", 0, array_destroy),
    // cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray)
    def("cuMipmappedArrayDestroy", 0, array_destroy),
    // ---- Host memory the GPU uses ----
    // cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
    def(
        "cuMemAllocManaged",
        DEREF_ARG0 | STACK | HOST_MEMORY,
        |d, c| {
            c.mem = Some(Mem::Managed);
            c.bytes = Some(d.a[1]);
            c.flags = Some(u64::from(d.uint(2)));
            if d.ok {
                c.addr = d.out0(c);
            }
            d.done(c, Record::Alloc)
        },
    ),
    // cuMemAllocHost(void **pp, size_t bytesize)
    legacy(
        "cuMemAllocHost",
        DEREF_ARG0 | STACK | HOST_MEMORY,
        |d, c| host_alloc(d, c, None),
    ),
    // cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
    def(
        "cuMemHostAlloc",
        DEREF_ARG0 | STACK | HOST_MEMORY,
        |d, c| host_alloc(d, c, Some(d.uint(2))),
    ),
    // cuMemFreeHost(void *p)
    def("cuMemFreeHost", 0, |d, c| {
        c.mem = Some(Mem::HostPinned);
        c.addr = Some(d.a[0]);
        d.done(c, Record::Free)
    }),
    // cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags)
    def("cuMemHostRegister", STACK | HOST_MEMORY, |d, c| {
        c.mem = Some(Mem::HostRegistered);
        c.addr = Some(d.a[0]);
        c.bytes = Some(d.a[1]);
        c.flags = Some(u64::from(d.uint(2)));
        d.done(c, Record::Alloc)
    }),
    // cuMemHostUnregister(void *p)
    def("cuMemHostUnregister", 0, |d, c| {
        c.mem = Some(Mem::HostRegistered);
        c.addr = Some(d.a[0]);
        d.done(c, Record::Free)
    }),
    // ---- Contexts ----
    // cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev); `_v3` takes (pctx,
    // CUexecAffinityParam *params, int numParams, unsigned flags, CUdevice dev), `_v4` (CUDA
    // 12.5) (pctx, CUctxCreateParams *params, unsigned flags, CUdevice dev): see [`CtxArgs`].
    def("cuCtxCreate", DEREF_ARG0, |d, c| {
        let at = CtxArgs::of(d.version);
        c.device = Some(d.int(at.device));
        c.flags = Some(u64::from(d.uint(at.flags)));
        if d.ok {
            c.handle = d.out0(c);
        }
        d.done(c, Record::CtxCreate)
    }),
    // cuCtxDestroy(CUcontext ctx)
    def("cuCtxDestroy", 0, |d, c| {
        c.handle = Some(d.a[0]);
        d.done(c, Record::CtxDestroy)
    }),
    // cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
    def("cuDevicePrimaryCtxRetain", DEREF_ARG0, |d, c| {
        c.device = Some(d.int(1));
        if d.ok {
            c.handle = d.out0(c);
        }
        d.done(c, Record::CtxCreate)
    }),
    // cuDevicePrimaryCtxRelease(CUdevice dev)
    def("cuDevicePrimaryCtxRelease", 0, primary_ctx_end),
    // cuDevicePrimaryCtxReset(CUdevice dev): frees everything of the primary context, which
    // stays retained.
    def("cuDevicePrimaryCtxReset", 0, primary_ctx_end),
    // cuCtxSetCurrent(CUcontext ctx)
    def("cuCtxSetCurrent", 0, ctx_current),
    // cuCtxPushCurrent(CUcontext ctx)
    def("cuCtxPushCurrent", 0, ctx_current),
    // cuCtxPopCurrent(CUcontext *pctx)
    def("cuCtxPopCurrent", DEREF_ARG0, |d, c| {
        if d.ok && d.a[0] != 0 {
            c.handle = d.out0(c);
        }
        d.done(c, Record::CtxCurrent)
    }),
    // Green contexts: memory allocated while one is current is its primary context's.
    // cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev, unsigned int
    // flags) (CUDA 12.4): retains `dev`'s primary context until cuGreenCtxDestroy; desc
    // points at an opaque descriptor.
    def("cuGreenCtxCreate", DEREF_ARG0, |d, c| {
        c.device = Some(d.int(2));
        c.flags = Some(u64::from(d.uint(3)));
        if d.ok {
            c.green = d.out0(c);
        }
        d.done(c, Record::CtxCreate)
    }),
    // cuGreenCtxDestroy(CUgreenCtx hCtx): releases the primary context it retained.
    def("cuGreenCtxDestroy", 0, |d, c| {
        c.green = Some(d.a[0]);
        d.done(c, Record::CtxDestroy)
    }),
    // cuCtxFromGreenCtx(CUcontext *pContext, CUgreenCtx hCtx): the CUcontext that stands
    // for a green context (made current with cuCtxSetCurrent/cuCtxPushCurrent).
    def("cuCtxFromGreenCtx", DEREF_ARG0, |d, c| {
        c.green = Some(d.a[1]);
        if d.ok {
            c.handle = d.out0(c);
        }
        d.done(c, Record::CtxCreate)
    }),
    // ---- Fills from host memory ----
    // cuMemcpyHtoD(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)
    legacy("cuMemcpyHtoD", 0, |d, c| host_to_device(d, c, None)),
    // cuMemcpyHtoDAsync(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount,
    // CUstream hStream)
    legacy("cuMemcpyHtoDAsync", 0, |d, c| {
        host_to_device(d, c, Some(d.a[3]))
    }),
    // Unified, 2D and 3D copies: a fill when the source is not device memory and the
    // destination is. The unversioned 2D/3D names take the CUDA 3.x descriptor, whose layout
    // differs: they are hooked and counted, not decoded.
    // cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount): unified addressing, the
    // direction follows from where the addresses lie.
    def("cuMemcpy", 0, |d, c| unified_copy(d, c, None)),
    // cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream)
    def("cuMemcpyAsync", 0, |d, c| unified_copy(d, c, Some(d.a[3]))),
    // cuMemcpy2D(const CUDA_MEMCPY2D *pCopy), cuMemcpy2DUnaligned (the same)
    legacy("cuMemcpy2D", COPY_2D, |d, c| copy_2d_3d(d, c, false, None)),
    legacy("cuMemcpy2DUnaligned", COPY_2D, |d, c| {
        copy_2d_3d(d, c, false, None)
    }),
    // cuMemcpy2DAsync(const CUDA_MEMCPY2D *pCopy, CUstream hStream)
    legacy("cuMemcpy2DAsync", COPY_2D, |d, c| {
        copy_2d_3d(d, c, false, Some(d.a[1]))
    }),
    // cuMemcpy3D(const CUDA_MEMCPY3D *pCopy)
    legacy("cuMemcpy3D", COPY_3D, |d, c| copy_2d_3d(d, c, true, None)),
    // cuMemcpy3DAsync(const CUDA_MEMCPY3D *pCopy, CUstream hStream)
    legacy("cuMemcpy3DAsync", COPY_3D, |d, c| {
        copy_2d_3d(d, c, true, Some(d.a[1]))
    }),
    // Batches of copies (CUDA 12.8; `_v2` of CUDA 13.0 drops `failIdx`). Each copy is read
    // as a unified copy is: a fill when its source is not device memory the Ledger knows.
    // cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
    // CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs, size_t *failIdx,
    // CUstream hStream): the first `BATCH_READ` elements of the three arrays are read at
    // entry; `count` says how many there are.
    def("cuMemcpyBatchAsync", BATCH_ARRAYS, |d, c| {
        let count = d.a[3];
        c.count = Some(count);
        if !d.blob_ok {
            c.unreadable.push("copies".into());
            return d.done(c, Record::Copy);
        }
        let n = count.min(cookie::BATCH_READ as u64) as usize;
        if n > 0 {
            // The first copy's source kind: what says it was read.
            c.src_mem = Some(CopySrc::Unified);
        }
        let w = &d.ev.wide;
        let mut rest = Vec::with_capacity(n.saturating_sub(1));
        for i in 0..n {
            let (dst, src, bytes) = (w[i], w[cookie::BATCH_READ + i], d.ev.blob[i]);
            if i == 0 {
                (c.addr, c.src, c.bytes) = (Some(dst), Some(src), Some(bytes));
            } else {
                rest.push(BatchCopy {
                    addr: Some(dst),
                    src_mem: CopySrc::Unified,
                    src: Some(src),
                    bytes,
                });
            }
        }
        if !rest.is_empty() {
            c.copies = Some(rest.into_boxed_slice());
        }
        d.done(c, Record::Copy)
    }),
    // cuMemcpy3DBatchAsync(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, size_t *failIdx,
    // unsigned long long flags, CUstream hStream): the first operation is read at entry,
    // its source operand in the blob (words 0..5), its destination and extent in the wide
    // window (words 5..13): see [`copy_3d_batch_op`].
    def(
        "cuMemcpy3DBatchAsync",
        with_blob_arg(1) | with_wide_skip(5),
        |d, c| {
            c.count = Some(d.a[0]);
            if d.a[0] == 0 {
                return d.done(c, Record::Copy);
            }
            if d.blob_ok {
                copy_3d_batch_op(d.ev, c);
            } else {
                c.unreadable.push("opList".into());
            }
            d.done(c, Record::Copy)
        },
    ),
    // ---- Memory shared between processes ----
    // The 64-byte handles and export data are kept whole in the wide window, so that an
    // importer's handle can be matched to its exporter's.
    // cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr): the 64-byte handle
    // another process opens, read at return.
    def("cuIpcGetMemHandle", WIDE_AT_RETURN, export_by_address),
    // cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags) (and
    // `_v2`, the same signature): the handle is passed by value, in memory on the caller's
    // stack, read at entry; Flags is the second integer argument (rsi).
    def(
        "cuIpcOpenMemHandle",
        DEREF_ARG0 | WIDE_FROM_STACK | STACK,
        |d, c| {
            c.flags = Some(u64::from(d.uint(1)));
            c.share = share_of(d.ev, c);
            if d.ok {
                c.addr = d.out0(c);
            }
            d.done(c, Record::Import)
        },
    ),
    // cuIpcCloseMemHandle(CUdeviceptr dptr)
    def("cuIpcCloseMemHandle", 0, |d, c| {
        c.addr = Some(d.a[0]);
        d.done(c, Record::ImportClose)
    }),
    // cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle
    // handle, CUmemAllocationHandleType handleType, unsigned long long flags)
    def(
        "cuMemExportToShareableHandle",
        DEREF_ARG0 | FILE_OF_FD | FD_IN_OUT0,
        |d, c| {
            c.handle = Some(d.a[1]);
            shareable_export(d, c)
        },
    ),
    // cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
    // CUmemAllocationHandleType shHandleType): a POSIX file descriptor is passed as the
    // pointer's value; other types point at their handle.
    def(
        "cuMemImportFromShareableHandle",
        DEREF_ARG0 | STACK | FILE_OF_FD,
        |d, c| {
            c.handle_type = Some(d.uint(2));
            c.os_handle = Some(os_handle(c.handle_type, d.a[1]));
            c.file = file_of(d, c);
            if d.ok {
                c.handle = d.out0(c);
            }
            d.done(c, Record::Import)
        },
    ),
    // cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr): one more
    // reference to the handle mapped at `addr`, released by cuMemRelease.
    def("cuMemRetainAllocationHandle", DEREF_ARG0, |d, c| {
        c.addr = Some(d.a[1]);
        if d.ok {
            c.handle = d.out0(c);
        }
        d.done(c, Record::Retain)
    }),
    // cuMemPoolExportPointer(CUmemPoolPtrExportData *shareData_out, CUdeviceptr ptr): 64
    // bytes read at return.
    def("cuMemPoolExportPointer", WIDE_AT_RETURN, export_by_address),
    // cuMemPoolImportPointer(CUdeviceptr *ptr_out, CUmemoryPool pool, CUmemPoolPtrExportData
    // *shareData): the export data read through its pointer at entry.
    def(
        "cuMemPoolImportPointer",
        DEREF_ARG0 | with_blob_arg(2) | with_wide_skip(0) | STACK,
        |d, c| {
            c.pool = Some(d.a[1]);
            c.share = share_of(d.ev, c);
            if d.ok {
                c.addr = d.out0(c);
            }
            d.done(c, Record::Import)
        },
    ),
    // cuMemPoolExportToShareableHandle(void *handle_out, CUmemoryPool pool,
    // CUmemAllocationHandleType handleType, unsigned long long flags): a pool made with
    // `handleTypes`, for another process to import before its pointers.
    def(
        "cuMemPoolExportToShareableHandle",
        DEREF_ARG0 | FILE_OF_FD | FD_IN_OUT0,
        |d, c| {
            c.pool = Some(d.a[1]);
            shareable_export(d, c)
        },
    ),
    // cuMemPoolImportFromShareableHandle(CUmemoryPool *pool_out, void *handle,
    // CUmemAllocationHandleType handleType, unsigned long long flags): another process's
    // pool, which only maps that process's pointers (cuMemPoolImportPointer): a pool learned,
    // not memory.
    def(
        "cuMemPoolImportFromShareableHandle",
        DEREF_ARG0 | FILE_OF_FD,
        |d, c| {
            c.handle_type = Some(d.uint(2));
            c.os_handle = Some(os_handle(c.handle_type, d.a[1]));
            c.file = file_of(d, c);
            c.flags = Some(d.a[3]);
            if d.ok {
                c.pool = d.out0(c);
            }
            d.done(c, Record::PoolCreate)
        },
    ),
    // ---- Multicast objects (CUDA 12.1) ----
    // cuMulticastCreate(CUmemGenericAllocationHandle *mcHandle, const CUmulticastObjectProp
    // *prop): the prop is numDevices (word 0), size, handleTypes, flags.
    def(
        "cuMulticastCreate",
        DEREF_ARG0 | with_blob_arg(1) | STACK,
        |d, c| {
            if d.blob_ok {
                let b = &d.ev.blob;
                c.count = Some(b[0] & U32);
                c.bytes = Some(b[1]);
                c.handle_type = Some(b[2] as u32);
                c.flags = Some(b[3]);
            } else {
                c.unreadable.push("prop".into());
            }
            if d.ok {
                c.handle = d.out0(c);
            }
            d.done(c, Record::MulticastCreate)
        },
    ),
    // cuMulticastBindMem(CUmemGenericAllocationHandle mcHandle, size_t mcOffset,
    // CUmemGenericAllocationHandle memHandle, size_t memOffset, size_t size, unsigned long
    // long flags); `_v2` (CUDA 13) names the device after mcHandle, which pushes `flags` to
    // the stack, where it is not read (it must be 0).
    def("cuMulticastBindMem", 0, |d, c| {
        let i = multicast_device(d, c);
        c.offset = Some(d.a[i]);
        c.bound = Some(Box::new(Bound {
            handle: d.a[i + 1],
            offset: d.a[i + 2],
        }));
        c.bytes = Some(d.a[i + 3]);
        c.flags = d.a.get(i + 4).copied();
        d.done(c, Record::MulticastBind)
    }),
    // cuMulticastBindAddr(CUmemGenericAllocationHandle mcHandle, size_t mcOffset, CUdeviceptr
    // memptr, size_t size, unsigned long long flags); `_v2` names the device after mcHandle.
    def("cuMulticastBindAddr", 0, |d, c| {
        let i = multicast_device(d, c);
        c.offset = Some(d.a[i]);
        c.addr = Some(d.a[i + 1]);
        c.bytes = Some(d.a[i + 2]);
        c.flags = Some(d.a[i + 3]);
        d.done(c, Record::MulticastBind)
    }),
    // cuMulticastUnbind(CUmemGenericAllocationHandle mcHandle, CUdevice dev, size_t mcOffset,
    // size_t size)
    def("cuMulticastUnbind", 0, |d, c| {
        c.handle = Some(d.a[0]);
        c.device = Some(d.int(1));
        c.offset = Some(d.a[2]);
        c.bytes = Some(d.a[3]);
        d.done(c, Record::MulticastUnbind)
    }),
    // ---- CUDA graph memory nodes ----
    // Virtual addresses fixed when a graph is built, physical memory from the device's graph
    // pool when a launch runs the nodes: see [`graph_params`] and `docs/classification.md`.
    // cuGraphAddMemAllocNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode
    // *dependencies, size_t numDependencies, CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams): the
    // driver fixes the virtual address (nodeParams->dptr) when the node is added.
    def(
        "cuGraphAddMemAllocNode",
        graph_params::ALLOC_NODE | STACK,
        |d, c| {
            c.mem = Some(Mem::Graph);
            c.graph = Some(d.a[1]);
            // Pool properties at entry: CUmemLocation { type, id } in word 1, a device
            // (CU_MEM_LOCATION_TYPE_DEVICE, 1) the only location graph memory may have.
            if d.blob_ok {
                if d.ev.blob[1] & U32 == 1 {
                    c.device = Some((d.ev.blob[1] >> 32) as i32);
                }
            } else {
                c.unreadable.push("params".into());
            }
            // bytesize and the dptr the driver chose, read at return.
            if d.ok && d.blob_ok {
                c.bytes = Some(d.ev.wide[graph_params::WIDE_BYTESIZE]);
                c.addr = Some(d.ev.wide[graph_params::WIDE_DPTR]);
            }
            d.done(c, Record::GraphAllocNode)
        },
    ),
    // cuGraphAddMemFreeNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode
    // *dependencies, size_t numDependencies, CUdeviceptr dptr)
    def("cuGraphAddMemFreeNode", 0, |d, c| {
        c.mem = Some(Mem::Graph);
        c.graph = Some(d.a[1]);
        c.addr = Some(d.a[4]);
        d.done(c, Record::GraphFreeNode)
    }),
    // cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, ...): the `_v2`,
    // `WithFlags` and `WithParams(_ptsz)` variants all take the exec out-pointer and the
    // graph first.
    def("cuGraphInstantiate", DEREF_ARG0, graph_instantiate),
    def("cuGraphInstantiateWithFlags", DEREF_ARG0, graph_instantiate),
    def(
        "cuGraphInstantiateWithParams",
        DEREF_ARG0,
        graph_instantiate,
    ),
    // cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream): runs the exec's nodes.
    def("cuGraphLaunch", 0, |d, c| {
        c.handle = Some(d.a[0]);
        c.stream = Some(d.a[1]);
        d.done(c, Record::GraphLaunch)
    }),
    // cuGraphExecDestroy(CUgraphExec hGraphExec)
    def("cuGraphExecDestroy", 0, |d, c| {
        c.handle = Some(d.a[0]);
        d.done(c, Record::GraphDestroy)
    }),
    // cuGraphDestroy(CUgraph hGraph)
    def("cuGraphDestroy", 0, |d, c| {
        c.graph = Some(d.a[0]);
        d.done(c, Record::GraphDestroy)
    }),
    // cuDeviceGraphMemTrim(CUdevice device): the device's graph pool gives back what no
    // graph allocation uses.
    def("cuDeviceGraphMemTrim", 0, |d, c| {
        c.device = Some(d.int(0));
        d.done(c, Record::GraphMemTrim)
    }),
    // cuDeviceGetGraphMemAttribute(CUdevice device, CUgraphMem_attribute attr, void* value),
    // cuDeviceSetGraphMemAttribute (the same): the driver's own figures of graph memory,
    // read at return through argument 2 (a cuuint64_t): what a set passed (only the
    // high-water marks can be set, to 0) or what a get answered.
    def(
        "cuDeviceGetGraphMemAttribute",
        DEREF_ARG2,
        graph_mem_attribute,
    ),
    def(
        "cuDeviceSetGraphMemAttribute",
        DEREF_ARG2,
        graph_mem_attribute,
    ),
];

// Decoders that several rows share.

/// `cuMemPool{Set,Get}Attribute(pool, attr, value)`.
fn pool_attribute(d: &Args<'_>, c: &mut Call) -> Record {
    c.pool = Some(d.a[0]);
    let attr = d.uint(1);
    c.attr = Some(attr);
    if d.ok {
        c.value = d.out1(c, "value").map(|v| pool_attr_value(attr, v));
    }
    d.done(c, Record::PoolAttr)
}

/// `cuDeviceGet{Default,}MemPool(CUmemoryPool *pool, CUdevice dev)`.
fn device_pool(d: &Args<'_>, c: &mut Call) -> Record {
    c.device = Some(d.int(1));
    if d.ok {
        c.pool = d.out0(c);
    }
    d.done(c, Record::PoolCreate)
}

/// `cuMem{GetDefault,Get,Set}MemPool`: the location in the blob (word 0), the allocation
/// type an argument.
fn pool_at_location(d: &Args<'_>, c: &mut Call, set: bool) -> Record {
    if d.blob_ok {
        let alloc_type = if set { d.a[1] } else { d.a[2] } & U32;
        (c.mem, c.device) = pool_location(alloc_type, d.ev.blob[0]);
    } else {
        c.unreadable.push("location".into());
    }
    if set {
        c.pool = Some(d.a[2]);
    } else if d.ok {
        c.pool = d.out0(c);
    }
    d.done(c, Record::PoolCreate)
}

/// `cuArrayCreate`, `cuArray3DCreate`, `cuMipmappedArrayCreate`: the descriptor in the
/// blob, the levels of a mipmapped array in argument 2.
fn array_create(d: &Args<'_>, c: &mut Call, shape: ArrayShape) -> Record {
    c.mem = Some(Mem::Array);
    if d.blob_ok {
        c.bytes = Some(array_bytes(shape, d.legacy32, &d.ev.blob, d.a[2]));
        // CUDA_ARRAY3D_DESCRIPTOR's Flags, after NumChannels (the sixth unsigned int of the
        // 3.x descriptor): a sparse or deferred-mapping array has no memory of its own.
        if shape != ArrayShape::TwoD {
            let b = &d.ev.blob;
            c.flags = Some(if d.legacy32 { b[2] >> 32 } else { b[4] & U32 });
        }
    } else {
        c.unreadable.push("descriptor".into());
    }
    if d.ok {
        c.handle = d.out0(c);
    }
    d.done(c, Record::Alloc)
}

/// `cuMemMapArrayAsync*`: its first operation. `CUarrayMapInfo`: resourceType (word 0),
/// resource (1), subresourceType (2), the subresource union (3..7: `sparseLevel`'s level,
/// layer, offsetX/Y/Z, extentWidth/Height/Depth as `unsigned int`s, or `miptail`'s layer,
/// offset, size), memOperationType and memHandleType (7), memHandle (8), offset (9).
fn array_map(d: &Args<'_>, c: &mut Call) -> Record {
    const MAP: u64 = 1;
    const UNMAP: u64 = 2;
    const MIPTAIL: u64 = 1;
    c.count = Some(d.a[1] & U32);
    c.stream = Some(d.a[2]);
    if !d.blob_ok {
        c.unreadable.push("map_info".into());
        return d.done(c, Record::ArrayMap);
    }
    let (b, w) = (&d.ev.blob, &d.ev.wide);
    // Words 0..5 are the blob's, 4.. the wide window's (word 4 in both).
    let word = |i: usize| if i < 4 { b[i] } else { w[i - 4] };
    let (lo, hi) = (|v: u64| v & U32, |v: u64| v >> 32);
    c.handle = Some(word(1));
    let region = if word(2) & U32 == MIPTAIL {
        ArrayRegion {
            miptail: true,
            level: 0,
            layer: lo(word(3)) as u32,
            offset: [word(4), 0, 0],
            extent: [word(5), 0, 0],
        }
    } else {
        ArrayRegion {
            miptail: false,
            level: lo(word(3)) as u32,
            layer: hi(word(3)) as u32,
            offset: [lo(word(4)), hi(word(4)), lo(word(5))],
            extent: [hi(word(5)), lo(word(6)), hi(word(6))],
        }
    };
    c.region = Some(Box::new(region));
    match lo(word(7)) {
        UNMAP => d.done(c, Record::ArrayUnmap),
        op => {
            if op == MAP {
                c.bound = Some(Box::new(Bound {
                    handle: word(8),
                    offset: word(9),
                }));
            } else {
                c.unreadable.push("operation".into());
            }
            d.done(c, Record::ArrayMap)
        }
    }
}

/// `cuArrayDestroy`, `cuMipmappedArrayDestroy`.
fn array_destroy(d: &Args<'_>, c: &mut Call) -> Record {
    c.mem = Some(Mem::Array);
    c.handle = Some(d.a[0]);
    d.done(c, Record::Free)
}

/// `cuMemAllocHost`, `cuMemHostAlloc` (with `flags`).
fn host_alloc(d: &Args<'_>, c: &mut Call, flags: Option<u32>) -> Record {
    c.mem = Some(Mem::HostPinned);
    c.bytes = Some(d.word(d.a[1]));
    c.flags = flags.map(u64::from);
    if d.ok {
        // A host pointer is 64 bits in every ABI.
        c.addr = d.out0_unmasked(c);
    }
    d.done(c, Record::Alloc)
}

/// `cuDevicePrimaryCtxRelease`, `cuDevicePrimaryCtxReset`.
fn primary_ctx_end(d: &Args<'_>, c: &mut Call) -> Record {
    c.device = Some(d.int(0));
    d.done(c, Record::CtxDestroy)
}

/// `cuCtxSetCurrent`, `cuCtxPushCurrent`.
fn ctx_current(d: &Args<'_>, c: &mut Call) -> Record {
    c.handle = Some(d.a[0]);
    d.done(c, Record::CtxCurrent)
}

/// `cuMemcpyHtoD*`: the destination range.
fn host_to_device(d: &Args<'_>, c: &mut Call, stream: Option<u64>) -> Record {
    c.addr = Some(d.word(d.a[0]));
    c.bytes = Some(d.word(d.a[2]));
    c.stream = stream;
    d.done(c, Record::Copy)
}

/// `cuMemcpy`, `cuMemcpyAsync`: both addresses, the Ledger tells where they lie.
fn unified_copy(d: &Args<'_>, c: &mut Call, stream: Option<u64>) -> Record {
    c.addr = Some(d.a[0]);
    c.src_mem = Some(CopySrc::Unified);
    c.src = Some(d.a[1]);
    c.bytes = Some(d.a[2]);
    c.stream = stream;
    d.done(c, Record::Copy)
}

/// `cuMemcpy2D*`, `cuMemcpy3D*`: the descriptor from the windows.
fn copy_2d_3d(d: &Args<'_>, c: &mut Call, three: bool, stream: Option<u64>) -> Record {
    c.stream = stream;
    if d.legacy32 {
        // The CUDA 3.x descriptor: 32-bit fields, another layout.
        c.unreadable.push("descriptor (CUDA 3.x layout)".into());
    } else if !d.blob_ok {
        c.unreadable.push("descriptor".into());
    } else {
        copy_descriptor(three, d.ev, c);
    }
    d.done(c, Record::Copy)
}

/// `cuIpcGetMemHandle`, `cuMemPoolExportPointer` (`out, dptr`): the 64 bytes read at
/// return.
fn export_by_address(d: &Args<'_>, c: &mut Call) -> Record {
    c.addr = Some(d.a[1]);
    if d.ok {
        c.share = share_of(d.ev, c);
    }
    d.done(c, Record::Export)
}

/// `cuMemExportToShareableHandle`, `cuMemPoolExportToShareableHandle` (`out, what,
/// handleType, flags`): the OS handle written.
fn shareable_export(d: &Args<'_>, c: &mut Call) -> Record {
    c.handle_type = Some(d.uint(2));
    c.flags = Some(d.a[3]);
    if d.ok {
        c.os_handle = d.out0(c).map(|h| os_handle(c.handle_type, h));
        c.file = file_of(d, c);
    }
    d.done(c, Record::Export)
}

/// `cuGraphInstantiate*(CUgraphExec *phGraphExec, CUgraph hGraph, ...)`.
fn graph_instantiate(d: &Args<'_>, c: &mut Call) -> Record {
    c.graph = Some(d.a[1]);
    if d.ok {
        c.handle = d.out0(c);
    }
    d.done(c, Record::GraphInstantiate)
}

/// The multicast object of a `cuMulticastBind*` call, and its device when the variant names
/// one (`_v2`): the index of the argument after them.
fn multicast_device(d: &Args<'_>, c: &mut Call) -> usize {
    c.handle = Some(d.a[0]);
    if d.version >= 2 {
        c.device = Some(d.int(1));
        2
    } else {
        1
    }
}

/// `cuDevice{Get,Set}GraphMemAttribute(device, attr, value)`.
fn graph_mem_attribute(d: &Args<'_>, c: &mut Call) -> Record {
    c.device = Some(d.int(0));
    c.attr = Some(d.uint(1));
    if d.ok {
        c.value = d.out1(c, "value");
    }
    d.done(c, Record::GraphMemAttr)
}

/// `CUDA_MEM_ALLOC_NODE_PARAMS` (`cuda.h`, 64-bit ABI, 15 words): `CUmemPoolProps poolProps`
/// (88 bytes: `allocType`/`handleTypes` in word 0, `CUmemLocation { type, id }` in word 1,
/// then `win32SecurityAttributes`, `maxSize`, `usage` and reserved bytes up to word 11),
/// `accessDescs` (word 11), `accessDescCount` (12), `bytesize` (13), `dptr` (14).
pub mod graph_params {
    use vramtrace_common::cookie::{WIDE_AT_RETURN, with_blob_arg, with_wide_skip};

    /// The blob holds words 0..5 (the pool properties) at entry; the wide window words
    /// 7..15 at return, the last two `bytesize` and the `dptr` the driver wrote.
    pub const ALLOC_NODE: u64 = with_blob_arg(4) | with_wide_skip(7) | WIDE_AT_RETURN;
    /// `bytesize` in the wide window.
    pub const WIDE_BYTESIZE: usize = 13 - 7;
    /// `dptr` in the wide window.
    pub const WIDE_DPTR: usize = 14 - 7;
}

/// `CUgraphMem_attribute` (CUDA driver API reference, "Data types used by CUDA driver").
pub mod graph_mem_attr {
    /// `CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT`: bytes of graph allocations live now.
    pub const USED_MEM_CURRENT: u32 = 0;
    /// `CU_GRAPH_MEM_ATTR_USED_MEM_HIGH`: the highest `USED_MEM_CURRENT` since the last
    /// reset (a set to 0).
    pub const USED_MEM_HIGH: u32 = 1;
    /// `CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`: bytes the device's graph pool holds from
    /// the GPU, in use or not.
    pub const RESERVED_MEM_CURRENT: u32 = 2;
    /// `CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH`: the highest `RESERVED_MEM_CURRENT` since the
    /// last reset.
    pub const RESERVED_MEM_HIGH: u32 = 3;

    /// The attribute's name, as `cuda.h` spells it.
    pub fn name(attr: u32) -> &'static str {
        match attr {
            USED_MEM_CURRENT => "USED_MEM_CURRENT",
            USED_MEM_HIGH => "USED_MEM_HIGH",
            RESERVED_MEM_CURRENT => "RESERVED_MEM_CURRENT",
            RESERVED_MEM_HIGH => "RESERVED_MEM_HIGH",
            _ => "unknown",
        }
    }
}

/// One exported symbol that probes are attached to. Its index in the hooked table is the API
/// id carried by the attach cookie.
#[derive(Clone, Debug)]
pub struct Hooked {
    /// Exported symbol name.
    pub symbol: crate::trace::ApiName,
    /// What its arguments mean.
    pub decode: Decode,
    /// Arguments and out-parameters are 32-bit (the CUDA 3.x ABI).
    pub legacy32: bool,
    /// Its ABI version: N of a `_vN` suffix, 1 without one (where `cuCtxCreate*`'s flags and
    /// device sit, [`CtxArgs::of`]; the other signatures that changed, by their decoders).
    pub version: u32,
    /// The cookie flags for this symbol.
    pub flags: u64,
}

impl Hooked {
    /// Describes `symbol`, a variant of `def`.
    pub fn new(def: &ApiDef, symbol: &str) -> Self {
        let suffix = &symbol[def.base.len().min(symbol.len())..];
        let version = suffix.strip_prefix("_v").map(|r| {
            r[..r.bytes().take_while(u8::is_ascii_digit).count()]
                .parse()
                .unwrap_or(1)
        });
        Hooked {
            symbol: symbol.into(),
            decode: def.decode,
            legacy32: def.legacy32 && version.is_none(),
            version: version.unwrap_or(1),
            flags: def.flags,
        }
    }

    /// The attach cookie for this symbol, whose API id is `id`.
    pub fn cookie(&self, id: u16) -> u64 {
        cookie::make(id, self.flags)
    }
}

/// The argument indices of `flags` and `dev` in one variant of `cuCtxCreate`, whose
/// signatures differ by what comes between the out-pointer and them (CUDA driver API
/// reference, "Context Management"; `cuda.h` of CUDA 12.5 for `_v4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtxArgs {
    /// `unsigned int flags`.
    pub flags: usize,
    /// `CUdevice dev`.
    pub device: usize,
}

impl CtxArgs {
    /// `cuCtxCreate`, `_v2`: `(pctx, flags, dev)`.
    pub const V2: CtxArgs = CtxArgs {
        flags: 1,
        device: 2,
    };
    /// `_v3`: `(pctx, CUexecAffinityParam *paramsArray, int numParams, flags, dev)`.
    pub const V3: CtxArgs = CtxArgs {
        flags: 3,
        device: 4,
    };
    /// `_v4`: `(pctx, CUctxCreateParams *ctxCreateParams, flags, dev)`.
    pub const V4: CtxArgs = CtxArgs {
        flags: 2,
        device: 3,
    };

    /// The layout of the variant of ABI `version` (N of its `_vN` suffix, 1 without one).
    pub fn of(version: u32) -> CtxArgs {
        match version {
            3 => CtxArgs::V3,
            4 => CtxArgs::V4,
            _ => CtxArgs::V2,
        }
    }
}

/// True when `name` is `base` or a variant of it: `base(_vN)?(_ptsz|_ptds)?`.
/// `cuMemAllocHost` is not a variant of `cuMemAlloc`, nor `cuMemFreeAsync` of `cuMemFree`.
pub fn is_variant(name: &str, base: &str) -> bool {
    let Some(mut rest) = name.strip_prefix(base) else {
        return false;
    };
    if let Some(r) = rest.strip_prefix("_v") {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &r[digits..];
    }
    matches!(rest, "" | "_ptsz" | "_ptds")
}

/// `CUmemPool_attribute` (CUDA driver API reference, "Data types used by CUDA driver").
pub mod pool_attr {
    /// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`: reserved bytes the pool keeps at a
    /// synchronization; what it holds above that goes back to the GPU. 0 by default.
    pub const RELEASE_THRESHOLD: u32 = 4;
    /// `CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`: bytes the pool has from the GPU, in use or
    /// held.
    pub const RESERVED_MEM_CURRENT: u32 = 5;
    /// `CU_MEMPOOL_ATTR_USED_MEM_CURRENT`: bytes of the pool's live allocations.
    pub const USED_MEM_CURRENT: u32 = 7;

    /// Whether the attribute's value is a `cuuint64_t` byte count (release threshold,
    /// reserved and used, current and high); the others (the reuse policies, 1..=3) are an
    /// `int`.
    pub const fn is_bytes(attr: u32) -> bool {
        matches!(attr, 4..=8)
    }
}

/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: i32 = 2;

/// The name of a `CUresult` code (CUDA driver API reference, "Error Handling").
pub fn cuda_error_name(code: i32) -> &'static str {
    match code {
        0 => "CUDA_SUCCESS",
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        201 => "CUDA_ERROR_INVALID_CONTEXT",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        500 => "CUDA_ERROR_NOT_FOUND",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        801 => "CUDA_ERROR_NOT_SUPPORTED",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "unrecognized CUresult",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_match_only_suffixes() {
        assert!(is_variant("cuMemAlloc", "cuMemAlloc"));
        assert!(is_variant("cuMemAlloc_v2", "cuMemAlloc"));
        assert!(is_variant("cuMemAllocAsync_ptsz", "cuMemAllocAsync"));
        assert!(is_variant("cuMemcpyHtoD_v2_ptds", "cuMemcpyHtoD"));
        assert!(!is_variant("cuMemAllocHost", "cuMemAlloc"));
        assert!(!is_variant("cuMemAllocHost_v2", "cuMemAlloc"));
        assert!(!is_variant("cuMemFreeAsync", "cuMemFree"));
        assert!(!is_variant("cuMemAlloc_v", "cuMemAlloc"));
        assert!(!is_variant("cuMemcpyHtoDAsync_v2", "cuMemcpyHtoD"));
    }

    #[test]
    fn legacy_abi_only_for_unversioned_names() {
        let alloc = APIS.iter().find(|d| d.base == "cuMemAlloc").unwrap();
        assert!(Hooked::new(alloc, "cuMemAlloc").legacy32);
        assert!(!Hooked::new(alloc, "cuMemAlloc_v2").legacy32);
        let ctx = APIS.iter().find(|d| d.base == "cuCtxCreate").unwrap();
        let at = |symbol| CtxArgs::of(Hooked::new(ctx, symbol).version);
        assert_eq!(at("cuCtxCreate"), CtxArgs::V2);
        assert_eq!(at("cuCtxCreate_v2"), CtxArgs::V2);
        assert_eq!(at("cuCtxCreate_v3"), CtxArgs::V3);
        assert_eq!(at("cuCtxCreate_v4"), CtxArgs::V4);
        let bind = APIS
            .iter()
            .find(|d| d.base == "cuMulticastBindMem")
            .unwrap();
        assert_eq!(Hooked::new(bind, "cuMulticastBindMem").version, 1);
        assert_eq!(Hooked::new(bind, "cuMulticastBindMem_v2").version, 2);
        assert_eq!(Hooked::new(alloc, "cuMemAllocAsync_ptsz").version, 1);
    }

    #[test]
    fn bases_are_unique_and_none_is_a_variant_of_another() {
        for a in APIS {
            for b in APIS {
                if a.base != b.base {
                    assert!(!is_variant(a.base, b.base), "{} vs {}", a.base, b.base);
                }
            }
        }
    }
}
