import { Activity, History, Radio } from "lucide-react";
import { nvmlAge, formatBytes, formatSeconds } from "../lib/format";
import type { State } from "../lib/types";

const TRACING: Record<State["tracing"], string> = {
  starting: "attaching probes",
  live: "live",
  ended: "recording ended",
  replay: "replaying a trace",
};

/** The aggregate: every GPU's traced bytes, and what the page is showing. */
export function Hero({ state, cursor }: { state: State; cursor?: number | null }) {
  const total = state.gpus.reduce((s, g) => s + (g.memory?.total_bytes ?? 0), 0);
  const used = state.gpus.reduce((s, g) => s + (g.memory?.used_bytes ?? 0), 0);
  const traced = state.vram_bytes_used + state.pool_held_bytes;
  const pct = total > 0 ? Math.min(1, (used || traced) / total) : null;
  const live = state.tracing === "live";
  return (
    <section
      aria-labelledby="hero-title"
      className="relative overflow-hidden rounded-3xl border border-white/10 bg-[radial-gradient(ellipse_at_top_left,rgba(34,211,238,0.25),transparent_55%),radial-gradient(ellipse_at_bottom_right,rgba(217,70,239,0.28),transparent_55%)] p-6 sm:p-8"
    >
      <div className="flex flex-wrap items-center gap-2 text-xs font-medium uppercase tracking-[0.18em] text-slate-300">
        {state.tracing === "replay" ? <History aria-hidden className="h-4 w-4" /> : live ? <Radio aria-hidden className="h-4 w-4 text-emerald-300" /> : <Activity aria-hidden className="h-4 w-4" />}
        <span data-testid="tracing">{TRACING[state.tracing]}</span>
        {cursor !== undefined && cursor !== null && <span className="rounded-full bg-fuchsia-500/20 px-2 py-0.5 text-fuchsia-200">at {formatSeconds(cursor)}</span>}
      </div>
      <h1 id="hero-title" className="sr-only">
        GPU memory
      </h1>
      <p className="mt-3 font-display text-5xl font-bold leading-none tracking-tight sm:text-7xl">
        <span className="bg-gradient-to-r from-cyan-200 via-fuchsia-200 to-violet-200 bg-clip-text text-transparent" data-testid="hero-bytes" data-bytes={traced}>
          {formatBytes(traced)}
        </span>
      </p>
      <p className="mt-2 text-slate-300">
        traced on {state.gpus.length} GPU{state.gpus.length === 1 ? "" : "s"} by {state.processes.length} process{state.processes.length === 1 ? "" : "es"}
        {total > 0 ? ` · ${formatBytes(used)} of ${formatBytes(total)} used (${state.gpus.map(nvmlAge).find((a) => a) ?? "NVML"})` : ""}
      </p>
      {pct !== null && (
        <div className="mt-4 h-2 w-full max-w-xl overflow-hidden rounded-full bg-white/10" role="progressbar" aria-label="GPU memory in use, every GPU" aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(pct * 100)}>
          <div className="h-full rounded-full bg-gradient-to-r from-cyan-400 via-fuchsia-500 to-violet-500" style={{ width: `${pct * 100}%` }} />
        </div>
      )}
      <dl className="mt-6 grid grid-cols-2 gap-4 sm:grid-cols-4">
        {[
          ["Pool-held", formatBytes(state.pool_held_bytes)],
          ["Host RAM", formatBytes(state.host_bytes)],
          ["Out of memory", String(state.ooms)],
          ["Records", state.records.toLocaleString("en-US")],
        ].map(([k, v]) => (
          <div key={k}>
            <dt className="text-xs uppercase tracking-wider text-slate-400">{k}</dt>
            <dd className="font-display text-xl font-semibold text-slate-100">{v}</dd>
          </div>
        ))}
      </dl>
    </section>
  );
}
