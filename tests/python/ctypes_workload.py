"""Allocates through the simulated CUDA driver with ctypes, from nested Python functions on
several threads, and prints the Python call path of every allocation, innermost first, as
the interpreter itself reports it: one JSON object per allocation, `{"bytes": N, "path":
[[name, "file:line"], ...]}`. The recorded stack of that allocation must hold exactly these
Python frames, in this order.

Usage: python ctypes_workload.py LIBCUDA
"""

import ctypes
import json
import sys
import threading
import time

lib = ctypes.CDLL(sys.argv[1])
printing = threading.Lock()


def here():
    """The caller's call path: (qualified name, file:line) per frame, innermost first."""
    out = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        name = getattr(code, "co_qualname", code.co_name)
        out.append([name, f"{code.co_filename}:{frame.f_lineno}"])
        frame = frame.f_back
    return out


def check(rc, what):
    if rc != 0:
        raise SystemExit(f"{what} returned {rc}")


def alloc(size):
    ptr = ctypes.c_uint64()
    path = here(); check(lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size)), "cuMemAlloc_v2")  # noqa: E702
    with printing:
        print(json.dumps({"bytes": size, "path": path}), flush=True)
    return ptr.value


class Model:
    def __init__(self, base):
        self.base = base
        self.held = []

    def load(self):
        def layer(i):
            self.held.append(alloc(self.base + i))

        for i in range(2):
            layer(i)

    def step(self):
        self.held.append(alloc(self.base + 100))


def worker(ctx, base):
    check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    model = Model(base)
    model.load()
    model.step()


def main():
    check(lib.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(lib.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate_v2")
    Model(1 << 20).load()
    threads = [
        threading.Thread(target=worker, args=(ctx, (2 + n) << 20)) for n in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alloc(5 << 20)
    # The recorder names code objects from this process's memory when it drains their
    # stacks: stay a moment, as a real workload does, rather than exit under it
    # (docs/stacks.md, "Python frames").
    time.sleep(1)


if __name__ == "__main__":
    main()
