"""Which exported symbol cuGetProcAddress_v2 hands out for each driver entry point.

vramtrace's uprobes sit on libcuda's exported symbols. A runtime (libcudart, PyTorch, JAX)
finds the driver's functions through cuGetProcAddress_v2 with its own CUDA version; the
probes see its calls only when the address it gets is an exported symbol's. This asks for
every entry point vramtrace hooks, or should, at CUDA versions 12000, 12050 and 13000, with
the default and per-thread stream flags, and names the exported symbol at each address.

usage: python3 procaddr.py LIBCUDA EXPORTS_FILE [OUT.json]
       (EXPORTS_FILE: the library's defined dynamic symbols, one per line: nm -D --defined-only)
"""

import ctypes
import json
import sys

NAMES = """
cuMemAlloc cuMemFree cuMemAllocPitch cuMemAllocAsync cuMemFreeAsync cuMemAllocFromPoolAsync
cuMemPoolCreate cuMemPoolDestroy cuMemPoolTrimTo cuMemPoolSetAttribute cuMemPoolImportPointer
cuDeviceGetDefaultMemPool cuDeviceSetMemPool cuDeviceGetMemPool cuMemGetDefaultMemPool
cuMemGetMemPool cuMemSetMemPool cuMemCreate cuMemRelease cuMemMap cuMemUnmap cuMemMapArrayAsync
cuMemAddressReserve cuMemAddressFree cuMemRetainAllocationHandle cuMemImportFromShareableHandle
cuMemExportToShareableHandle cuMemAllocManaged cuMemAllocHost cuMemHostAlloc cuMemFreeHost
cuMemHostRegister cuMemHostUnregister cuArrayCreate cuArray3DCreate cuArrayDestroy
cuMipmappedArrayCreate cuMipmappedArrayDestroy cuCtxCreate cuCtxDestroy cuCtxSetCurrent
cuCtxPushCurrent cuCtxPopCurrent cuDevicePrimaryCtxRetain cuDevicePrimaryCtxRelease
cuDevicePrimaryCtxReset cuMemcpy cuMemcpyAsync cuMemcpyHtoD cuMemcpyHtoDAsync cuMemcpy2D
cuMemcpy2DAsync cuMemcpy3D cuMemcpy3DAsync cuMemcpyBatchAsync cuMemcpy3DBatchAsync
cuGraphAddMemAllocNode cuGraphAddMemFreeNode cuDeviceGraphMemTrim cuGraphLaunch
cuIpcOpenMemHandle cuIpcCloseMemHandle cuMulticastCreate cuMulticastBindMem cuMulticastBindAddr
cuMulticastUnbind cuGreenCtxCreate cuGreenCtxDestroy cuCtxFromGreenCtx cuMemGetInfo
cuMemPoolGetAttribute cuCtxSynchronize cuStreamSynchronize cuEventSynchronize
""".split()

VERSIONS = [12000, 12050, 12080, 12090, 13000]
FLAGS = {"default": 0, "per_thread": 2}


def main():
    lib_path, exports_path = sys.argv[1], sys.argv[2]
    lib = ctypes.CDLL(lib_path)
    init = lib.cuInit(0)
    by_addr = {}
    with open(exports_path) as f:
        for name in f.read().split():
            try:
                addr = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
            except AttributeError:
                continue
            by_addr.setdefault(addr, []).append(name)
    get = lib.cuGetProcAddress_v2
    get.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                    ctypes.c_uint64, ctypes.POINTER(ctypes.c_int)]
    out = {"cuInit": init, "results": {}}
    counts = {}
    for ver in VERSIONS:
        for flag_name, flag in FLAGS.items():
            key = f"{ver}/{flag_name}"
            res = {}
            for name in NAMES:
                fn = ctypes.c_void_p()
                status = ctypes.c_int(-1)
                ret = get(name.encode(), ctypes.byref(fn), ver, flag, ctypes.byref(status))
                if ret != 0 or not fn.value:
                    res[name] = f"not found (ret {ret}, status {status.value})"
                else:
                    exported = by_addr.get(fn.value)
                    res[name] = "/".join(sorted(exported)) if exported else f"internal {fn.value:#x}"
            out["results"][key] = res
            c = counts.setdefault(key, {"exported": 0, "internal": 0, "not found": 0})
            for v in res.values():
                c["internal" if v.startswith("internal") else
                  "not found" if v.startswith("not found") else "exported"] += 1
    out["counts"] = counts
    for key, c in counts.items():
        print(f"cuGetProcAddress_v2 at {key}: {c['exported']} exported, {c['internal']} "
              f"internal, {c['not found']} not found")
    internal = sorted({n for r in out["results"].values() for n, v in r.items()
                       if v.startswith("internal")})
    if internal:
        print("internal addresses (probes would miss these calls):", " ".join(internal))
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
