//! `simcuda`: a simulated NVIDIA driver library for machines without a GPU.
//!
//! The build produces `libsimcuda.so` (soname `libcuda.so.1`) under the cargo
//! target directory, e.g. `target/debug/libsimcuda.so`. Tests either point the
//! tracer at it directly (`vramtrace record --libcuda PATH`: uprobes work on any
//! file name) and give the same path to the workload (`vramtrace-workload --lib
//! PATH`, which dlopens it), or copy it to a directory as `libcuda.so.1`.
//!
//! It exports the real CUDA driver API names (every versioned variant as its own
//! symbol: `cuMemAlloc` and `cuMemAlloc_v2`, `cuMemAllocAsync` and
//! `cuMemAllocAsync_ptsz`, ...) with the C signatures of `cuda.h` and the real
//! `CUresult` codes, and keeps a bookkeeping model of device memory:
//!
//! - `SIMCUDA_DEVICES=N` simulated GPUs (default 1; 0 makes `cuInit` return
//!   `CUDA_ERROR_NO_DEVICE` like a machine without a GPU), each with
//!   `SIMCUDA_CAPACITY` bytes (default 8 GiB; `K`, `M`, `G` suffixes accepted).
//!   Both are read by `cuInit`.
//! - Device addresses are handed out by a per-device monotonic bump allocator
//!   starting at `0x7f00_0000_0000 + device * 2^38`, 2 MiB aligned, never reused
//!   in a process. The legacy 32-bit entry points (`cuMemAlloc`,
//!   `cuMemAllocPitch`) get addresses below 4 GiB from a shared bump region.
//!   VMM reservations come from their own region at `0x7c00_0000_0000`.
//! - A device allocation that would take the device's used bytes over its
//!   capacity fails with `CUDA_ERROR_OUT_OF_MEMORY` (2). Capacity is charged
//!   the requested bytes (pitch × height for pitched allocations).
//! - Stream-ordered pools: a freed async block stays held by its pool (its
//!   device bytes are not returned) and is reused best-fit (smallest held block
//!   that fits, the remainder staying held) by later async allocations from that
//!   pool; `cuMemPoolTrimTo` releases held bytes, largest block first, until the
//!   pool reserves (in use plus held) exactly `minBytesToKeep` or holds nothing.
//!   Every stream, event or context synchronization does the same for every pool
//!   of device memory, down to its release threshold
//!   (`CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`, 0 by default, set and read with
//!   `cuMemPoolSetAttribute` / `cuMemPoolGetAttribute`). Destroying a pool
//!   releases its held bytes; blocks still live go back to the device when freed.
//! - VMM: `cuMemCreate` with a device location charges capacity; physical memory
//!   is returned when it is both released and unmapped. Sizes must be multiples
//!   of the 2 MiB granularity. `cuMemAddressFree` requires the range unmapped.
//! - Host memory (pinned, managed, registered, host-located VMM) never counts
//!   against device capacity; pinned and managed memory is real `malloc`ed
//!   memory, and copies into managed memory really copy.
//! - Copies: `cuMemcpy*` (unified addressing) and `cuMemcpy2D*` / `cuMemcpy3D*` (the `_v2`
//!   descriptors; the CUDA 3.x unversioned names are not exported) check each side as the
//!   driver would (device memory must hold the whole range, an array must exist, host memory
//!   must not be null; a unified address is device memory when it lies in one) and move no
//!   data: `CUDA_ERROR_INVALID_VALUE` (1) or `CUDA_ERROR_INVALID_HANDLE` (400) otherwise.
//! - Contexts: a per-thread context stack. Destroying a context, or releasing
//!   the last reference of a primary context, frees every `cuMemAlloc*` /
//!   `cuMemAllocPitch*` allocation and array made in it (stream-ordered
//!   allocations belong to their pool and are left alone).
//! - Memory shared between processes: `cuIpcGetMemHandle` (a `cuMemAlloc*` allocation, by
//!   its base address), `cuIpcOpenMemHandle` / `_v2` (the 64-byte handle by value; opens
//!   of the same handle share one address and are closed as often with
//!   `cuIpcCloseMemHandle`), `cuMemPoolExportToShareableHandle` /
//!   `cuMemPoolImportFromShareableHandle` (a pool, imported before its pointers; allocating
//!   from an imported pool gives `CUDA_ERROR_INVALID_VALUE`), `cuMemPoolExportPointer` /
//!   `cuMemPoolImportPointer` (into the imported pool; freed by the importer with
//!   `cuMemFree*`), `cuMemExportToShareableHandle` / `cuMemImportFromShareableHandle` (POSIX
//!   file descriptors only: a memfd; other types give `CUDA_ERROR_NOT_SUPPORTED`, 801) and
//!   `cuMemRetainAllocationHandle` (one more reference, given back by `cuMemRelease`). The
//!   64 bytes carry the exporter's pid, device, address, size and pool; the importer gets
//!   its own address, never charged. A handle of the same process gives
//!   `CUDA_ERROR_INVALID_CONTEXT` (201), one of a process that is gone
//!   `CUDA_ERROR_INVALID_HANDLE` (400). As on driver 580, only what was made shareable
//!   exports: a pool made with `handleTypes` (not the default pool), memory made with that
//!   type among `requestedHandleTypes`; anything else gives `CUDA_ERROR_INVALID_VALUE`.
//! - CUDA graphs with memory nodes (`cuGraphCreate`, `cuGraphAddMemAllocNode`,
//!   `cuGraphAddMemFreeNode`, `cuGraphInstantiate*`, `cuGraphLaunch*`, `cuGraphExecDestroy`,
//!   `cuGraphDestroy`): an alloc node's address is fixed when it is added; a launch makes
//!   it live from the device's graph pool, which keeps what it reserved until
//!   `cuDeviceGraphMemTrim`; `cuDeviceGetGraphMemAttribute` / `cuDeviceSetGraphMemAttribute`
//!   answer and reset the pool's figures. See `imp/graph.rs`.
//! - Multicast objects (`cuMulticastCreate`, `cuMulticastAddDevice`,
//!   `cuMulticastBindMem` / `cuMulticastBindAddr` and their `_v2`, `cuMulticastUnbind`,
//!   `cuMulticastGetGranularity`): a handle with a size and a team of devices and no memory
//!   of its own; a binding keeps the `cuMemCreate` memory bound to it until it is unbound or
//!   the object, released with `cuMemRelease` and unmapped, goes. See `imp/multicast.rs`.
//! - Sparse and deferred-mapping arrays (`CUDA_ARRAY3D_SPARSE`, `_DEFERRED_MAPPING`) have no
//!   memory of their own; `cuMemMapArrayAsync` (and `_ptsz`) maps `cuMemCreate` memory into
//!   their regions, which keeps it until unmapped or the array goes. See `imp/sparse.rs`.
//! - A trap for the tracer's tests: with `SIMCUDA_TRAP_BYTES=N`, a `cuMemAlloc_v2` of
//!   exactly N bytes ends its thread inside the call (`SIMCUDA_TRAP=exit-thread`), or
//!   creates `DIR/entered` and waits inside the call until `DIR/release` exists
//!   (`SIMCUDA_TRAP=block:DIR`).
//! - `cuGetProcAddress` / `cuGetProcAddress_v2` resolve like driver 535: by
//!   base name and requested version (`cuMemAlloc` at 3020+ gives
//!   `cuMemAlloc_v2`), with `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`
//!   giving the `_ptsz` / `_ptds` variants, and they work before `cuInit`.
//!
//! Every export begins like NVIDIA's: `cmpl $0x0, GUARD(%rip)` then `je`, then
//! a jump to the Rust implementation, leaving the stack and the argument
//! registers untouched.

