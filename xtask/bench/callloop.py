"""The benchmark's caller from Python: what `callloop` does, through ctypes, so that the
stack of each call runs through the interpreter (its eval loop, ctypes, libffi).

Loads a driver library, says `ready`, waits for a line on stdin (so that tracers attach
first), then calls `cuMemAlloc_v2(&p, 1 MiB)` in a loop on THREADS threads, CALLS in all,
from a Python function two calls deep. Prints one JSON line.

Usage: python3 callloop.py LIB CALLS THREADS
"""

import ctypes
import json
import os
import sys
import threading
import time


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: callloop.py LIB CALLS THREADS")
    lib, calls, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if threads < 1:
        sys.exit("THREADS must be at least 1")
    driver = ctypes.CDLL(lib)
    alloc = driver.cuMemAlloc_v2
    alloc.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    alloc.restype = ctypes.c_int
    print("ready", flush=True)
    sys.stdin.readline()

    per_thread = calls // threads
    barrier = threading.Barrier(threads)
    elapsed = [0] * threads

    def step(p):
        return alloc(ctypes.byref(p), 1 << 20)

    def worker(i):
        p = ctypes.c_uint64(0)
        barrier.wait()
        start = time.monotonic_ns()
        for _ in range(per_thread):
            step(p)
        elapsed[i] = time.monotonic_ns() - start

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = threads * per_thread
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "threads": threads,
                "calls": total,
                "ns_per_call": sum(elapsed) / total if total else 0.0,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
