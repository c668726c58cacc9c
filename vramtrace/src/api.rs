//! The CUDA driver entry points vramtrace hooks: what each one means, which of its arguments
//! matter, and the attach cookie that tells the generic BPF programs what to capture.
//!
//! Signatures are those of the CUDA driver API reference (`cuda.h`,
//! <https://docs.nvidia.com/cuda/cuda-driver-api/>). Every exported variant of a base name
//! (`cuMemAlloc`, `cuMemAlloc_v2`, `cuMemAllocAsync_ptsz`, ...) is found in the library's
//! dynamic symbol table at attach time; the unversioned names of the oldest entry points are
//! the CUDA 3.x ABI with 32-bit sizes and device pointers, and are decoded as such.

use vramtrace_common::cookie;

/// What an entry point does. One variant per base name (or per distinct signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `cuMemAlloc(CUdeviceptr *dptr, size_t bytesize)`
    MemAlloc,
    /// `cuMemAllocPitch(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
    /// unsigned ElementSizeBytes)`
    MemAllocPitch,
    /// `cuMemFree(CUdeviceptr dptr)`
    MemFree,
    /// `cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)`
    MemAllocAsync,
    /// `cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
    /// CUstream hStream)`
    MemAllocFromPoolAsync,
    /// `cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)`
    MemFreeAsync,
    /// `cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps)`
    MemPoolCreate,
    /// `cuMemPoolDestroy(CUmemoryPool pool)`
    MemPoolDestroy,
    /// `cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)`
    MemPoolTrimTo,
    /// `cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)`:
    /// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD` (a `cuuint64_t`) is what the pool keeps reserved
    /// at a synchronization.
    MemPoolSetAttribute,
    /// `cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)`
    MemPoolGetAttribute,
    /// `cuCtxSynchronize(void)`, `cuStreamSynchronize(CUstream hStream)`,
    /// `cuEventSynchronize(CUevent hEvent)`: where pools give memory above their release
    /// threshold back to the GPU.
    Synchronize,
    /// `cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev)`
    DeviceGetDefaultMemPool,
    /// `cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)`: the device's current pool.
    DeviceGetMemPool,
    /// `cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool)`: the pool `cuMemAllocAsync`
    /// takes from on `dev` from now on.
    DeviceSetMemPool,
    /// `cuMemGetDefaultMemPool(CUmemoryPool *pool_out, CUmemLocation *location,
    /// CUmemAllocationType type)` (CUDA 13.0)
    MemGetDefaultMemPool,
    /// `cuMemGetMemPool(CUmemoryPool *pool, CUmemLocation *location, CUmemAllocationType
    /// type)` (CUDA 13.0): the current pool of a location and type.
    MemGetMemPool,
    /// `cuMemSetMemPool(CUmemLocation *location, CUmemAllocationType type, CUmemoryPool
    /// pool)` (CUDA 13.0)
    MemSetMemPool,
    /// `cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
    /// const CUmemAllocationProp *prop, unsigned long long flags)`
    MemCreate,
    /// `cuMemRelease(CUmemGenericAllocationHandle handle)`
    MemRelease,
    /// `cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
    /// CUmemGenericAllocationHandle handle, unsigned long long flags)`
    MemMap,
    /// `cuMemUnmap(CUdeviceptr ptr, size_t size)`
    MemUnmap,
    /// `cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
    /// unsigned long long flags)`
    MemAddressReserve,
    /// `cuMemAddressFree(CUdeviceptr ptr, size_t size)`
    MemAddressFree,
    /// `cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray)`
    ArrayCreate,
    /// `cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray)`
    Array3DCreate,
    /// `cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
    /// unsigned int numMipmapLevels)`
    MipmappedArrayCreate,
    /// `cuArrayDestroy(CUarray hArray)`
    ArrayDestroy,
    /// `cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray)`
    MipmappedArrayDestroy,
    /// `cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)`
    MemAllocManaged,
    /// `cuMemAllocHost(void **pp, size_t bytesize)`
    MemAllocHost,
    /// `cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)`
    MemHostAlloc,
    /// `cuMemFreeHost(void *p)`
    MemFreeHost,
    /// `cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags)`
    MemHostRegister,
    /// `cuMemHostUnregister(void *p)`
    MemHostUnregister,
    /// `cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)`; `_v3` takes
    /// `(pctx, CUexecAffinityParam *params, int numParams, unsigned flags, CUdevice dev)`,
    /// `_v4` (CUDA 12.5) `(pctx, CUctxCreateParams *params, unsigned flags, CUdevice dev)`:
    /// see [`CtxArgs`].
    CtxCreate,
    /// `cuCtxDestroy(CUcontext ctx)`
    CtxDestroy,
    /// `cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)`
    DevicePrimaryCtxRetain,
    /// `cuDevicePrimaryCtxRelease(CUdevice dev)`
    DevicePrimaryCtxRelease,
    /// `cuDevicePrimaryCtxReset(CUdevice dev)`: frees everything of the primary context,
    /// which stays retained.
    DevicePrimaryCtxReset,
    /// `cuCtxSetCurrent(CUcontext ctx)`
    CtxSetCurrent,
    /// `cuCtxPushCurrent(CUcontext ctx)`
    CtxPushCurrent,
    /// `cuCtxPopCurrent(CUcontext *pctx)`
    CtxPopCurrent,
    /// `cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev,
    /// unsigned int flags)` (CUDA 12.4): retains `dev`'s primary context until
    /// `cuGreenCtxDestroy`.
    GreenCtxCreate,
    /// `cuGreenCtxDestroy(CUgreenCtx hCtx)`: releases the primary context it retained.
    GreenCtxDestroy,
    /// `cuCtxFromGreenCtx(CUcontext *pContext, CUgreenCtx hCtx)`: the `CUcontext` that
    /// stands for a green context (made current with `cuCtxSetCurrent`/`cuCtxPushCurrent`).
    CtxFromGreenCtx,
    /// `cuMemcpyHtoD(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)`
    MemcpyHtoD,
    /// `cuMemcpyHtoDAsync(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount,
    /// CUstream hStream)`
    MemcpyHtoDAsync,
    /// `cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount)`: unified addressing, the
    /// direction follows from where the addresses lie.
    Memcpy,
    /// `cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream)`
    MemcpyAsync,
    /// `cuMemcpy2D(const CUDA_MEMCPY2D *pCopy)`, `cuMemcpy2DUnaligned(const CUDA_MEMCPY2D *)`
    Memcpy2D,
    /// `cuMemcpy2DAsync(const CUDA_MEMCPY2D *pCopy, CUstream hStream)`
    Memcpy2DAsync,
    /// `cuMemcpy3D(const CUDA_MEMCPY3D *pCopy)`
    Memcpy3D,
    /// `cuMemcpy3DAsync(const CUDA_MEMCPY3D *pCopy, CUstream hStream)`
    Memcpy3DAsync,
    /// `cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr)`: the 64-byte handle
    /// another process opens, read at return.
    IpcGetMemHandle,
    /// `cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)`
    /// (and `_v2`, the same signature): the handle is passed by value, in memory on the
    /// caller's stack; `Flags` is the second integer argument (rsi).
    IpcOpenMemHandle,
    /// `cuIpcCloseMemHandle(CUdeviceptr dptr)`
    IpcCloseMemHandle,
    /// `cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle
    /// handle, CUmemAllocationHandleType handleType, unsigned long long flags)`
    MemExportToShareableHandle,
    /// `cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
    /// CUmemAllocationHandleType shHandleType)`: a POSIX file descriptor is passed as the
    /// pointer's value.
    MemImportFromShareableHandle,
    /// `cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)`: one
    /// more reference to the handle mapped at `addr`, released by `cuMemRelease`.
    MemRetainAllocationHandle,
    /// `cuMemPoolExportPointer(CUmemPoolPtrExportData *shareData_out, CUdeviceptr ptr)`: 64
    /// bytes read at return.
    MemPoolExportPointer,
    /// `cuMemPoolImportPointer(CUdeviceptr *ptr_out, CUmemoryPool pool,
    /// CUmemPoolPtrExportData *shareData)`
    MemPoolImportPointer,
    /// `cuMemPoolExportToShareableHandle(void *handle_out, CUmemoryPool pool,
    /// CUmemAllocationHandleType handleType, unsigned long long flags)`: a pool made with
    /// `handleTypes`, for another process to import before its pointers.
    MemPoolExportToShareableHandle,
    /// `cuMemPoolImportFromShareableHandle(CUmemoryPool *pool_out, void *handle,
    /// CUmemAllocationHandleType handleType, unsigned long long flags)`: another process's
    /// pool, which only maps that process's pointers (`cuMemPoolImportPointer`).
    MemPoolImportFromShareableHandle,

    // CUDA graph memory nodes (CUDA 11.4): see [`graph_params`] and `docs/classification.md`.
    /// `cuGraphAddMemAllocNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode
    /// *dependencies, size_t numDependencies, CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams)`: the
    /// driver fixes the virtual address (`nodeParams->dptr`) when the node is added.
    GraphAddMemAllocNode,
    /// `cuGraphAddMemFreeNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode
    /// *dependencies, size_t numDependencies, CUdeviceptr dptr)`
    GraphAddMemFreeNode,
    /// `cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, ...)`: the `_v2`,
    /// `WithFlags` and `WithParams(_ptsz)` variants all take the exec out-pointer and the
    /// graph first.
    GraphInstantiate,
    /// `cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)`: runs the exec's nodes.
    GraphLaunch,
    /// `cuGraphExecDestroy(CUgraphExec hGraphExec)`
    GraphExecDestroy,
    /// `cuGraphDestroy(CUgraph hGraph)`
    GraphDestroy,
    /// `cuDeviceGraphMemTrim(CUdevice device)`: the device's graph pool gives back what no
    /// graph allocation uses.
    DeviceGraphMemTrim,
    /// `cuDeviceGetGraphMemAttribute(CUdevice device, CUgraphMem_attribute attr, void*
    /// value)`, `cuDeviceSetGraphMemAttribute` (same signature): the driver's own figures of
    /// graph memory, read at return through argument 2 (a `cuuint64_t`).
    DeviceGraphMemAttribute,
}

