import { AlertTriangle, HardDrive, Share2 } from "lucide-react";
import { AnimatePresence, motion } from "framer-motion";
import { useRef } from "react";
import { formatBytes, formatPercent } from "../lib/format";
import { processClasses, processCoverage } from "../lib/state";
import type { Import, Pod, Process } from "../lib/types";
import { ClassBar } from "./ClassBar";

/** Allocations per second of each process, from the change in its count between updates. */
function useRates(processes: Process[]): Map<string, number | null> {
  const prev = useRef(new Map<string, { n: number; t: number; rate: number | null }>());
  const now = Date.now();
  const out = new Map<string, number | null>();
  const next = new Map<string, { n: number; t: number; rate: number | null }>();
  for (const p of processes) {
    const key = String(p.pid);
    const n = p.allocations_started ?? 0;
    const was = prev.current.get(key);
    let rate = was?.rate ?? null;
    if (was && now - was.t >= 500) rate = ((n - was.n) * 1000) / (now - was.t);
    const entry = was && now - was.t < 500 ? was : { n, t: now, rate };
    next.set(key, entry);
    out.set(key, rate);
  }
  prev.current = next;
  return out;
}

export function ProcessList({ processes, selected, onSelect }: { processes: Process[]; selected: number | null; onSelect: (pid: number | null) => void }) {
  const rates = useRates(processes);
  if (processes.length === 0) {
    return <p className="py-6 text-center text-slate-400" data-testid="no-processes">No traced process holds GPU memory right now.</p>;
  }
  return (
    <ul className="flex flex-col gap-2" aria-label="Traced processes">
      <AnimatePresence initial={false}>
        {processes.map((p) => {
          const cov = processCoverage(p);
          const rate = rates.get(String(p.pid));
          const isSel = selected !== null && p.pid === selected;
          return (
            <motion.li
              key={String(p.pid)}
              initial={{ opacity: 0, x: -8 }}
              animate={{ opacity: 1, x: 0 }}
              exit={{ opacity: 0, x: 8 }}
              data-testid="process-row"
              data-pid={p.pid ?? ""}
            >
              <button
                type="button"
                aria-pressed={isSel}
                onClick={() => onSelect(isSel ? null : p.pid)}
                className={`w-full rounded-xl border p-3 text-left transition-colors focus:outline-none focus-visible:ring-2 focus-visible:ring-cyan-300 ${isSel ? "border-cyan-300/60 bg-cyan-400/10" : "border-white/10 bg-white/[0.03] hover:bg-white/[0.06]"}`}
              >
                <div className="flex flex-wrap items-baseline justify-between gap-x-3 gap-y-1">
                  <div className="min-w-0 flex-1">
                    <p className="truncate font-semibold">
                      <span className="font-mono text-slate-400">{p.pid}</span> <span data-testid="process-comm">{p.comm ?? "?"}</span>
                    </p>
                    <Placement pod={p.pod ?? null} container={p.container} />
                    <p className="truncate font-mono text-xs text-slate-400" title={(p.cmdline ?? []).join(" ")} data-testid="process-cmdline">
                      {(p.cmdline ?? []).join(" ")}
                    </p>
                  </div>
                  <p className="font-display text-xl font-semibold" data-testid="process-bytes" data-bytes={p.device_bytes + p.pool_held_bytes}>{formatBytes(p.device_bytes + p.pool_held_bytes)}</p>
                </div>
                <div className="mt-2">
                  <ClassBar parts={processClasses(p)} label={`Process ${p.pid} memory`} legend={false} height="sm" />
                </div>
                <div className="mt-2 flex flex-wrap gap-x-4 gap-y-1 text-xs text-slate-300">
                  <span>{p.live_allocations.toLocaleString("en-US")} live</span>
                  <span>{rate === null || rate === undefined ? "— allocs/s" : `${rate.toFixed(rate < 10 ? 1 : 0)} allocs/s`}</span>
                  <span>coverage {cov === null ? "no NVML" : formatPercent(cov)}</span>
                  {(p.ooms ?? 0) > 0 && (
                    <span className="inline-flex items-center gap-1 rounded-full bg-rose-500/20 px-2 text-rose-200" data-testid="process-oom">
                      <AlertTriangle aria-hidden className="h-3 w-3" /> {p.ooms} OOM
                    </span>
                  )}
                  {(p.imports?.length ?? 0) > 0 && (
                    <span className="inline-flex items-center gap-1 rounded-full bg-violet-500/20 px-2 text-violet-200" data-testid="process-imports" title={(p.imports ?? []).map((m) => `${formatBytes(m.bytes)} by ${m.api}, ${m.source}`).join("\n")}>
                      <Share2 aria-hidden className="h-3 w-3" /> maps {formatBytes(p.imported_bytes ?? 0)} {importSources(p.imports ?? [])}, not counted here
                    </span>
                  )}
                  {p.host_bytes > 0 && (
                    <span className="inline-flex items-center gap-1 rounded-full bg-amber-500/20 px-2 text-amber-200" data-testid="process-host">
                      <HardDrive aria-hidden className="h-3 w-3" /> host fallback {formatBytes(p.host_bytes)}
                    </span>
                  )}
                </div>
              </button>
            </motion.li>
          );
        })}
      </AnimatePresence>
    </ul>
  );
}

/**
 * Where the process runs: its Kubernetes pod (namespace/name, or its UID when the name could not
 * be read) and its container (short id, the full one on hover). Nothing outside a container.
 */
function Placement({ pod, container }: { pod: Pod | null; container: string | null }) {
  if (!pod && !container) return null;
  return (
    <p className="flex min-w-0 flex-wrap gap-x-3 text-xs text-slate-300" data-testid="process-placement">
      {pod && (
        <span className="min-w-0 truncate" title={`pod UID ${pod.uid}`}>
          pod <span className="font-mono" data-testid="process-pod">{podLabel(pod)}</span>
        </span>
      )}
      {container && (
        <span className="min-w-0 truncate" title={container}>
          container <span className="font-mono" data-testid="process-container">{container.slice(0, 12)}</span>
        </span>
      )}
    </p>
  );
}

/** `namespace/name`, the name alone without a namespace, or the UID without a name. */
export function podLabel(pod: Pod): string {
  if (!pod.name) return `uid ${pod.uid}`;
  return pod.namespace ? `${pod.namespace}/${pod.name}` : pod.name;
}

/** Where a process's imported mappings come from, in a few words: "from PID 41", "from 2 traced processes". */
export function importSources(imports: Import[]): string {
  const owners = new Set(imports.map((m) => m.owner_pid).filter((p): p is number => p !== null && p !== undefined));
  const unknown = imports.some((m) => m.owner_pid === null || m.owner_pid === undefined);
  if (owners.size === 1 && !unknown) return `from PID ${[...owners][0]}`;
  if (owners.size === 0) return "from an untraced or unidentified owner";
  const traced = owners.size === 1 ? `PID ${[...owners][0]}` : `${owners.size} traced processes`;
  return `from ${traced}${unknown ? " and an unidentified owner" : ""}`;
}
