import { Area, AreaChart, CartesianGrid, ReferenceLine, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { classInfo, formatBytes, formatSeconds } from "../lib/format";
import type { TimelineWindow } from "../lib/api";

const STACKED = ["weights", "kv_cache", "dynamic", "pool", "host_fallback", "unknown"];

/** Memory by class over the trace, the server's level of detail, with the cursor. */
export function Timeline({ data, cursor, onCursor }: { data: TimelineWindow; cursor: number | null; onCursor: (t: number) => void }) {
  const cols = data.columns;
  const rows = data.points.map((p) => {
    const o: Record<string, number> = {};
    cols.forEach((c, i) => (o[c] = p[i] ?? 0));
    return o;
  });
  const peak = rows.reduce((m, r) => Math.max(m, r.peak_device_bytes ?? 0), 0);
  return (
    <div>
      <div
        role="img"
        aria-label={`Memory by class over ${formatSeconds(data.duration_s)}: peak ${formatBytes(peak)}, ${data.ooms.length} out-of-memory failure${data.ooms.length === 1 ? "" : "s"}`}
        className="h-56 w-full sm:h-72"
      >
        <ResponsiveContainer width="100%" height="100%">
          <AreaChart
            data={rows}
            margin={{ top: 8, right: 8, bottom: 0, left: 0 }}
            onClick={(e) => {
              const t = Number(e?.activeLabel);
              if (Number.isFinite(t)) onCursor(t);
            }}
          >
            <defs>
              {STACKED.map((k) => (
                <linearGradient key={k} id={`tl-${k}`} x1="0" x2="0" y1="0" y2="1">
                  <stop offset="0" stopColor={classInfo(k).color} stopOpacity={0.9} />
                  <stop offset="1" stopColor={classInfo(k).color} stopOpacity={0.35} />
                </linearGradient>
              ))}
            </defs>
            <CartesianGrid stroke="#ffffff14" vertical={false} />
            <XAxis dataKey="t" type="number" domain={[data.from, data.to]} tickFormatter={(t: number) => formatSeconds(t)} stroke="#94a3b8" fontSize={11} />
            <YAxis tickFormatter={(b: number) => formatBytes(b)} stroke="#94a3b8" fontSize={11} width={72} />
            <Tooltip
              isAnimationActive={false}
              contentStyle={{ background: "#0f0d1a", border: "1px solid #ffffff22", borderRadius: 12 }}
              labelFormatter={(t: number) => formatSeconds(t)}
              formatter={(v: number, name: string) => [formatBytes(v), classInfo(name).label]}
            />
            {STACKED.map((k) => (
              <Area key={k} type="stepAfter" dataKey={k} stackId="1" stroke={classInfo(k).color} fill={`url(#tl-${k})`} isAnimationActive={false} />
            ))}
            {data.ooms.map((o, i) => (
              <ReferenceLine key={i} x={o.t} stroke="#fb7185" strokeDasharray="4 3" label={{ value: "OOM", fill: "#fda4af", fontSize: 11, position: "insideTopRight" }} />
            ))}
            {cursor !== null && <ReferenceLine x={cursor} stroke="#f0abfc" strokeWidth={2} />}
          </AreaChart>
        </ResponsiveContainer>
      </div>
      <label className="mt-3 flex items-center gap-3 text-sm text-slate-300">
        <span className="shrink-0">Cursor</span>
        <input
          type="range"
          min={0}
          max={data.duration_s}
          step={Math.max(data.duration_s / 1000, 1e-6)}
          value={cursor ?? data.duration_s}
          onChange={(e) => onCursor(Number(e.target.value))}
          aria-label="Time cursor: the page shows the state at this moment"
          aria-valuetext={formatSeconds(cursor ?? data.duration_s)}
          className="w-full accent-fuchsia-400"
          data-testid="cursor"
        />
        <span className="w-24 shrink-0 text-right font-mono" data-testid="cursor-value">{formatSeconds(cursor ?? data.duration_s)}</span>
      </label>
      <p className="mt-1 text-xs text-slate-400">Resolution {formatSeconds(data.resolution_s)} per bucket, computed by the server; the trace itself is never loaded here.</p>
    </div>
  );
}
