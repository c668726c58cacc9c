"""Where managed memory lives, asked of the driver and NVML: device memory taken, and what NVML
counts for the process, as 512 MiB of cuMemAllocManaged memory is allocated, touched on the
device, moved to the host (cuMemPrefetchAsync_v2 to CU_MEM_LOCATION_TYPE_HOST), touched on the
device again and freed.

vramtrace's Ledger books managed memory as host memory (class host_fallback): the calls never
say where its pages are. This measures what that leaves out: if NVML counts managed pages
resident on the GPU in the process's figure, the NVML column's residual includes them.

usage: python3 managed.py [--lib libcuda.so.1] [--nvml libnvidia-ml.so.1]
Prints one JSON object per step (free device bytes, NVML's bytes for this process).
"""

import argparse
import ctypes
import json
import os
from ctypes import byref, c_int, c_size_t, c_uint, c_uint64, c_void_p

from ctx_destroy import Driver, Location

MiB = 1 << 20
SIZE = 512 * MiB


class ProcessInfo(ctypes.Structure):
    # nvmlProcessInfo_t (v2 layout, nvmlDeviceGetComputeRunningProcesses_v3)
    _fields_ = [
        ("pid", c_uint),
        ("used", c_uint64),
        ("gpu_instance", c_uint),
        ("compute_instance", c_uint),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="libcuda.so.1")
    ap.add_argument("--nvml", default="libnvidia-ml.so.1")
    args = ap.parse_args()
    cu = Driver(args.lib)
    nvml = ctypes.CDLL(args.nvml)
    assert nvml.nvmlInit_v2() == 0
    gpu = c_void_p()
    assert nvml.nvmlDeviceGetHandleByIndex_v2(0, byref(gpu)) == 0
    cu("cuInit", 0)
    dev = c_int()
    cu("cuDeviceGet", byref(dev), 0)
    ctx = c_void_p()
    cu("cuDevicePrimaryCtxRetain", byref(ctx), dev)
    cu("cuCtxSetCurrent", ctx)

    def nvml_bytes():
        infos = (ProcessInfo * 64)()
        n = c_uint(64)
        ret = nvml.nvmlDeviceGetComputeRunningProcesses_v3(gpu, byref(n), infos)
        if ret != 0:
            return f"error {ret}"
        return next((i.used for i in infos[: n.value] if i.pid == os.getpid()), None)

    def step(name):
        cu("cuCtxSynchronize")
        free, total = c_size_t(), c_size_t()
        cu("cuMemGetInfo_v2", byref(free), byref(total))
        print(json.dumps({"step": name, "free": free.value, "nvml_process": nvml_bytes()}), flush=True)

    step("context")
    p = c_uint64()
    cu("cuMemAllocManaged", byref(p), c_size_t(SIZE), 1)  # CU_MEM_ATTACH_GLOBAL
    step("allocated")
    cu("cuMemsetD8_v2", p, 1, c_size_t(SIZE))
    step("touched_on_device")
    host = Location(2, 0)  # CU_MEM_LOCATION_TYPE_HOST
    ret = cu("cuMemPrefetchAsync_v2", p, c_size_t(SIZE), host, c_uint(0), None, ok=False)
    step(f"prefetched_to_host (ret {ret})")
    cu("cuMemsetD8_v2", p, 2, c_size_t(SIZE))
    step("touched_on_device_again")
    cu("cuMemFree_v2", p)
    step("freed")


if __name__ == "__main__":
    main()
