"""What the driver does with each kind of memory when the context it was allocated in is destroyed.

vramtrace's Ledger ends some allocations with their context (device memory, pitched memory,
arrays, pinned host memory, managed memory) and keeps others (stream-ordered allocations, whose
pool belongs to the device; physical memory from cuMemCreate, whose handle is not a context's),
following NVIDIA's documentation. This asks the driver itself, with nothing but libcuda: for each
kind, a context is created, 512 MiB of that kind allocated in it, the context destroyed, and the
device's free memory (cuMemGetInfo_v2, from the primary context) and the process's locked host
memory read before and after. A context with nothing in it is created and destroyed first, so the
context's own memory can be told from the allocation's. Then the matching free is tried from the
primary context: an error there says the allocation went with its context.

Run under `vramtrace record`, it writes its ground truth (JSON) with the CLOCK_MONOTONIC time of
each step, so the Ledger's state can be compared at the same moments.

usage: python3 ctx_destroy.py [--lib libcuda.so.1] --truth FILE
"""

import argparse
import ctypes
import json
import os
import time
from ctypes import POINTER, byref, c_int, c_size_t, c_uint, c_uint8, c_uint16, c_uint64, c_void_p

MiB = 1 << 20
SIZE = 512 * MiB


class ArrayDescriptor(ctypes.Structure):
    _fields_ = [("width", c_size_t), ("height", c_size_t), ("format", c_uint), ("channels", c_uint)]


class Location(ctypes.Structure):
    _fields_ = [("type", c_int), ("id", c_int)]


class AllocFlags(ctypes.Structure):
    _fields_ = [
        ("compression", c_uint8),
        ("rdma", c_uint8),
        ("usage", c_uint16),
        ("reserved", c_uint8 * 4),
    ]


class AllocationProp(ctypes.Structure):
    _fields_ = [
        ("type", c_int),
        ("handle_types", c_int),
        ("location", Location),
        ("win32", c_void_p),
        ("flags", AllocFlags),
    ]


class AccessDesc(ctypes.Structure):
    _fields_ = [("location", Location), ("flags", c_int)]


class Driver:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)

    def __call__(self, name, *args, ok=True):
        ret = getattr(self.lib, name)(*args)
        if ok and ret != 0:
            raise RuntimeError(f"{name} returned {ret}")
        return ret


