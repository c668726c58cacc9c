import { useEffect, useRef, useState, type MouseEvent as ReactMouseEvent } from "react";
import { Area, AreaChart, CartesianGrid, ReferenceLine, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { classInfo, formatBytes, formatSeconds } from "../lib/format";
import type { TimelineWindow } from "../lib/api";
import { narrowest, selectView, zoomView, type View } from "../lib/zoom";

const STACKED = ["weights", "kv_cache", "dynamic", "pool", "host_fallback", "unknown"];
/**
 * Where the plot sits in the chart: the y axis's width on the left, the margin on the right (px).
 * The lifetime view leaves the same room, so that a moment is at the same x in both.
 */
export const PLOT_LEFT = 72;
export const PLOT_RIGHT = 8;
/** A press that moves less than this is a click (the cursor), more a drag (a window). */
const DRAG_PX = 5;

const button =
  "rounded-lg bg-white/10 px-2 py-1 hover:bg-white/20 disabled:opacity-40 focus:outline-none focus-visible:ring-2 focus-visible:ring-cyan-300";

/**
 * Memory by class over the window shown (the server's level of detail for it), with the cursor.
 * A click moves the cursor, a drag across the chart zooms to the dragged window; the buttons zoom
 * in around the cursor, out, and back to the whole trace.
 */
export function Timeline({
  data,
  cursor,
  onCursor,
  view,
  onView,
}: {
  data: TimelineWindow;
  cursor: number | null;
  onCursor: (t: number) => void;
  view: View;
  onView: (v: View) => void;
}) {
  const plot = useRef<HTMLDivElement>(null);
  const [drag, setDrag] = useState<{ from: number; to: number } | null>(null);
  const stopDrag = useRef<(() => void) | null>(null);
  useEffect(() => () => stopDrag.current?.(), []);
  const duration = data.duration_s;
  const min = narrowest(duration, data.resolution_s);
  const [lo, hi] = view ?? [0, duration];
  /** The plot's x (px from the wrapper's left) and time at a mouse position. */
  const at = (clientX: number) => {
    const r = plot.current?.getBoundingClientRect();
    if (!r) return { x: 0, t: data.from };
    const width = Math.max(r.width - PLOT_LEFT - PLOT_RIGHT, 1);
    const x = Math.min(Math.max(clientX - r.left, PLOT_LEFT), PLOT_LEFT + width);
    return { x, t: data.from + ((x - PLOT_LEFT) / width) * (data.to - data.from) };
  };
  const onMouseDown = (e: ReactMouseEvent) => {
    if (e.button !== 0) return;
    e.preventDefault();
    const start = at(e.clientX);
    setDrag({ from: start.x, to: start.x });
    const move = (m: MouseEvent) => setDrag({ from: start.x, to: at(m.clientX).x });
    const up = (m: MouseEvent) => {
      stop();
      setDrag(null);
      const end = at(m.clientX);
      if (Math.abs(end.x - start.x) < DRAG_PX) onCursor(start.t);
      else onView(selectView(duration, start.t, end.t, min));
    };
    const stop = () => {
      window.removeEventListener("mousemove", move);
      window.removeEventListener("mouseup", up);
      stopDrag.current = null;
    };
    stopDrag.current?.();
    stopDrag.current = stop;
    window.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up);
  };
  const cols = data.columns;
  const rows = data.points.map((p) => {
    const o: Record<string, number> = {};
    cols.forEach((c, i) => (o[c] = p[i] ?? 0));
    return o;
  });
  const peak = rows.reduce((m, r) => Math.max(m, r.peak_device_bytes ?? 0), 0);
  const ooms = data.ooms.filter((o) => o.t >= data.from && o.t <= data.to).length;
  return (
    <div>
      <div className="mb-2 flex flex-wrap items-center gap-2 text-xs" role="group" aria-label="Timeline zoom: the lifetime view shows the same window">
        <button type="button" onClick={() => onView(zoomView(duration, view, 0.25, cursor, min))} disabled={hi - lo <= min} className={button} data-testid="timeline-zoom-in">
          Zoom in around the cursor
        </button>
        <button type="button" onClick={() => onView(zoomView(duration, view, 4, null, min))} disabled={view === null} className={button} data-testid="timeline-zoom-out">
          Zoom out
        </button>
        <button type="button" onClick={() => onView(null)} disabled={view === null} className={button} data-testid="timeline-whole">
          Whole trace
        </button>
        <span className="text-slate-400">
          Showing <span data-testid="timeline-window">{formatSeconds(lo)} to {formatSeconds(hi)}</span>
          {view !== null && ` of ${formatSeconds(duration)}`}; drag across the chart to zoom
        </span>
      </div>
      <div
        ref={plot}
        role="img"
        aria-label={`Memory by class from ${formatSeconds(data.from)} to ${formatSeconds(data.to)} of ${formatSeconds(duration)}: peak ${formatBytes(peak)}, ${ooms} out-of-memory failure${ooms === 1 ? "" : "s"}`}
        className="relative h-56 w-full cursor-crosshair select-none sm:h-72"
        onMouseDown={onMouseDown}
        data-testid="timeline-plot"
      >
        {drag && Math.abs(drag.to - drag.from) >= DRAG_PX && (
          <div
            aria-hidden
            className="pointer-events-none absolute bottom-6 top-2 z-10 border-x border-fuchsia-300 bg-fuchsia-300/15"
            style={{ left: Math.min(drag.from, drag.to), width: Math.abs(drag.to - drag.from) }}
            data-testid="timeline-brush"
          />
        )}
        <ResponsiveContainer width="100%" height="100%">
          <AreaChart data={rows} margin={{ top: 8, right: PLOT_RIGHT, bottom: 0, left: 0 }}>
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
            <YAxis tickFormatter={(b: number) => formatBytes(b)} stroke="#94a3b8" fontSize={11} width={PLOT_LEFT} />
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
