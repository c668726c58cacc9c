// Reads of `vramtrace serve`'s JSON endpoints (vramtrace/src/serve/api.rs, mod.rs).

import { current, unauthorized } from "./auth";

export interface AllocationRow {
  pid: number;
  comm: string;
  addr: string | null;
  bytes: number;
  mem: string;
  api: string;
  class: string;
  device: number | null;
  tid: number;
  stack: number | null;
  t: number | null;
  top_frame: string | null;
}

export interface AllocationPage {
  total: number;
  offset: number;
  rows: AllocationRow[];
}

export interface StackInfo {
  id: number;
  frames: string[];
  truncated?: string | null;
}

export async function getJson<T>(url: string, signal?: AbortSignal): Promise<T> {
  const token = current();
  const r = await fetch(url, { signal, headers: { Accept: "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) } });
  // A read made with an earlier token may come back after a new one was given.
  if (r.status === 401) unauthorized(token);
  if (!r.ok) {
    let msg = `${r.status}`;
    try {
      msg = ((await r.json()) as { error?: string }).error ?? msg;
    } catch {
      /* the status says it */
    }
    throw new Error(msg);
  }
  return (await r.json()) as T;
}

export type AllocFetcher = (q: { pid: number | null; offset: number; limit: number; sort: "bytes" | "age" }) => Promise<AllocationPage>;

export const fetchAllocations: AllocFetcher = ({ pid, offset, limit, sort }) =>
  getJson<AllocationPage>(`/api/allocations?offset=${offset}&limit=${limit}&sort=${sort}${pid !== null ? `&pid=${pid}` : ""}`);

export const fetchStack = (id: number) => getJson<StackInfo>(`/api/stack?id=${id}`);

export interface TimelineWindow {
  from: number;
  to: number;
  duration_s: number;
  resolution_s: number;
  columns: string[];
  points: number[][];
  ooms: { t: number; pid: number | null; api: string; requested_bytes: number | null }[];
}

export const fetchTimeline = (from: number | null, to: number | null, points: number, signal?: AbortSignal) =>
  getJson<TimelineWindow>(
    `/api/timeline?points=${points}${from !== null ? `&from=${from}` : ""}${to !== null ? `&to=${to}` : ""}`,
    signal,
  );

export const fetchSnapshotAt = <T,>(at: number, signal?: AbortSignal) => getJson<T>(`/api/snapshot?at=${at}`, signal);

export const fetchAnalysis = <T,>(signal?: AbortSignal) => getJson<T>("/api/analysis", signal);

export interface LifetimesWindow {
  from: number;
  to: number;
  in_window: number;
  smaller_left_out_below_bytes: number;
  /** [start s, end s | null, bytes, class, proc, stack] */
  rows: [number, number | null, number, string, number, number | null][];
}

/** The largest `max` allocations live in the window (the whole trace without one). */
export const fetchLifetimes = (max: number, signal?: AbortSignal, window?: { from: number; to: number } | null) =>
  getJson<LifetimesWindow>(`/api/lifetimes?max=${max}${window ? `&from=${window.from}&to=${window.to}` : ""}`, signal);

export interface FlameNode {
  name: string;
  bytes: number;
  children: FlameNode[];
}

export const fetchFlame = (at: number | null, signal?: AbortSignal) => getJson<FlameNode>(`/api/flame${at !== null ? `?at=${at}` : ""}`, signal);

export function allocationsAt(at: number | null): AllocFetcher {
  return ({ pid, offset, limit, sort }) =>
    getJson<AllocationPage>(
      `/api/allocations?offset=${offset}&limit=${limit}&sort=${sort}${pid !== null ? `&pid=${pid}` : ""}${at !== null ? `&at=${at}` : ""}`,
    );
}
