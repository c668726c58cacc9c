"""Compares what vramtrace recorded with what PyTorch and NVML said at the same moments.

For each scenario's trace and truth (written by workload.py), and each mark in the truth,
asks `vramtrace analyze --at-ns TS --json` for the Ledger's state at that moment; vramtrace
decides, this script only compares:

- every segment of torch.cuda.memory_snapshot() must be a traced allocation of the same
  address and size (expandable segments: covered by traced mappings);
- traced device bytes must be at least torch.cuda.memory_reserved(); what is more is
  memory allocated outside PyTorch's allocator (cuBLAS, the graph pools' bookkeeping...),
  listed by entry point;
- traced device bytes must not exceed NVML's figure for the process; the difference is the
  context's own memory (code, stacks, the driver's allocations), which the driver does not
  allocate through any entry point;
- named tensors (model parameters, activations) must be in an allocation of the expected class;
- a PyTorch out-of-memory error must be an OOM in vramtrace's analysis, with the size asked.

Prints one table; exits 1 when a check fails.

usage: python3 compare.py --vramtrace BIN DIR [DIR ...]   (each DIR holds NAME.jsonl.gz and NAME.truth.json)
       python3 compare.py --vramtrace BIN --trace T --truth J
"""

import argparse
import gzip
import json
import os
import subprocess
import sys

MiB = 1 << 20
DEVICE_MEM = {"device", "device_async", "vmm_device", "array"}


def analyze(vramtrace, trace, pid, at_ns=None):
    cmd = [vramtrace, "analyze", trace, "--json", "--top", "1000000", "--pid", str(pid)]
    if at_ns is not None:
        cmd += ["--at-ns", str(at_ns)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)


def mib(n):
    return "-" if n is None else f"{n / MiB:.1f}"


def stack_names(trace):
    """The first named frame outside the driver of each stack in the trace, to say who made
    an allocation that PyTorch's allocator did not."""
    opener = gzip.open if open(trace, "rb").read(2) == b"\x1f\x8b" else open
    names = {}
    with opener(trace, "rt") as f:
        for line in f:
            if '"type":"stack"' not in line:
                continue
            rec = json.loads(line)
            for fr in rec.get("frames", []):
                if fr.get("sym") and "libcuda" not in fr.get("file", ""):
                    names[rec["id"]] = fr["sym"]
                    break
    return names


def stack_quality(trace, pid):
    """How well the stacks of one process's allocations name the code that made them: how
    many allocations there are, how many of their stacks reach a Python frame of the
    workload (CPython's own frames, read by the probe, with file and line), how many are
    complete (not truncated), and one such Python frame as an example."""
    opener = gzip.open if open(trace, "rb").read(2) == b"\x1f\x8b" else open
    procs, stacks = set(), {}
    allocs = []
    with opener(trace, "rt") as f:
        for line in f:
            if '"type":"process"' in line:
                rec = json.loads(line)
                if rec.get("pid") == pid:
                    procs.add(rec["id"])
            elif '"type":"stack"' in line:
                rec = json.loads(line)
                py = [fr for fr in rec.get("frames", [])
                      if fr.get("python") and fr.get("file", "").endswith("workload.py")]
                example = f"{py[0].get('sym')} ({py[0].get('src')})" if py else None
                stacks[rec["id"]] = (bool(py), rec.get("truncated") is None, example)
            elif '"type":"alloc"' in line or '"type":"vmm_create"' in line:
                rec = json.loads(line)
                allocs.append((rec.get("proc"), rec.get("stack")))
    mine = [s for p, s in allocs if p in procs]
    with opener(trace, "rt") as f:
        major, minor = (int(x) for x in json.loads(f.readline())["version"].split("."))
    seen = [stacks[s] for s in mine if s in stacks]
    example = next((e for _, _, e in seen if e), None)
    return {
        "allocations": len(mine),
        "with_stack": len(seen),
        "python": sum(1 for py, _, _ in seen if py),
        "complete": sum(1 for _, whole, _ in seen if whole),
        "example": example,
        # Python frames came with format 1.3: older traces cannot have them.
        "python_frames_recorded": (major, minor) >= (1, 3),
    }


