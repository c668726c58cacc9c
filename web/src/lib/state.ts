import type { Changes, Gpu, Process, State } from "./types";

/** The state after one `changes` message (vramtrace/src/serve/ws.rs: diff). */
export function applyChanges(state: State, changes: Changes): State {
  const next: State = { ...state, ...changes.set };
  if (changes.processes_upsert || changes.processes_removed) {
    const byPid = new Map<string, Process>();
    for (const p of state.processes) byPid.set(String(p.pid), p);
    for (const pid of changes.processes_removed ?? []) byPid.delete(String(pid));
    for (const p of changes.processes_upsert ?? []) byPid.set(String(p.pid), p);
    next.processes = rank([...byPid.values()]);
  }
  return next;
}

/** Largest first, as the server ranks them. */
export function rank(ps: Process[]): Process[] {
  return ps.sort(
    (a, b) =>
      b.device_bytes + b.pool_held_bytes + b.host_bytes - (a.device_bytes + a.pool_held_bytes + a.host_bytes) ||
      (a.pid ?? 0) - (b.pid ?? 0),
  );
}

/** Bytes of one GPU by class, "unexplained" included where NVML gave its figure. */
export function gpuClasses(g: Gpu): { key: string; bytes: number }[] {
  const by = g.traced_by_class;
  const out = [
    { key: "weights", bytes: by.weights ?? 0 },
    { key: "kv_cache", bytes: by.kv_cache ?? 0 },
    { key: "dynamic", bytes: by.dynamic ?? 0 },
    { key: "pool", bytes: g.pool_held_bytes },
    { key: "unknown", bytes: by.unknown ?? 0 },
  ];
  if (g.unexplained_bytes !== undefined && g.unexplained_bytes !== null) {
    out.push({ key: "unexplained", bytes: g.unexplained_bytes });
  }
  return out;
}

/** One process's bytes by class, every GPU together, host fallback included. */
export function processClasses(p: Process): { key: string; bytes: number }[] {
  const sum: Record<string, number> = {};
  for (const g of p.by_gpu) {
    for (const [k, v] of Object.entries(g.by_class)) sum[k] = (sum[k] ?? 0) + (v ?? 0);
  }
  return [
    { key: "weights", bytes: sum.weights ?? 0 },
    { key: "kv_cache", bytes: sum.kv_cache ?? 0 },
    { key: "dynamic", bytes: sum.dynamic ?? 0 },
    { key: "pool", bytes: p.pool_held_bytes },
    { key: "host_fallback", bytes: p.host_bytes },
    { key: "unknown", bytes: sum.unknown ?? 0 },
  ];
}

/** Coverage of a process against NVML: the Ledger's reconciliation, every GPU together. */
export function processCoverage(p: Process): number | null {
  const devs = p.nvml?.devices ?? [];
  const nvml = devs.reduce((s, d) => s + (d.nvml_bytes ?? 0), 0);
  if (!devs.some((d) => d.nvml_bytes !== undefined) || nvml === 0) return null;
  return devs.reduce((s, d) => s + d.traced_bytes, 0) / nvml;
}
