import type { ClassName } from "./types";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** Bytes in binary units, as the CLI prints them (`analyze::human_bytes`). */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  if (n < 1024) return `${n} B`;
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u += 1;
  }
  return `${v.toFixed(1)} ${UNITS[u]}`;
}

export function formatPercent(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "—";
  return `${(x * 100).toFixed(x < 0.1 ? 1 : 0)}%`;
}

export function formatSeconds(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s)) return "—";
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(2)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${(s - m * 60).toFixed(0)} s`;
}

export interface ClassInfo {
  key: ClassName | "unexplained";
  label: string;
  color: string;
  description: string;
}

/** The classes of memory (docs/classification.md), in stacking order, with "unexplained". */
export const CLASSES: ClassInfo[] = [
  { key: "weights", label: "Weights", color: "#a78bfa", description: "allocated while loading, filled from host" },
  { key: "kv_cache", label: "KV cache", color: "#22d3ee", description: "large, long-lived, not filled from host" },
  { key: "dynamic", label: "Dynamic", color: "#f472b6", description: "activations and workspaces, freed in steady state" },
  { key: "pool", label: "Pool-held", color: "#fbbf24", description: "freed into a stream-ordered pool, still held" },
  { key: "host_fallback", label: "Host fallback", color: "#fb7185", description: "lives in host RAM instead of VRAM" },
  { key: "unknown", label: "Unknown", color: "#94a3b8", description: "nothing to decide by" },
  { key: "unexplained", label: "Unexplained", color: "#475569", description: "NVML's used memory minus what was traced" },
];

export function classInfo(key: string): ClassInfo {
  return CLASSES.find((c) => c.key === key) ?? { key: "unknown", label: key, color: "#94a3b8", description: "" };
}

/** NVML's figures older than this are said to be so, even when nothing traced changed since. */
export const NVML_STALE_NS = 1e9;

/**
 * When a GPU's NVML figures (used memory, coverage) are of another moment than its traced
 * bytes, says which: "NVML's sample 35 ms earlier, when 2.0 MiB was traced". Empty when
 * they are of the same moment: nothing traced on the GPU changed since, and the sample is
 * under a second old.
 */
export function nvmlAge(gpu: { nvml_age_ns?: number | null; nvml_traced_bytes?: number | null; traced_device_bytes: number; pool_held_bytes: number }): string {
  const age = gpu.nvml_age_ns;
  if (age === null || age === undefined) return "";
  const then = gpu.nvml_traced_bytes;
  const changed = then !== null && then !== undefined && then !== gpu.traced_device_bytes + gpu.pool_held_bytes;
  if (!changed && age < NVML_STALE_NS) return "";
  return `NVML's sample ${formatSeconds(age / 1e9)} earlier${changed ? `, when ${formatBytes(then!)} was traced` : ""}`;
}
