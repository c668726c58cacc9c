"""PyTorch workloads for the GPU check, each writing its own ground truth.

Run under `vramtrace record`, one scenario per process. At known points ("marks") the
workload synchronizes the GPU and writes what PyTorch and NVML say at that moment, with the
CLOCK_MONOTONIC time the trace's records use (time.monotonic_ns()), so `compare.py` can ask
vramtrace for its state at the same moment and compare:

- torch.cuda.memory_reserved() and memory_allocated();
- every segment of torch.cuda.memory_snapshot() (address, size, expandable or not);
- NVML's used memory for this process;
- the address and size of named tensors (model parameters, activations) whose class the
  trace should tell.

usage: python3 workload.py SCENARIO --truth FILE
"""

import argparse
import json
import os
import sys
import time

import torch

MiB = 1 << 20
GiB = 1 << 30


def nvml_used_by_pid():
    """NVML's used-memory figure for this process on each GPU, or None where NVML says nothing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    out = {}
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == os.getpid() and p.usedGpuMemory is not None:
                    out[str(i)] = int(p.usedGpuMemory)
    except pynvml.NVMLError:
        return None
    return out


def segments():
    """The caching allocator's segments, or None where this allocator keeps none."""
    try:
        snap = torch.cuda.memory_snapshot()
    except (RuntimeError, AssertionError):
        return None
    return [
        {
            "address": int(s["address"]),
            "size": int(s["total_size"]),
            "device": int(s["device"]),
            "expandable": bool(s.get("is_expandable", False)),
            "pool": s.get("segment_type"),
        }
        for s in snap
    ]


class Truth:
    """What PyTorch and NVML say at each mark, written as JSON at the end."""

    def __init__(self, scenario, path):
        self.path = path
        self.doc = {
            "scenario": scenario,
            "pid": os.getpid(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
            "backend": torch.cuda.get_allocator_backend(),
            "device_name": torch.cuda.get_device_name(0),
            "device_total": torch.cuda.get_device_properties(0).total_memory,
            "marks": [],
            "ooms": [],
        }

    def mark(self, name, tensors=None):
        torch.cuda.synchronize()
        point = {
            "name": name,
            "reserved": torch.cuda.memory_reserved(),
            "allocated": torch.cuda.memory_allocated(),
        }
        # The moment: after the synchronize and the allocator's figures, before anything
        # that could allocate again. Reading the snapshot and NVML allocates no GPU memory.
        point["ts_ns"] = time.monotonic_ns()
        point["segments"] = segments()
        point["nvml_used"] = nvml_used_by_pid()
        point["tensors"] = {
            k: {"ptr": t.data_ptr(), "bytes": t.untyped_storage().nbytes(), "expect": expect}
            for k, (t, expect) in (tensors or {}).items()
        }
        self.doc["marks"].append(point)
        print(f"mark {name}: reserved {point['reserved'] / MiB:.1f} MiB", file=sys.stderr)

    def oom(self, requested, err):
        self.doc["ooms"].append(
            {"ts_ns": time.monotonic_ns(), "requested": requested, "message": str(err)[:300]}
        )

    def write(self):
        with open(self.path, "w") as f:
            json.dump(self.doc, f, indent=1)


def mlp(width, layers):
    """A model built in host memory, then copied to the GPU as a loader would."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    return m.to("cuda")


def named_params(model, expect):
    """The large parameters (each in a segment of its own) with the class they should have."""
    return {
        f"param.{n}": (p, expect)
        for n, p in model.named_parameters()
        if p.untyped_storage().nbytes() >= 16 * MiB
    }


def activation_class():
    """The class an activation's allocation should have. The stream-ordered backend gives each
    tensor its own allocation, made and freed within the step: dynamic. The caching allocators
    put it in a segment that was made in the first step and is kept for the whole run: from
    the driver's side a long-lived buffer, never weights."""
    return "dynamic" if torch.cuda.get_allocator_backend() == "cudaMallocAsync" else "not:weights"


def train(truth, steps=3, width=4096, layers=4, batch=4096):
    model = mlp(width, layers)
    truth.mark("loaded", named_params(model, "weights"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width, device="cuda")

    def in_step(_module, inputs):
        # Inside the last step's forward pass: the first layer's output is live here and
        # dies with the step.
        tensors = named_params(model, "weights")
        tensors["activation"] = (inputs[0], activation_class())
        truth.mark("in_step", tensors)

    for step in range(steps):
        hook = model[2].register_forward_pre_hook(in_step) if step == steps - 1 else None
        y = model(x)
        loss = y.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if hook is not None:
            hook.remove()
    del y, loss
    truth.mark("trained", named_params(model, "weights"))
    del x
    torch.cuda.empty_cache()
    truth.mark("emptied", named_params(model, "weights"))
    return model


def scenario_caching(truth):
    train(truth)


def scenario_expandable(truth):
    train(truth)


def scenario_async(truth):
    train(truth)


def scenario_graphs(truth):
    model = mlp(2048, 3)
    static_in = torch.randn(1024, 2048, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    truth.mark("warmed")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(static_in)
    truth.mark("captured", {"graph_output": (static_out, "dynamic")})
    for _ in range(10):
        static_in.copy_(torch.randn(1024, 2048, device="cuda"))
        graph.replay()
    truth.mark("replayed", {"graph_output": (static_out, "dynamic")})
    del graph, static_out
    torch.cuda.empty_cache()
    truth.mark("released")


def scenario_oom(truth):
    chunk = 8 * GiB
    held = []
    while True:
        try:
            held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError as err:
            truth.oom(chunk, err)
            break
        if len(held) > 64:
            raise SystemExit("no out-of-memory after 512 GiB: is this a real GPU?")
    truth.mark("at_oom")
    held.clear()
    torch.cuda.empty_cache()
    truth.mark("freed")


def scenario_cublas(truth):
    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    truth.mark("inputs")
    (a @ b).sum().item()
    (a.bfloat16() @ b.bfloat16()).sum().item()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        (a @ b).sum().item()
    torch.cuda.synchronize()
    truth.mark("multiplied")
    torch.cuda.empty_cache()
    truth.mark("emptied")


SCENARIOS = {
    "caching": scenario_caching,
    "expandable": scenario_expandable,
    "async": scenario_async,
    "graphs": scenario_graphs,
    "oom": scenario_oom,
    "cublas": scenario_cublas,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--truth", required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    torch.cuda.init()
    truth = Truth(args.scenario, args.truth)
    torch.zeros(1, device="cuda")
    truth.mark("context")
    try:
        SCENARIOS[args.scenario](truth)
    finally:
        truth.write()


if __name__ == "__main__":
    main()
