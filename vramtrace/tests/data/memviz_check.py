"""Checks a `vramtrace export --format memory-viz` file the way PyTorch's memory viewer
(pytorch.org/memory_viz, torch/utils/viz/MemoryViz.js) reads it, and prints what it holds.

The page unpickles the file with its own small unpickler, which knows a fixed set of
opcodes and throws on any other; then it walks `device_traces` forward (Active Memory
Timeline) and backward from `segments` (Allocator State History), and every block must lie
in a segment at every step or the page fails. Exits non-zero, with the reason, otherwise.

usage: python3 memviz_check.py FILE
"""

import pickle
import pickletools
import sys

# The opcodes MemoryViz.js's unpickle() handles.
PAGE_OPCODES = {
    "PROTO", "APPEND", "APPENDS", "LIST", "TUPLE", "NEWFALSE", "NEWTRUE", "NONE",
    "BINGET", "BININT", "BININT1", "BININT2", "EMPTY_DICT", "EMPTY_LIST", "FRAME",
    "LONG1", "LONG_BINGET", "MARK", "MEMOIZE", "BINPUT", "LONG_BINPUT", "SETITEMS",
    "SETITEM", "DICT", "SHORT_BINUNICODE", "BINUNICODE", "STOP", "EMPTY_TUPLE",
    "TUPLE1", "TUPLE2", "TUPLE3", "BINFLOAT",
}
ACTIONS = {
    "alloc", "free_requested", "free_completed", "segment_alloc", "segment_free",
    "segment_map", "segment_unmap", "oom", "snapshot",
}


def fail(msg):
    print(f"memory-viz check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def check_frames(frames, where):
    if not isinstance(frames, list):
        fail(f"{where}: frames is not a list")
    for f in frames:
        for key, ty in (("filename", str), ("line", int), ("name", str)):
            if not isinstance(f.get(key), ty):
                fail(f"{where}: frame {f!r} lacks {key}")


def main(path):
    data = open(path, "rb").read()
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    unknown = ops - PAGE_OPCODES
    if unknown:
        fail(f"opcodes the page cannot read: {sorted(unknown)}")
    snap = pickle.loads(data)
    if not isinstance(snap, dict) or set(snap) < {"segments", "device_traces"}:
        fail("not a dict with segments and device_traces")

    segments = snap["segments"]
    for s in segments:
        for key in ("device", "address", "total_size", "stream", "blocks"):
            if key not in s:
                fail(f"segment {s!r} lacks {key}")
        if sum(b["size"] for b in s["blocks"]) != s["total_size"]:
            fail(f"segment at {s['address']:#x}: blocks do not add up to its size")
        for b in s["blocks"]:
            if b["state"] not in ("active_allocated", "active_pending_free", "inactive"):
                fail(f"block state {b['state']!r}")
            check_frames(b.get("frames", []), f"block in segment {s['address']:#x}")

    traces = snap["device_traces"]
    events = 0
    ooms = 0
    for device, trace in enumerate(traces):
        # Forward: what the Active Memory Timeline pairs.
        live = {}
        for e in trace:
            events += 1
            action = e.get("action")
            if action not in ACTIONS:
                fail(f"unknown action {action!r}")
            for key, ty in (("addr", int), ("size", int)):
                if not isinstance(e.get(key), ty):
                    fail(f"event {e!r} lacks {key}")
            check_frames(e.get("frames", []), f"{action} at {e['addr']:#x}")
            if action == "oom":
                ooms += 1
                # The page only prints device_free (formatEvent in MemoryViz.js); the export
                # leaves it out when NVML's free bytes were unknown, and the page then prints
                # "NaN" without failing. When it is there it is a count of bytes.
                if "device_free" in e and not isinstance(e["device_free"], int):
                    fail("oom with a device_free that is not an int")
            elif action == "alloc":
                live[e["addr"]] = e["size"]
            elif action == "free_completed":
                if live.pop(e["addr"], e["size"]) != e["size"]:
                    fail(f"free of {e['addr']:#x} with another size than its alloc")
        # Backward from the final segments: the Allocator State History.
        segs = {s["address"]: s["total_size"] for s in segments if s["device"] == device}
        blocks = {}
        for s in segments:
            if s["device"] != device:
                continue
            addr = s["address"]
            for b in s["blocks"]:
                if b["state"] == "active_allocated":
                    blocks[addr] = b["size"]
                addr += b["size"]
        for e in reversed(trace):
            action, addr = e["action"], e["addr"]
            if action == "free_completed":
                blocks[addr] = e["size"]
            elif action == "alloc":
                blocks.pop(addr, None)
            elif action == "segment_free":
                segs[addr] = e["size"]
            elif action == "segment_alloc":
                if addr not in segs:
                    fail(f"segment_alloc at {addr:#x} of a segment not there")
                del segs[addr]
            for b in blocks:
                if not any(a <= b < a + n for a, n in segs.items()):
                    fail(f"block {b:#x} outside every segment before {action} at {addr:#x}")
    print(f"memory-viz ok: {len(segments)} segments, {events} events, {ooms} ooms, "
          f"{len(traces)} devices, opcodes {sorted(ops)}")


if __name__ == "__main__":
    main(sys.argv[1])