def by_origin(allocs, stacks):
    out = {}
    for a in allocs:
        key = f"{a['api']} from {stacks.get(a.get('stack'), 'an unnamed frame')}"
        out[key] = out.get(key, 0) + a["bytes"]
    return out


def match_segments(segs, live):
    """Segments matched to traced allocations: exact address and size, or (expandable)
    every byte covered by traced mappings. Returns (matched, total, unmatched, matched_allocs)."""
    by_addr = {}
    for a in live:
        if a.get("addr") is not None:
            by_addr.setdefault(a["addr"], []).append(a)
    used = set()
    unmatched = []
    matched = 0
    for s in segs:
        start, size = s["address"], s["size"]
        if not s["expandable"]:
            hit = [a for a in by_addr.get(start, []) if a["bytes"] == size]
            if hit:
                matched += 1
                used.add(id(hit[0]))
            else:
                unmatched.append(s)
            continue
        # Expandable: the mapped pieces lie end to end from the segment's start.
        pos, end, pieces = start, start + size, []
        while pos < end:
            hit = [a for a in by_addr.get(pos, []) if a["bytes"] > 0]
            if not hit:
                break
            pieces.append(hit[0])
            pos += hit[0]["bytes"]
        if pos == end:
            matched += 1
            used.update(id(a) for a in pieces)
        else:
            unmatched.append(s)
    return matched, len(segs), unmatched, used