#![allow(non_snake_case)]

mod imp;
mod procaddr;

/// Read by the first instruction of every export, as NVIDIA's entry points
/// read their initialization word.
static ENTRY_GUARD: u32 = 0;

macro_rules! exports {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("The exported driver entry point `", stringify!($name), "`.")]
            ///
            /// # Safety
            ///
            /// Called from C with the arguments that `cuda.h` declares for this
            /// entry point; pointer arguments must be valid as the CUDA driver
            /// API documents.
            #[unsafe(no_mangle)]
            #[unsafe(naked)]
            pub unsafe extern "C" fn $name() {
                core::arch::naked_asm!(
                    "cmp dword ptr [rip + {guard}], 0",
                    "je 2f",
                    "2:",
                    "jmp {target}",
                    guard = sym ENTRY_GUARD,
                    target = sym imp::$name,
                );
            }
        )*

        /// The address of the exported symbol `name`, if this library exports it.
        pub(crate) fn export_address(name: &str) -> Option<*mut core::ffi::c_void> {
            match name {
                $(
                    stringify!($name) => {
                        Some($name as unsafe extern "C" fn() as *mut core::ffi::c_void)
                    }
                )*
                _ => None,
            }
        }
    };
}

exports! {
    cuInit,
    cuDriverGetVersion,
    cuDeviceGet,
    cuDeviceGetCount,
    cuDeviceTotalMem,
    cuDeviceTotalMem_v2,
    cuMemGetInfo,
    cuMemGetInfo_v2,
    cuGetProcAddress,
    cuGetProcAddress_v2,
    cuMemAlloc,
    cuMemAlloc_v2,
    cuMemAllocPitch,
    cuMemAllocPitch_v2,
    cuMemFree,
    cuMemFree_v2,
    cuMemAllocAsync,
    cuMemAllocAsync_ptsz,
    cuMemAllocFromPoolAsync,
    cuMemAllocFromPoolAsync_ptsz,
    cuMemFreeAsync,
    cuMemFreeAsync_ptsz,
    cuMemPoolCreate,
    cuMemPoolDestroy,
    cuMemPoolTrimTo,
    cuMemPoolSetAttribute,
    cuMemPoolGetAttribute,
    cuDeviceGetDefaultMemPool,
    cuDeviceGetMemPool,
    cuDeviceSetMemPool,
    cuMemGetDefaultMemPool,
    cuMemGetMemPool,
    cuMemSetMemPool,
    cuMemCreate,
    cuMemRelease,
    cuMemAddressReserve,
    cuMemAddressFree,
    cuMemMap,
    cuMemUnmap,
    cuMemSetAccess,
    cuMemGetAllocationGranularity,
    cuArrayCreate,
    cuArrayCreate_v2,
    cuArray3DCreate,
    cuArray3DCreate_v2,
    cuMipmappedArrayCreate,
    cuArrayDestroy,
    cuMipmappedArrayDestroy,
    cuMemAllocManaged,
    cuMemAllocHost,
    cuMemAllocHost_v2,
    cuMemHostAlloc,
    cuMemFreeHost,
    cuMemHostRegister,
    cuMemHostRegister_v2,
    cuMemHostUnregister,
    cuCtxCreate,
    cuCtxCreate_v2,
    cuCtxCreate_v3,
    cuCtxCreate_v4,
    cuCtxDestroy,
    cuCtxDestroy_v2,
    cuDevicePrimaryCtxRetain,
    cuDevicePrimaryCtxRelease,
    cuDevicePrimaryCtxRelease_v2,
    cuDevicePrimaryCtxReset,
    cuDevicePrimaryCtxReset_v2,
    cuDeviceGetDevResource,
    cuDevResourceGenerateDesc,
    cuGreenCtxCreate,
    cuGreenCtxDestroy,
    cuCtxFromGreenCtx,
    cuCtxSetCurrent,
    cuCtxGetCurrent,
    cuCtxPushCurrent,
    cuCtxPushCurrent_v2,
    cuCtxPopCurrent,
    cuCtxPopCurrent_v2,
    cuCtxSynchronize,
    cuCtxSynchronize_v2,
    cuStreamSynchronize,
    cuStreamSynchronize_ptsz,
    cuEventCreate,
    cuEventDestroy,
    cuEventDestroy_v2,
    cuEventSynchronize,
    cuMemcpyHtoD,
    cuMemcpyHtoD_v2,
    cuMemcpyHtoD_v2_ptds,
    cuMemcpyHtoDAsync,
    cuMemcpyHtoDAsync_v2,
    cuMemcpyHtoDAsync_v2_ptsz,
    cuMemcpy,
    cuMemcpy_ptds,
    cuMemcpyAsync,
    cuMemcpyAsync_ptsz,
    cuMemcpy2D_v2,
    cuMemcpy2D_v2_ptds,
    cuMemcpy2DUnaligned_v2,
    cuMemcpy2DUnaligned_v2_ptds,
    cuMemcpy2DAsync_v2,
    cuMemcpy2DAsync_v2_ptsz,
    cuMemcpy3D_v2,
    cuMemcpy3D_v2_ptds,
    cuMemcpy3DAsync_v2,
    cuMemcpy3DAsync_v2_ptsz,
    cuMemcpyBatchAsync,
    cuMemcpyBatchAsync_ptsz,
    cuMemcpyBatchAsync_v2,
    cuMemcpyBatchAsync_v2_ptsz,
    cuMemcpy3DBatchAsync,
    cuMemcpy3DBatchAsync_ptsz,
    cuMemcpy3DBatchAsync_v2,
    cuMemcpy3DBatchAsync_v2_ptsz,
    cuIpcGetMemHandle,
    cuIpcOpenMemHandle,
    cuIpcOpenMemHandle_v2,
    cuIpcCloseMemHandle,
    cuMemPoolExportPointer,
    cuMemPoolImportPointer,
    cuMemExportToShareableHandle,
    cuMemImportFromShareableHandle,
    cuMemPoolExportToShareableHandle,
    cuMemPoolImportFromShareableHandle,
    cuMemRetainAllocationHandle,
    cuGraphCreate,
    cuGraphAddMemAllocNode,
    cuGraphAddMemFreeNode,
    cuGraphInstantiate,
    cuGraphInstantiate_v2,
    cuGraphInstantiateWithFlags,
    cuGraphInstantiateWithParams,
    cuGraphInstantiateWithParams_ptsz,
    cuGraphLaunch,
    cuGraphLaunch_ptsz,
    cuGraphExecDestroy,
    cuGraphDestroy,
    cuDeviceGraphMemTrim,
    cuDeviceGetGraphMemAttribute,
    cuDeviceSetGraphMemAttribute,
    cuMulticastCreate,
    cuMulticastAddDevice,
    cuMulticastGetGranularity,
    cuMulticastBindMem,
    cuMulticastBindMem_v2,
    cuMulticastBindAddr,
    cuMulticastBindAddr_v2,
    cuMulticastUnbind,
    cuMemMapArrayAsync,
    cuMemMapArrayAsync_ptsz,
}
