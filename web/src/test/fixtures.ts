import type { Process, State } from "../lib/types";

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

export function proc(over: Partial<Process> = {}): Process {
  return {
    pid: 4242,
    comm: "python3",
    cmdline: ["python3", "serve.py"],
    container: null,
    device_bytes: 6 * GiB,
    pool_held_bytes: 0,
    host_bytes: 0,
    live_allocations: 12,
    allocations_started: 20,
    ooms: 0,
    host_findings: 0,
    nvml: null,
    by_gpu: [{ device: 0, by_class: { weights: 4 * GiB, kv_cache: 2 * GiB, dynamic: 0, unknown: 0 } }],
    ...over,
  };
}

export function state(over: Partial<State> = {}): State {
  return {
    tracing: "live",
    records: 100,
    time_span_ns: [0, 2e9],
    vram_bytes_used: 6 * GiB,
    pool_held_bytes: 0,
    host_bytes: 0,
    gpus: [
      {
        gpu: "0",
        index: 0,
        name: "NVIDIA H100 80GB HBM3",
        traced_device_bytes: 6 * GiB,
        traced_by_class: { weights: 4 * GiB, kv_cache: 2 * GiB, dynamic: 0, unknown: 0 },
        pool_held_bytes: 0,
        memory: { total_bytes: 80 * GiB, used_bytes: 7 * GiB, free_bytes: 73 * GiB },
        coverage: 6 / 7,
        unexplained_bytes: 1 * GiB,
      },
    ],
    processes: [proc()],
    allocations: { device: 20 },
    ooms: 0,
    last_oom: null,
    host_findings: 0,
    lost_events: 0,
    nvml: { available: true, driver_version: "580.65" },
    telemetry: null,
    ...over,
  };
}

/** A WebSocket stand-in the tests drive. */
export class FakeSocket {
  static all: FakeSocket[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  closed = false;
  constructor(public url: string) {
    FakeSocket.all.push(this);
  }
  open() {
    this.onopen?.();
  }
  send(msg: unknown) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop(code = 1006, reason = "") {
    this.closed = true;
    this.onclose?.({ code, reason });
  }
  close() {
    this.closed = true;
  }
}
