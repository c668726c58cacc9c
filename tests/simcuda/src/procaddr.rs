//! `cuGetProcAddress` resolution, as measured on NVIDIA's drivers 535 and 580.
//!
//! Each base name maps to the exported variants and the CUDA version from which
//! each one is returned; with the per-thread-default-stream flag the `_ptsz` /
//! `_ptds` list is used instead where one exists.

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const PER_THREAD_DEFAULT_STREAM: u64 = 1 << 1;

/// `CUdriverProcAddressQueryResult` values.
pub const QUERY_SUCCESS: i32 = 0;
pub const QUERY_SYMBOL_NOT_FOUND: i32 = 1;
pub const QUERY_VERSION_NOT_SUFFICIENT: i32 = 2;

type Versions = &'static [(i32, &'static str)];

/// (base name, variants by minimum version, per-thread variants by minimum version)
const TABLE: &[(&str, Versions, Versions)] = &[
    ("cuInit", &[(2000, "cuInit")], &[]),
    ("cuDriverGetVersion", &[(2020, "cuDriverGetVersion")], &[]),
    ("cuDeviceGet", &[(2000, "cuDeviceGet")], &[]),
    ("cuDeviceGetCount", &[(2000, "cuDeviceGetCount")], &[]),
    (
        "cuDeviceTotalMem",
        &[(2000, "cuDeviceTotalMem"), (3020, "cuDeviceTotalMem_v2")],
        &[],
    ),
    (
        "cuMemGetInfo",
        &[(2000, "cuMemGetInfo"), (3020, "cuMemGetInfo_v2")],
        &[],
    ),
    (
        "cuGetProcAddress",
        &[(11030, "cuGetProcAddress"), (12000, "cuGetProcAddress_v2")],
        &[],
    ),
    (
        "cuMemAlloc",
        &[(2000, "cuMemAlloc"), (3020, "cuMemAlloc_v2")],
        &[],
    ),
    (
        "cuMemAllocPitch",
        &[(2000, "cuMemAllocPitch"), (3020, "cuMemAllocPitch_v2")],
        &[],
    ),
    (
        "cuMemFree",
        &[(2000, "cuMemFree"), (3020, "cuMemFree_v2")],
        &[],
    ),
    (
        "cuMemAllocAsync",
        &[(11020, "cuMemAllocAsync")],
        &[(11020, "cuMemAllocAsync_ptsz")],
    ),
    (
        "cuMemAllocFromPoolAsync",
        &[(11020, "cuMemAllocFromPoolAsync")],
        &[(11020, "cuMemAllocFromPoolAsync_ptsz")],
    ),
    (
        "cuMemFreeAsync",
        &[(11020, "cuMemFreeAsync")],
        &[(11020, "cuMemFreeAsync_ptsz")],
    ),
    ("cuMemPoolCreate", &[(11020, "cuMemPoolCreate")], &[]),
    ("cuDeviceGetMemPool", &[(11020, "cuDeviceGetMemPool")], &[]),
    ("cuDeviceSetMemPool", &[(11020, "cuDeviceSetMemPool")], &[]),
    (
        "cuMemGetDefaultMemPool",
        &[(13000, "cuMemGetDefaultMemPool")],
        &[],
    ),
    ("cuMemGetMemPool", &[(13000, "cuMemGetMemPool")], &[]),
    ("cuMemSetMemPool", &[(13000, "cuMemSetMemPool")], &[]),
    ("cuMemPoolDestroy", &[(11020, "cuMemPoolDestroy")], &[]),
    ("cuMemPoolTrimTo", &[(11020, "cuMemPoolTrimTo")], &[]),
    (
        "cuMemPoolSetAttribute",
        &[(11020, "cuMemPoolSetAttribute")],
        &[],
    ),
    (
        "cuMemPoolGetAttribute",
        &[(11020, "cuMemPoolGetAttribute")],
        &[],
    ),
    (
        "cuDeviceGetDefaultMemPool",
        &[(11020, "cuDeviceGetDefaultMemPool")],
        &[],
    ),
    ("cuMemCreate", &[(11000, "cuMemCreate")], &[]),
    ("cuMemRelease", &[(11000, "cuMemRelease")], &[]),
    (
        "cuMemAddressReserve",
        &[(11000, "cuMemAddressReserve")],
        &[],
    ),
    ("cuMemAddressFree", &[(11000, "cuMemAddressFree")], &[]),
    ("cuMemMap", &[(11000, "cuMemMap")], &[]),
    ("cuMemUnmap", &[(11000, "cuMemUnmap")], &[]),
    ("cuMemSetAccess", &[(11000, "cuMemSetAccess")], &[]),
    (
        "cuMemGetAllocationGranularity",
        &[(11000, "cuMemGetAllocationGranularity")],
        &[],
    ),
    (
        "cuArrayCreate",
        &[(2000, "cuArrayCreate"), (3020, "cuArrayCreate_v2")],
        &[],
    ),
    (
        "cuArray3DCreate",
        &[(2000, "cuArray3DCreate"), (3020, "cuArray3DCreate_v2")],
        &[],
    ),
    (
        "cuMipmappedArrayCreate",
        &[(5000, "cuMipmappedArrayCreate")],
        &[],
    ),
    ("cuArrayDestroy", &[(2000, "cuArrayDestroy")], &[]),
    (
        "cuMipmappedArrayDestroy",
        &[(5000, "cuMipmappedArrayDestroy")],
        &[],
    ),
    ("cuMemAllocManaged", &[(6050, "cuMemAllocManaged")], &[]),
    (
        "cuMemAllocHost",
        &[(2000, "cuMemAllocHost"), (3020, "cuMemAllocHost_v2")],
        &[],
    ),
    ("cuMemHostAlloc", &[(2020, "cuMemHostAlloc")], &[]),
    ("cuMemFreeHost", &[(2000, "cuMemFreeHost")], &[]),
    (
        "cuMemHostRegister",
        &[(4000, "cuMemHostRegister"), (6050, "cuMemHostRegister_v2")],
        &[],
    ),
    ("cuMemHostUnregister", &[(4000, "cuMemHostUnregister")], &[]),
    (
        "cuCtxCreate",
        &[
            (2000, "cuCtxCreate"),
            (3020, "cuCtxCreate_v2"),
            (11040, "cuCtxCreate_v3"),
            // Measured on driver 580 (vramtrace/tests/data/gpu/procaddr-580.json): 12000
            // gives `_v3`, 12050 and 13000 give `_v4`.
            (12050, "cuCtxCreate_v4"),
        ],
        &[],
    ),
    (
        "cuCtxDestroy",
        &[(2000, "cuCtxDestroy"), (4000, "cuCtxDestroy_v2")],
        &[],
    ),
    (
        "cuDevicePrimaryCtxRetain",
        &[(7000, "cuDevicePrimaryCtxRetain")],
        &[],
    ),
    (
        "cuDevicePrimaryCtxRelease",
        &[
            (7000, "cuDevicePrimaryCtxRelease"),
            (11000, "cuDevicePrimaryCtxRelease_v2"),
        ],
        &[],
    ),
    (
        "cuDevicePrimaryCtxReset",
        &[
            (7000, "cuDevicePrimaryCtxReset"),
            (11000, "cuDevicePrimaryCtxReset_v2"),
        ],
        &[],
    ),
    // Green contexts: CUDA 12.4.
    (
        "cuDeviceGetDevResource",
        &[(12040, "cuDeviceGetDevResource")],
        &[],
    ),
    (
        "cuDevResourceGenerateDesc",
        &[(12040, "cuDevResourceGenerateDesc")],
        &[],
    ),
    ("cuGreenCtxCreate", &[(12040, "cuGreenCtxCreate")], &[]),
    ("cuGreenCtxDestroy", &[(12040, "cuGreenCtxDestroy")], &[]),
    ("cuCtxFromGreenCtx", &[(12040, "cuCtxFromGreenCtx")], &[]),
    // CUDA graphs and their memory nodes (CUDA 11.4).
    ("cuGraphCreate", &[(10000, "cuGraphCreate")], &[]),
    (
        "cuGraphAddMemAllocNode",
        &[(11040, "cuGraphAddMemAllocNode")],
        &[],
    ),
    (
        "cuGraphAddMemFreeNode",
        &[(11040, "cuGraphAddMemFreeNode")],
        &[],
    ),
    (
        "cuGraphInstantiate",
        &[
            (10000, "cuGraphInstantiate"),
            (11000, "cuGraphInstantiate_v2"),
        ],
        &[],
    ),
    (
        "cuGraphInstantiateWithFlags",
        &[(11040, "cuGraphInstantiateWithFlags")],
        &[],
    ),
    (
        "cuGraphInstantiateWithParams",
        &[(12000, "cuGraphInstantiateWithParams")],
        &[(12000, "cuGraphInstantiateWithParams_ptsz")],
    ),
    (
        "cuGraphLaunch",
        &[(10000, "cuGraphLaunch")],
        &[(10000, "cuGraphLaunch_ptsz")],
    ),
    ("cuGraphExecDestroy", &[(10000, "cuGraphExecDestroy")], &[]),
    ("cuGraphDestroy", &[(10000, "cuGraphDestroy")], &[]),
    (
        "cuDeviceGraphMemTrim",
        &[(11040, "cuDeviceGraphMemTrim")],
        &[],
    ),
    (
        "cuDeviceGetGraphMemAttribute",
        &[(11040, "cuDeviceGetGraphMemAttribute")],
        &[],
    ),
    (
        "cuDeviceSetGraphMemAttribute",
        &[(11040, "cuDeviceSetGraphMemAttribute")],
        &[],
    ),
    ("cuCtxSetCurrent", &[(4000, "cuCtxSetCurrent")], &[]),
    ("cuCtxGetCurrent", &[(4000, "cuCtxGetCurrent")], &[]),
    (
        "cuCtxPushCurrent",
        &[(2000, "cuCtxPushCurrent"), (4000, "cuCtxPushCurrent_v2")],
        &[],
    ),
    (
        "cuCtxPopCurrent",
        &[(2000, "cuCtxPopCurrent"), (4000, "cuCtxPopCurrent_v2")],
        &[],
    ),
    (
        "cuCtxSynchronize",
        // Measured on driver 580 (procaddr-580.json): 12090 gives the unversioned export, 13000
        // `cuCtxSynchronize_v2(CUcontext)`.
        &[(2000, "cuCtxSynchronize"), (13000, "cuCtxSynchronize_v2")],
        &[],
    ),
    (
        "cuStreamSynchronize",
        &[(2000, "cuStreamSynchronize")],
        &[(7000, "cuStreamSynchronize_ptsz")],
    ),
    ("cuEventCreate", &[(2000, "cuEventCreate")], &[]),
    (
        "cuEventDestroy",
        &[(2000, "cuEventDestroy"), (4000, "cuEventDestroy_v2")],
        &[],
    ),
    ("cuEventSynchronize", &[(2000, "cuEventSynchronize")], &[]),
    (
        "cuMemcpyHtoD",
        &[(2000, "cuMemcpyHtoD"), (3020, "cuMemcpyHtoD_v2")],
        &[(7000, "cuMemcpyHtoD_v2_ptds")],
    ),
    (
        "cuMemcpyHtoDAsync",
        &[(2000, "cuMemcpyHtoDAsync"), (3020, "cuMemcpyHtoDAsync_v2")],
        &[(7000, "cuMemcpyHtoDAsync_v2_ptsz")],
    ),
    (
        "cuMemcpy",
        &[(4000, "cuMemcpy")],
        &[(7000, "cuMemcpy_ptds")],
    ),
    (
        "cuMemcpyAsync",
        &[(4000, "cuMemcpyAsync")],
        &[(7000, "cuMemcpyAsync_ptsz")],
    ),
    (
        "cuMemcpy2D",
        &[(3020, "cuMemcpy2D_v2")],
        &[(7000, "cuMemcpy2D_v2_ptds")],
    ),
    (
        "cuMemcpy2DUnaligned",
        &[(3020, "cuMemcpy2DUnaligned_v2")],
        &[(7000, "cuMemcpy2DUnaligned_v2_ptds")],
    ),
    (
        "cuMemcpy2DAsync",
        &[(3020, "cuMemcpy2DAsync_v2")],
        &[(7000, "cuMemcpy2DAsync_v2_ptsz")],
    ),
    (
        "cuMemcpy3D",
        &[(3020, "cuMemcpy3D_v2")],
        &[(7000, "cuMemcpy3D_v2_ptds")],
    ),
    (
        "cuMemcpy3DAsync",
        &[(3020, "cuMemcpy3DAsync_v2")],
        &[(7000, "cuMemcpy3DAsync_v2_ptsz")],
    ),
    // Batches of copies, as driver 580 resolves them: from 12080, `_v2` (no failIdx) from
    // 13000.
    (
        "cuMemcpyBatchAsync",
        &[
            (12080, "cuMemcpyBatchAsync"),
            (13000, "cuMemcpyBatchAsync_v2"),
        ],
        &[
            (12080, "cuMemcpyBatchAsync_ptsz"),
            (13000, "cuMemcpyBatchAsync_v2_ptsz"),
        ],
    ),
    (
        "cuMemcpy3DBatchAsync",
        &[
            (12080, "cuMemcpy3DBatchAsync"),
            (13000, "cuMemcpy3DBatchAsync_v2"),
        ],
        &[
            (12080, "cuMemcpy3DBatchAsync_ptsz"),
            (13000, "cuMemcpy3DBatchAsync_v2_ptsz"),
        ],
    ),
    ("cuIpcGetMemHandle", &[(4010, "cuIpcGetMemHandle")], &[]),
    (
        "cuIpcOpenMemHandle",
        &[
            (4010, "cuIpcOpenMemHandle"),
            (11000, "cuIpcOpenMemHandle_v2"),
        ],
        &[],
    ),
    ("cuIpcCloseMemHandle", &[(4010, "cuIpcCloseMemHandle")], &[]),
    (
        "cuMemPoolExportPointer",
        &[(11020, "cuMemPoolExportPointer")],
        &[],
    ),
    (
        "cuMemPoolImportPointer",
        &[(11020, "cuMemPoolImportPointer")],
        &[],
    ),
    (
        "cuMemPoolExportToShareableHandle",
        &[(11020, "cuMemPoolExportToShareableHandle")],
        &[],
    ),
    (
        "cuMemPoolImportFromShareableHandle",
        &[(11020, "cuMemPoolImportFromShareableHandle")],
        &[],
    ),
    (
        "cuMemExportToShareableHandle",
        &[(10020, "cuMemExportToShareableHandle")],
        &[],
    ),
    (
        "cuMemImportFromShareableHandle",
        &[(10020, "cuMemImportFromShareableHandle")],
        &[],
    ),
    (
        "cuMemRetainAllocationHandle",
        &[(11000, "cuMemRetainAllocationHandle")],
        &[],
    ),
    (
        "cuMemMapArrayAsync",
        &[(11010, "cuMemMapArrayAsync")],
        &[(11010, "cuMemMapArrayAsync_ptsz")],
    ),
    // Multicast objects came with CUDA 12.1; driver 580 returns the unversioned names for
    // every version it resolves them for (12050 and up), `_v2` for none.
    ("cuMulticastCreate", &[(12010, "cuMulticastCreate")], &[]),
    (
        "cuMulticastAddDevice",
        &[(12010, "cuMulticastAddDevice")],
        &[],
    ),
    (
        "cuMulticastGetGranularity",
        &[(12010, "cuMulticastGetGranularity")],
        &[],
    ),
    ("cuMulticastBindMem", &[(12010, "cuMulticastBindMem")], &[]),
    (
        "cuMulticastBindAddr",
        &[(12010, "cuMulticastBindAddr")],
        &[],
    ),
    ("cuMulticastUnbind", &[(12010, "cuMulticastUnbind")], &[]),
];

/// Resolves `base` for `version` and `flags` to an exported symbol name, or to
/// the `CUdriverProcAddressQueryResult` explaining why not.
pub fn resolve(base: &str, version: i32, flags: u64) -> Result<&'static str, i32> {
    let Some((_, plain, per_thread)) = TABLE.iter().find(|(name, _, _)| *name == base) else {
        return Err(QUERY_SYMBOL_NOT_FOUND);
    };
    let list = if flags & PER_THREAD_DEFAULT_STREAM != 0 && !per_thread.is_empty() {
        per_thread
    } else {
        plain
    };
    list.iter()
        .rev()
        .find(|(min, _)| *min <= version)
        .map(|(_, sym)| *sym)
        .ok_or(QUERY_VERSION_NOT_SUFFICIENT)
}