def locked_host_bytes():
    """VmLck + VmPin of this process, in bytes (pinned host memory is locked)."""
    total = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmLck:", "VmPin:")):
                total += int(line.split()[1]) * 1024
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="libcuda.so.1")
    ap.add_argument("--truth", required=True)
    args = ap.parse_args()
    cu = Driver(args.lib)
    cu("cuInit", 0)
    dev = c_int()
    cu("cuDeviceGet", byref(dev), 0)
    primary = c_void_p()
    cu("cuDevicePrimaryCtxRetain", byref(primary), dev)
    cu("cuCtxSetCurrent", primary)

    def free_bytes():
        cu("cuCtxSetCurrent", primary)
        free, total = c_size_t(), c_size_t()
        cu("cuMemGetInfo_v2", byref(free), byref(total))
        return free.value

    def allocate(kind):
        """Allocates SIZE bytes of `kind` in the current context; returns (address, free)."""
        p = c_uint64()
        if kind == "device":
            cu("cuMemAlloc_v2", byref(p), c_size_t(SIZE))
            return p.value, lambda: cu("cuMemFree_v2", p, ok=False)
        if kind == "pitched":
            pitch = c_size_t()
            cu("cuMemAllocPitch_v2", byref(p), byref(pitch), c_size_t(16384), c_size_t(SIZE // 16384), 4)
            return p.value, lambda: cu("cuMemFree_v2", p, ok=False)
        if kind == "array":
            arr = c_void_p()
            desc = ArrayDescriptor(16384, SIZE // 16384, 0x01, 1)
            cu("cuArrayCreate_v2", byref(arr), byref(desc))
            return arr.value, lambda: cu("cuArrayDestroy", arr, ok=False)
        if kind == "stream_ordered":
            cu("cuMemAllocAsync", byref(p), c_size_t(SIZE), None)
            cu("cuStreamSynchronize", None)

            def free():
                ret = cu("cuMemFreeAsync", p, None, ok=False)
                cu("cuStreamSynchronize", None, ok=False)
                return ret

            return p.value, free
        if kind == "managed":
            cu("cuMemAllocManaged", byref(p), c_size_t(SIZE), 1)
            if hasattr(cu.lib, "cuMemsetD8_v2"):  # touched on the device, so it is resident there
                cu("cuMemsetD8_v2", p, 0, c_size_t(SIZE))
                cu("cuCtxSynchronize")
            return p.value, lambda: cu("cuMemFree_v2", p, ok=False)
        if kind == "pinned":
            h = c_void_p()
            cu("cuMemHostAlloc", byref(h), c_size_t(SIZE), 0)
            ctypes.memset(h, 0, SIZE)
            return h.value, lambda: cu("cuMemFreeHost", h, ok=False)
        if kind in ("vmm_unmapped", "vmm_mapped"):
            prop = AllocationProp()
            prop.type = 1  # CU_MEM_ALLOCATION_TYPE_PINNED
            prop.location = Location(1, dev.value)  # CU_MEM_LOCATION_TYPE_DEVICE
            handle = c_uint64()
            cu("cuMemCreate", byref(handle), c_size_t(SIZE), byref(prop), c_uint64(0))
            if kind == "vmm_unmapped":
                return handle.value, lambda: cu("cuMemRelease", handle, ok=False)
            cu("cuMemAddressReserve", byref(p), c_size_t(SIZE), c_size_t(0), c_uint64(0), c_uint64(0))
            cu("cuMemMap", p, c_size_t(SIZE), c_size_t(0), handle, c_uint64(0))
            access = AccessDesc(Location(1, dev.value), 3)  # read and write
            cu("cuMemSetAccess", p, c_size_t(SIZE), byref(access), c_size_t(1))

            def free():
                rets = [
                    cu("cuMemUnmap", p, c_size_t(SIZE), ok=False),
                    cu("cuMemAddressFree", p, c_size_t(SIZE), ok=False),
                    cu("cuMemRelease", handle, ok=False),
                ]
                return next((r for r in rets if r != 0), 0)

            return p.value, free
        raise ValueError(kind)

    doc = {"scenario": "ctx_destroy", "pid": os.getpid(), "size": SIZE, "lib": args.lib, "kinds": []}

    def cycle(kind):
        ctx = c_void_p()
        cu("cuCtxCreate_v2", byref(ctx), 0, dev)
        step = {"kind": kind or "empty_context"}
        step["free_before"] = free_bytes()
        step["locked_before"] = locked_host_bytes()
        cu("cuCtxSetCurrent", ctx)
        free_it = None
        if kind:
            step["address"], free_it = allocate(kind)
        step["allocated_ns"] = time.monotonic_ns()
        step["free_allocated"] = free_bytes()
        step["locked_allocated"] = locked_host_bytes()
        cu("cuCtxDestroy_v2", ctx)
        step["destroyed_ns"] = time.monotonic_ns()
        step["free_destroyed"] = free_bytes()
        step["locked_destroyed"] = locked_host_bytes()
        if free_it:
            cu("cuCtxSetCurrent", primary)
            step["free_call_ret"] = free_it()
            step["freed_ns"] = time.monotonic_ns()
            step["free_after_free_call"] = free_bytes()
            step["locked_after_free_call"] = locked_host_bytes()
        return step

    empty = cycle(None)
    doc["kinds"].append(empty)
    overhead = empty["free_destroyed"] - empty["free_allocated"]
    print(f"{'kind':<16} {'held':>9} {'freed by destroy':>17} {'free call':>10} {'freed by it':>12}  (MiB)")
    print(f"{'empty context':<16} {'':>9} {overhead / MiB:>17.0f}")
    for kind in ("device", "pitched", "array", "managed", "pinned", "stream_ordered", "vmm_unmapped", "vmm_mapped"):
        try:
            s = cycle(kind)
        except (RuntimeError, AttributeError) as e:
            doc["kinds"].append({"kind": kind, "error": str(e)})
            print(f"{kind:<16} {e}")
            continue
        doc["kinds"].append(s)
        host = kind == "pinned"
        a, b, c, d = (
            ("locked_before", "locked_allocated", "locked_destroyed", "locked_after_free_call")
            if host
            else ("free_before", "free_allocated", "free_destroyed", "free_after_free_call")
        )
        sign = 1 if host else -1
        held = sign * (s[b] - s[a])
        by_destroy = -sign * (s[c] - s[b]) - (0 if host else overhead)
        by_free = -sign * (s[d] - s[c])
        s["held"], s["freed_by_destroy"], s["freed_by_free_call"] = held, by_destroy, by_free
        print(
            f"{kind:<16} {held / MiB:>9.0f} {by_destroy / MiB:>17.0f} {s['free_call_ret']:>10} {by_free / MiB:>12.0f}"
        )
    with open(args.truth, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
