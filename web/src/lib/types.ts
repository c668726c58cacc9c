// The shapes `vramtrace serve` sends (vramtrace/src/serve/mod.rs: snapshot_json, gpus_json).
// Every string in them may come from a traced process: React escapes what it renders, and
// nothing here is ever put into the page as markup.

export type ClassName = "weights" | "kv_cache" | "dynamic" | "pool" | "host_fallback" | "unknown";

export interface GpuMemory {
  total_bytes?: number | null;
  used_bytes?: number | null;
  free_bytes?: number | null;
  unavailable?: string;
}

export interface Gpu {
  gpu: string;
  index?: number;
  name?: string | null;
  uuid?: string | null;
  traced_device_bytes: number;
  traced_by_class: Partial<Record<ClassName, number>>;
  pool_held_bytes: number;
  memory?: GpuMemory;
  coverage?: number | null;
  unexplained_bytes?: number | null;
  /** How long before the state's latest event NVML's sample (memory, coverage) was taken. */
  nvml_age_ns?: number | null;
  /** Device and pool-held bytes traced on this GPU when NVML's sample was taken. */
  nvml_traced_bytes?: number | null;
}

export interface DeviceReconciliation {
  device?: number;
  nvml_index?: number;
  traced_bytes: number;
  nvml_bytes?: number;
  difference_bytes?: number;
  coverage?: number;
}

export interface Pod {
  uid: string;
  name?: string | null;
  namespace?: string | null;
}

export interface Process {
  pid: number | null;
  comm: string | null;
  cmdline: string[] | null;
  /** Container id (64 hex digits) from the process's cgroup, when it runs in one. */
  container: string | null;
  /** The Kubernetes pod it runs in, when it runs in one; name and namespace when they could be read. */
  pod?: Pod | null;
  device_bytes: number;
  pool_held_bytes: number;
  host_bytes: number;
  live_allocations: number;
  allocations_started?: number;
  ooms?: number;
  host_findings?: number;
  nvml?: { ts_ns: number; devices: DeviceReconciliation[] } | null;
  by_gpu: { device: number | null; by_class: Partial<Record<ClassName, number>> }[];
  /** Other processes' memory mapped here (IPC, pool pointers, shareable handles): never in its bytes. */
  imported_bytes?: number;
  imports?: Import[];
}

/** A mapping of memory that another process allocated, as the Ledger attributes it. */
export interface Import {
  bytes: number;
  size_unknown?: boolean;
  api: string;
  device?: number | null;
  /** "mapped from PID N", or that the owner is not traced or not identified. */
  source: string;
  owner_pid?: number | null;
}

export interface LastOom {
  pid?: number | null;
  comm?: string | null;
  api?: string;
  requested_bytes?: number | null;
  summary?: string;
  ts_ns?: number;
}

export interface TelemetryGpu {
  index: number;
  name?: string | null;
  utilization_gpu_percent?: number | null;
  utilization_memory_percent?: number | null;
  memory_total_bytes?: number | null;
  memory_used_bytes?: number | null;
  temperature_celsius?: number | null;
  power_watts?: number | null;
}

export interface Telemetry {
  unavailable?: string;
  gpus?: { source: string; gpus?: TelemetryGpu[]; reason?: string };
  system?: {
    cpu_percent?: number;
    cpus?: number;
    memory_total_bytes?: number;
    memory_used_bytes?: number;
    load_average?: number[] | { unavailable: string };
    uptime_seconds?: number | { unavailable: string };
  };
}

export interface State {
  tracing: "starting" | "live" | "ended" | "replay";
  records: number;
  time_span_ns: [number, number] | null;
  vram_bytes_used: number;
  pool_held_bytes: number;
  host_bytes: number;
  gpus: Gpu[];
  processes: Process[];
  allocations: Record<string, number>;
  ooms: number;
  last_oom: LastOom | null;
  host_findings: number;
  lost_events: number;
  nvml: { available: boolean; driver_version?: string; reason?: string };
  telemetry: Telemetry | null;
  at_seconds?: number;
}

export interface Changes {
  set: Partial<State>;
  processes_upsert?: Process[];
  processes_removed?: (number | null)[];
  gpus_added?: string[];
  gpus_removed?: string[];
}

export type Message =
  | { type: "state"; seq: number; state: State }
  | { type: "changes"; seq: number; changes: Changes }
  | { type: "heartbeat" };