def check_scenario(vramtrace, trace, truth_path):
    with open(truth_path) as f:
        truth = json.load(f)
    name, pid = truth["scenario"], truth["pid"]
    stacks = stack_names(trace)
    rows, failures = [], []
    for m in truth["marks"]:
        rep = analyze(vramtrace, trace, pid, m["ts_ns"])
        procs = [p for p in rep["processes"] if p["pid"] == pid]
        if not procs:
            failures.append(f"{name}/{m['name']}: pid {pid} not in the trace")
            continue
        p = procs[0]
        live = p["largest_at_exit"]
        device_live = [a for a in live if a["mem"] in DEVICE_MEM and a.get("device") in (0, None)]
        # The Ledger's own figure for the GPU, not a sum made here.
        traced = sum(
            d["device_bytes_at_exit"] for d in p["devices"] if d.get("device") in (0, None)
        )
        pool_held = p["pool_held_bytes_at_exit"]
        row = {
            "scenario": name,
            "mark": m["name"],
            "reserved": m["reserved"],
            "traced": traced,
            "pool_held": pool_held,
        }
        # Segments.
        if m["segments"] is not None:
            matched, total, unmatched, used = match_segments(m["segments"], device_live)
            row["segments"] = f"{matched}/{total}"
            for s in unmatched:
                failures.append(
                    f"{name}/{m['name']}: segment at {s['address']:#x} of {s['size']} bytes"
                    f"{' (expandable)' if s['expandable'] else ''} has no traced allocation"
                )
            outside = [a for a in device_live if id(a) not in used]
        else:
            row["segments"] = "n/a"
            outside = []
        row["outside"] = sum(a["bytes"] for a in outside)
        row["outside_by_api"] = by_origin(outside, stacks)
        if truth.get("backend") == "cudaMallocAsync":
            # Each tensor is its own stream-ordered allocation: what PyTorch counts as
            # allocated is exactly the live stream-ordered bytes. PyTorch's reserved figure is
            # the driver's CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, which it reads from the pool
            # through a traced cuMemPoolGetAttribute: the stream-ordered bytes and what the
            # Ledger says the pool holds must make it up exactly.
            stream_ordered = sum(a["bytes"] for a in device_live if a["mem"] == "device_async")
            reserved_ok = stream_ordered + pool_held == m["reserved"]
            row["segments"] = (
                f"{'=' if stream_ordered == m['allocated'] else '!='} allocated, "
                f"+ pool {'=' if reserved_ok else '!='} reserved"
            )
            if stream_ordered != m["allocated"]:
                failures.append(
                    f"{name}/{m['name']}: traced stream-ordered bytes {stream_ordered} != "
                    f"torch allocated {m['allocated']}"
                )
            if not reserved_ok:
                failures.append(
                    f"{name}/{m['name']}: traced stream-ordered bytes {stream_ordered} + "
                    f"pool-held {pool_held} != torch reserved {m['reserved']}"
                )
            outside = [a for a in device_live if a["mem"] != "device_async"]
            row["outside"] = sum(a["bytes"] for a in outside)
            row["outside_by_api"] = by_origin(outside, stacks)
        elif traced < m["reserved"]:
            failures.append(
                f"{name}/{m['name']}: traced {traced} bytes < torch reserved {m['reserved']}"
            )
        # NVML.
        nvml = (m.get("nvml_used") or {}).get("0")
        row["nvml"] = nvml
        # What the process has from the GPU by the Ledger: its allocations and what its pools
        # hold. NVML counts both, and the context's own memory besides.
        taken = traced + pool_held
        row["ctx"] = None if nvml is None else nvml - taken
        if nvml is not None and taken > nvml:
            failures.append(
                f"{name}/{m['name']}: traced {traced} + pool-held {pool_held} bytes > NVML's {nvml}"
            )
        # Classes of named tensors.
        classes = []
        for tname, t in m["tensors"].items():
            home = [
                a for a in live
                if a.get("addr") is not None and a["addr"] <= t["ptr"] < a["addr"] + a["bytes"]
            ]
            got = home[0].get("class") if home else None
            want = t["expect"]
            ok = got is not None and (got != want[4:] if want.startswith("not:") else got == want)
            classes.append(ok)
            if not ok:
                failures.append(
                    f"{name}/{m['name']}: {tname} at {t['ptr']:#x} is in "
                    f"{'no traced allocation' if not home else 'class ' + str(got)}, "
                    f"expected {t['expect']}"
                )
        row["classes"] = f"{sum(classes)}/{len(classes)}" if classes else "-"
        rows.append(row)
    # Out of memory.
    if truth["ooms"]:
        rep = analyze(vramtrace, trace, pid)
        found = rep["postmortem"]["ooms"]
        for o in truth["ooms"]:
            hit = [x for x in found if x.get("request_bytes") == o["requested"]]
            if not hit:
                failures.append(
                    f"{name}: PyTorch's out-of-memory for {o['requested']} bytes is not an OOM "
                    f"in the analysis (found: {[x.get('request_bytes') for x in found]})"
                )
            else:
                rows.append({
                    "scenario": name, "mark": "oom", "reserved": None,
                    "traced": hit[0]["held_device_bytes"], "pool_held": hit[0]["held_pool_bytes"],
                    "segments": "-", "outside": None, "outside_by_api": {},
                    "nvml": None, "ctx": None, "classes": f"{len(hit)} failed calls",
                })
    q = stack_quality(trace, pid)
    q["scenario"] = name
    truth["stacks"] = q
    if q["allocations"] and not q["python"] and q["python_frames_recorded"]:
        failures.append(
            f"{name}: none of {q['allocations']} allocations has a Python frame of workload.py "
            "in its stack (default --stacks dwarf on CPython)"
        )
    return truth, rows, failures


def check_ctx_destroy(vramtrace, trace, truth_path):
    """The context-destroy check (ctx_destroy.py): for each kind, the Ledger holds the
    allocation while its context lives, and after the context is destroyed holds it exactly
    when the driver kept it (the matching free from the primary context then succeeds)."""
    with open(truth_path) as f:
        truth = json.load(f)
    pid, size = truth["pid"], truth["size"]
    rows, failures = [], []

    def held(ns):
        rep = analyze(vramtrace, trace, pid, ns)
        p = next((p for p in rep["processes"] if p["pid"] == pid), None)
        if p is None:
            raise ValueError(f"pid {pid} not in the trace")
        return p["device_bytes_at_exit"] + p["host_bytes_at_exit"] + p["pool_held_bytes_at_exit"]

    for k in truth["kinds"]:
        if "error" in k:
            failures.append(f"ctx_destroy/{k['kind']}: the driver refused it: {k['error']}")
            continue
        if "address" not in k:
            continue
        kept = k["free_call_ret"] == 0
        before, after = held(k["allocated_ns"]), held(k["destroyed_ns"])
        want_after = size if kept else 0
        ok = before == size and after == want_after
        rows.append((k["kind"], "kept" if kept else "freed", k.get("freed_by_destroy"), before, after, ok))
        if not ok:
            failures.append(
                f"ctx_destroy/{k['kind']}: the driver {'kept' if kept else 'freed'} it with its "
                f"context; the Ledger held {before} bytes before the destroy and {after} after "
                f"(expected {size} and {want_after})"
            )
    return rows, failures


