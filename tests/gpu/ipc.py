"""Memory shared between processes on a real GPU: PyTorch hands a CUDA tensor to a spawned
process through torch.multiprocessing (cudaIpcGetMemHandle in the parent, cudaIpcOpenMemHandle
in the child). Prints one JSON object a line: what each side says it holds, for comparison
with what vramtrace traced (the importer's mapping attributed to the parent's allocation, the
device total not counted twice)."""

import json
import os
import sys

import torch
import torch.multiprocessing as mp

MIB = 1 << 20


def child(q, done):
    t = q.get()
    torch.cuda.synchronize()
    print(json.dumps({"side": "importer", "pid": os.getpid(), "data_ptr": t.data_ptr(),
                      "sum": float(t.sum().item()),
                      "reserved": torch.cuda.memory_reserved()}), flush=True)
    del t
    torch.cuda.synchronize()
    done.put(1)


def main():
    mp.set_start_method("spawn")
    t = torch.ones(64 * MIB // 4, device="cuda")
    torch.cuda.synchronize()
    print(json.dumps({"side": "exporter", "pid": os.getpid(), "data_ptr": t.data_ptr(),
                      "bytes": t.numel() * 4,
                      "reserved": torch.cuda.memory_reserved()}), flush=True)
    q, done = mp.Queue(), mp.Queue()
    p = mp.Process(target=child, args=(q, done))
    p.start()
    q.put(t)
    done.get()
    p.join()
    print(json.dumps({"side": "exporter", "child_exit": p.exitcode}), flush=True)
    return 0 if p.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
