import { formatBytes, formatSeconds } from "../lib/format";
import type { State } from "../lib/types";

/** The machine and the recording: CPU, memory, load, NVML, what the tracer saw. */
export function SystemSummary({ state }: { state: State }) {
  const sys = state.telemetry?.system;
  const load = Array.isArray(sys?.load_average) ? sys?.load_average.map((l) => l.toFixed(2)).join(" ") : "—";
  const uptime = typeof sys?.uptime_seconds === "number" ? formatSeconds(sys.uptime_seconds) : "—";
  const span = state.time_span_ns ? (state.time_span_ns[1] - state.time_span_ns[0]) / 1e9 : null;
  const rows: [string, string][] = [
    ["CPU", sys?.cpu_percent !== undefined ? `${sys.cpu_percent.toFixed(0)}% of ${sys.cpus ?? "?"} cores` : state.telemetry?.unavailable ? "not this machine's trace" : "—"],
    ["Memory", sys?.memory_used_bytes !== undefined ? `${formatBytes(sys.memory_used_bytes)} of ${formatBytes(sys.memory_total_bytes)}` : "—"],
    ["Load", load],
    ["Uptime", uptime],
    ["NVML", state.nvml.available ? `driver ${state.nvml.driver_version ?? "?"}` : `unavailable${state.nvml.reason ? `: ${state.nvml.reason}` : ""}`],
    ["Traced span", formatSeconds(span)],
    ["Allocations made", Object.values(state.allocations).reduce((a, b) => a + b, 0).toLocaleString("en-US")],
    ["Lost events", state.lost_events.toLocaleString("en-US")],
  ];
  return (
    <dl className="grid grid-cols-1 gap-x-4 gap-y-2 text-sm sm:grid-cols-2">
      {rows.map(([k, v]) => (
        <div key={k} className="flex justify-between gap-3 border-b border-white/5 pb-1">
          <dt className="text-slate-400">{k}</dt>
          <dd className="min-w-0 truncate text-right font-mono text-slate-100" title={v}>
            {v}
          </dd>
        </div>
      ))}
    </dl>
  );
}