def print_ctx_destroy(rows):
    print("context destroyed with an allocation live in it (MiB):")
    print("| kind | driver | device memory freed by the destroy | Ledger before | Ledger after | agree |")
    print("|---|---|---|---|---|---|")
    for kind, verdict, freed, before, after, ok in rows:
        print(f"| {kind} | {verdict} | {mib(freed)} | {mib(before)} | {mib(after)} | {'yes' if ok else 'NO'} |")


def print_stacks(quality):
    """Per scenario: allocations, and how many of their stacks name the workload's Python
    code and are whole."""
    print("stacks (default --stacks dwarf):")
    print("| scenario | allocations | with a stack | naming workload.py | complete | e.g. |")
    print("|---|---|---|---|---|---|")
    for q in quality:
        python = q["python"] if q["python_frames_recorded"] else "n/a (format < 1.3)"
        print(f"| {q['scenario']} | {q['allocations']} | {q['with_stack']} | {python} | "
              f"{q['complete']} | {q['example'] or '-'} |")


def print_table(rows):
    head = ["scenario", "mark", "torch reserved", "traced device", "pool-held",
            "segments matched", "outside torch", "NVML process", "NVML - traced - pool", "classes ok"]
    body = [[r["scenario"], r["mark"], mib(r["reserved"]), mib(r["traced"]), mib(r["pool_held"]),
             r["segments"], mib(r["outside"]), mib(r["nvml"]), mib(r["ctx"]), r["classes"]]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)] if body else []
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print("(MiB)")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for b in body:
        print(line(b))
    extra = [(r["scenario"], r["mark"], r["outside_by_api"]) for r in rows if r["outside_by_api"]]
    for s, m, by in extra:
        print(f"outside torch's allocator at {s}/{m}: "
              + "; ".join(f"{mib(b)} MiB by {api}" for api, b in sorted(by.items())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vramtrace", required=True)
    ap.add_argument("--trace")
    ap.add_argument("--truth")
    ap.add_argument("dirs", nargs="*")
    args = ap.parse_args()
    pairs = []
    if args.trace:
        pairs.append((args.trace, args.truth))
    for d in args.dirs:
        for f in sorted(os.listdir(d)):
            if f.endswith(".truth.json"):
                stem = f[: -len(".truth.json")]
                for ext in (".jsonl.gz", ".jsonl"):
                    if os.path.exists(os.path.join(d, stem + ext)):
                        pairs.append((os.path.join(d, stem + ext), os.path.join(d, f)))
                        break
    if not pairs:
        sys.exit("no trace and truth pairs found")
    all_rows, all_failures, quality, ctx_rows = [], [], [], []
    for trace, truth in pairs:
        try:
            with open(truth) as f:
                is_ctx_destroy = "kinds" in json.load(f)
            if is_ctx_destroy:
                rows, failures = check_ctx_destroy(args.vramtrace, trace, truth)
                ctx_rows += rows
                all_failures += failures
                continue
            t, rows, failures = check_scenario(args.vramtrace, trace, truth)
            quality.append(t["stacks"])
        except (RuntimeError, KeyError, ValueError) as err:
            rows, failures = [], [f"{trace}: {err}"]
        all_rows += rows
        all_failures += failures
    print_table(all_rows)
    print_stacks(quality)
    if ctx_rows:
        print_ctx_destroy(ctx_rows)
    for f in all_failures:
        print(f"FAIL {f}")
    print(f"{len(pairs)} scenarios, {len(all_rows) + len(ctx_rows)} points, {len(all_failures)} failures")
    sys.exit(1 if all_failures else 0)


if __name__ == "__main__":
    main()