/// A base name and what to capture for every exported variant of it.
#[derive(Clone, Copy, Debug)]
pub struct ApiDef {
    /// Base name; variants add `_v2`, `_ptsz`, ... suffixes.
    pub base: &'static str,
    /// What it does.
    pub kind: Kind,
    /// `vramtrace_common::cookie` flags (without the API id).
    pub flags: u64,
    /// The unversioned symbol is the 32-bit CUDA 3.x ABI (sizes and device pointers are
    /// `unsigned int`).
    pub legacy32: bool,
}

use cookie::{
    DEREF_ARG0, DEREF_ARG1, DEREF_ARG2, HOST_IF_LOCATION, HOST_MEMORY, STACK, WIDE_AT_RETURN,
    WIDE_FROM_STACK, with_blob_arg, with_blob_skip, with_wide_skip,
};

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

const fn def(base: &'static str, kind: Kind, flags: u64) -> ApiDef {
    ApiDef {
        base,
        kind,
        flags,
        legacy32: false,
    }
}

const fn legacy(base: &'static str, kind: Kind, flags: u64) -> ApiDef {
    ApiDef {
        base,
        kind,
        flags,
        legacy32: true,
    }
}

/// Every hooked base name (DESIGN.md, "The hooking surface").
pub const APIS: &[ApiDef] = &[
    // Device memory.
    legacy("cuMemAlloc", Kind::MemAlloc, DEREF_ARG0 | STACK),
    legacy(
        "cuMemAllocPitch",
        Kind::MemAllocPitch,
        DEREF_ARG0 | DEREF_ARG1 | STACK,
    ),
    legacy("cuMemFree", Kind::MemFree, 0),
    // Stream-ordered pools.
    def("cuMemAllocAsync", Kind::MemAllocAsync, DEREF_ARG0 | STACK),
    def(
        "cuMemAllocFromPoolAsync",
        Kind::MemAllocFromPoolAsync,
        DEREF_ARG0 | STACK,
    ),
    def("cuMemFreeAsync", Kind::MemFreeAsync, 0),
    def(
        "cuMemPoolCreate",
        Kind::MemPoolCreate,
        DEREF_ARG0 | with_blob_arg(1),
    ),
    def("cuMemPoolDestroy", Kind::MemPoolDestroy, 0),
    def("cuMemPoolTrimTo", Kind::MemPoolTrimTo, 0),
    // The value is read at return: a set's input is still there, a get's output is written.
    def(
        "cuMemPoolSetAttribute",
        Kind::MemPoolSetAttribute,
        DEREF_ARG2,
    ),
    def(
        "cuMemPoolGetAttribute",
        Kind::MemPoolGetAttribute,
        DEREF_ARG2,
    ),
    // Synchronizations: a pool releases what it holds above its release threshold at the
    // next stream, event or context synchronization (CUDA driver API reference,
    // "CUmemPool_attribute").
    def("cuCtxSynchronize", Kind::Synchronize, 0),
    def("cuStreamSynchronize", Kind::Synchronize, 0),
    def("cuEventSynchronize", Kind::Synchronize, 0),
    def(
        "cuDeviceGetDefaultMemPool",
        Kind::DeviceGetDefaultMemPool,
        DEREF_ARG0,
    ),
    def("cuDeviceGetMemPool", Kind::DeviceGetMemPool, DEREF_ARG0),
    def("cuDeviceSetMemPool", Kind::DeviceSetMemPool, 0),
    // CUmemLocation is 8 bytes: the blob reads past it, into the caller's frame (a read
    // that faults leaves the location unreadable, nothing worse).
    def(
        "cuMemGetDefaultMemPool",
        Kind::MemGetDefaultMemPool,
        DEREF_ARG0 | with_blob_arg(1),
    ),
    def(
        "cuMemGetMemPool",
        Kind::MemGetMemPool,
        DEREF_ARG0 | with_blob_arg(1),
    ),
    def("cuMemSetMemPool", Kind::MemSetMemPool, with_blob_arg(0)),
    // Virtual memory management.
    def(
        "cuMemCreate",
        Kind::MemCreate,
        DEREF_ARG0 | with_blob_arg(2) | STACK | HOST_IF_LOCATION,
    ),
    def("cuMemRelease", Kind::MemRelease, 0),
    def("cuMemMap", Kind::MemMap, 0),
    def("cuMemUnmap", Kind::MemUnmap, 0),
    def("cuMemAddressReserve", Kind::MemAddressReserve, DEREF_ARG0),
    def("cuMemAddressFree", Kind::MemAddressFree, 0),
    // Arrays.
    legacy(
        "cuArrayCreate",
        Kind::ArrayCreate,
        DEREF_ARG0 | with_blob_arg(1) | STACK,
    ),
    legacy(
        "cuArray3DCreate",
        Kind::Array3DCreate,
        DEREF_ARG0 | with_blob_arg(1) | STACK,
    ),
    def(
        "cuMipmappedArrayCreate",
        Kind::MipmappedArrayCreate,
        DEREF_ARG0 | with_blob_arg(1) | STACK,
    ),
    def("cuArrayDestroy", Kind::ArrayDestroy, 0),
    def("cuMipmappedArrayDestroy", Kind::MipmappedArrayDestroy, 0),
    // Host memory the GPU uses.
    def(
        "cuMemAllocManaged",
        Kind::MemAllocManaged,
        DEREF_ARG0 | STACK | HOST_MEMORY,
    ),
    legacy(
        "cuMemAllocHost",
        Kind::MemAllocHost,
        DEREF_ARG0 | STACK | HOST_MEMORY,
    ),
    def(
        "cuMemHostAlloc",
        Kind::MemHostAlloc,
        DEREF_ARG0 | STACK | HOST_MEMORY,
    ),
    def("cuMemFreeHost", Kind::MemFreeHost, 0),
    def(
        "cuMemHostRegister",
        Kind::MemHostRegister,
        STACK | HOST_MEMORY,
    ),
    def("cuMemHostUnregister", Kind::MemHostUnregister, 0),
    // Contexts.
    def("cuCtxCreate", Kind::CtxCreate, DEREF_ARG0),
    def("cuCtxDestroy", Kind::CtxDestroy, 0),
    def(
        "cuDevicePrimaryCtxRetain",
        Kind::DevicePrimaryCtxRetain,
        DEREF_ARG0,
    ),
    def(
        "cuDevicePrimaryCtxRelease",
        Kind::DevicePrimaryCtxRelease,
        0,
    ),
    def("cuDevicePrimaryCtxReset", Kind::DevicePrimaryCtxReset, 0),
    def("cuCtxSetCurrent", Kind::CtxSetCurrent, 0),
    def("cuCtxPushCurrent", Kind::CtxPushCurrent, 0),
    def("cuCtxPopCurrent", Kind::CtxPopCurrent, DEREF_ARG0),
    // Green contexts: memory allocated while one is current is its primary context's.
    def("cuGreenCtxCreate", Kind::GreenCtxCreate, DEREF_ARG0),
    def("cuGreenCtxDestroy", Kind::GreenCtxDestroy, 0),
    def("cuCtxFromGreenCtx", Kind::CtxFromGreenCtx, DEREF_ARG0),
    // Fills from host memory.
    legacy("cuMemcpyHtoD", Kind::MemcpyHtoD, 0),
    legacy("cuMemcpyHtoDAsync", Kind::MemcpyHtoDAsync, 0),
    // Unified, 2D and 3D copies: a fill when the source is not device memory and the
    // destination is. The unversioned 2D/3D names take the CUDA 3.x descriptor, whose
    // layout differs: they are hooked and counted, not decoded.
    def("cuMemcpy", Kind::Memcpy, 0),
    def("cuMemcpyAsync", Kind::MemcpyAsync, 0),
    legacy("cuMemcpy2D", Kind::Memcpy2D, COPY_2D),
    legacy("cuMemcpy2DUnaligned", Kind::Memcpy2D, COPY_2D),
    legacy("cuMemcpy2DAsync", Kind::Memcpy2DAsync, COPY_2D),
    legacy("cuMemcpy3D", Kind::Memcpy3D, COPY_3D),
    legacy("cuMemcpy3DAsync", Kind::Memcpy3DAsync, COPY_3D),
    // Memory shared between processes: the 64-byte handles and export data are kept whole
    // in the wide window, so that an importer's handle can be matched to its exporter's.
    def("cuIpcGetMemHandle", Kind::IpcGetMemHandle, WIDE_AT_RETURN),
    def(
        "cuIpcOpenMemHandle",
        Kind::IpcOpenMemHandle,
        DEREF_ARG0 | WIDE_FROM_STACK | STACK,
    ),
    def("cuIpcCloseMemHandle", Kind::IpcCloseMemHandle, 0),
    def(
        "cuMemExportToShareableHandle",
        Kind::MemExportToShareableHandle,
        DEREF_ARG0,
    ),
    def(
        "cuMemImportFromShareableHandle",
        Kind::MemImportFromShareableHandle,
        DEREF_ARG0 | STACK,
    ),
    def(
        "cuMemRetainAllocationHandle",
        Kind::MemRetainAllocationHandle,
        DEREF_ARG0,
    ),
    def(
        "cuMemPoolExportPointer",
        Kind::MemPoolExportPointer,
        WIDE_AT_RETURN,
    ),
    def(
        "cuMemPoolImportPointer",
        Kind::MemPoolImportPointer,
        DEREF_ARG0 | with_blob_arg(2) | with_wide_skip(0) | STACK,
    ),
    def(
        "cuMemPoolExportToShareableHandle",
        Kind::MemPoolExportToShareableHandle,
        DEREF_ARG0,
    ),
    def(
        "cuMemPoolImportFromShareableHandle",
        Kind::MemPoolImportFromShareableHandle,
        DEREF_ARG0,
    ),
    // CUDA graph memory nodes: virtual addresses fixed when a graph is built, physical memory
    // from the device's graph pool when a launch runs the nodes.
    def(
        "cuGraphAddMemAllocNode",
        Kind::GraphAddMemAllocNode,
        graph_params::ALLOC_NODE | STACK,
    ),
    def("cuGraphAddMemFreeNode", Kind::GraphAddMemFreeNode, 0),
    def("cuGraphInstantiate", Kind::GraphInstantiate, DEREF_ARG0),
    def(
        "cuGraphInstantiateWithFlags",
        Kind::GraphInstantiate,
        DEREF_ARG0,
    ),
    def(
        "cuGraphInstantiateWithParams",
        Kind::GraphInstantiate,
        DEREF_ARG0,
    ),
    def("cuGraphLaunch", Kind::GraphLaunch, 0),
    def("cuGraphExecDestroy", Kind::GraphExecDestroy, 0),
    def("cuGraphDestroy", Kind::GraphDestroy, 0),
    def("cuDeviceGraphMemTrim", Kind::DeviceGraphMemTrim, 0),
    def(
        "cuDeviceGetGraphMemAttribute",
        Kind::DeviceGraphMemAttribute,
        DEREF_ARG2,
    ),
    def(
        "cuDeviceSetGraphMemAttribute",
        Kind::DeviceGraphMemAttribute,
        DEREF_ARG2,
    ),
];

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooked {
    /// Exported symbol name.
    pub symbol: std::sync::Arc<str>,
    /// What it does.
    pub kind: Kind,
    /// Arguments and out-parameters are 32-bit (the CUDA 3.x ABI).
    pub legacy32: bool,
    /// Where this variant's flags and device sit (`cuCtxCreate*` only).
    pub ctx: CtxArgs,
    /// The cookie flags for this symbol.
    pub flags: u64,
}

impl Hooked {
    /// Describes `symbol`, a variant of `def`.
    pub fn new(def: &ApiDef, symbol: &str) -> Self {
        let suffix = &symbol[def.base.len().min(symbol.len())..];
        let versioned = suffix.starts_with("_v");
        Hooked {
            symbol: symbol.into(),
            kind: def.kind,
            legacy32: def.legacy32 && !versioned,
            ctx: CtxArgs::of(suffix),
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

    /// The layout of the variant named by `suffix` (what follows the base name).
    fn of(suffix: &str) -> CtxArgs {
        match suffix {
            "_v3" => CtxArgs::V3,
            "_v4" => CtxArgs::V4,
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
        assert_eq!(Hooked::new(ctx, "cuCtxCreate").ctx, CtxArgs::V2);
        assert_eq!(Hooked::new(ctx, "cuCtxCreate_v2").ctx, CtxArgs::V2);
        assert_eq!(Hooked::new(ctx, "cuCtxCreate_v3").ctx, CtxArgs::V3);
        assert_eq!(Hooked::new(ctx, "cuCtxCreate_v4").ctx, CtxArgs::V4);
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
