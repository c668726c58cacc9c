import { useEffect, useMemo, useRef } from "react";
import { fetchLifetimes } from "../lib/api";
import { useRead } from "../hooks/useRead";
import { classInfo, formatBytes, formatSeconds } from "../lib/format";
import { stack } from "../lib/lifetimes";
import type { View } from "../lib/zoom";
import { PLOT_LEFT, PLOT_RIGHT } from "./Timeline";

/**
 * Each allocation a band from its start to its end, stacked (memory_viz's Active Memory
 * Timeline), over the window the timeline shows (`view`, the whole trace when null); the server
 * picks the largest allocations live in that window, so the page never loads the trace.
 */
export function LifetimeView({ duration, view, cursor, onCursor }: { duration: number; view: View; cursor: number | null; onCursor: (t: number) => void }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const [from, to] = view ?? [0, duration];
  const { data, error } = useRead(
    JSON.stringify(view),
    (signal) => fetchLifetimes(1500, signal, view === null ? null : { from, to }),
    view === null ? 0 : 150,
  );
  const shown = data ? [data.from, data.to] : [from, to];
  const stacked = useMemo(() => (data ? stack(data.rows.map(([start, end, bytes, cls]) => ({ start, end, bytes, cls })), duration) : null), [data, duration]);
  useEffect(() => {
    const c = canvas.current;
    if (!c || !stacked) return;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    c.width = w * dpr;
    c.height = h * dpr;
    const g = c.getContext("2d");
    if (!g) return;
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    const [lo, hi] = shown as [number, number];
    const width = Math.max(hi - lo, 1e-9);
    const x = (t: number) => ((t - lo) / width) * w;
    const y = (b: number) => h - (b / Math.max(stacked.peak, 1)) * (h - 4);
    stacked.bands.forEach((b, i) => {
      const base = classInfo(b.cls).color;
      g.fillStyle = base;
      g.globalAlpha = i % 2 ? 0.75 : 0.95;
      g.beginPath();
      const pts = b.steps;
      for (let k = 0; k < pts.length; k++) {
        const [t, off] = pts[k]!;
        const tNext = k + 1 < pts.length ? pts[k + 1]![0] : b.end;
        if (k === 0) g.moveTo(x(t), y(off + b.bytes));
        g.lineTo(x(t), y(off + b.bytes));
        g.lineTo(x(tNext), y(off + b.bytes));
      }
      for (let k = pts.length - 1; k >= 0; k--) {
        const [t, off] = pts[k]!;
        const tNext = k + 1 < pts.length ? pts[k + 1]![0] : b.end;
        g.lineTo(x(tNext), y(off));
        g.lineTo(x(t), y(off));
      }
      g.closePath();
      g.fill();
    });
    g.globalAlpha = 1;
    if (cursor !== null) {
      g.strokeStyle = "#f0abfc";
      g.lineWidth = 2;
      g.beginPath();
      g.moveTo(x(cursor), 0);
      g.lineTo(x(cursor), h);
      g.stroke();
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [stacked, cursor, shown[0], shown[1]]);
  if (error) return <p role="alert" className="text-rose-300">{error}</p>;
  if (!data || !stacked) return <div role="status" aria-label="Loading the allocations' lifetimes" className="h-48 animate-pulse rounded-xl bg-white/5 motion-reduce:animate-none" />;
  return (
    <div>
      <div style={{ paddingLeft: PLOT_LEFT, paddingRight: PLOT_RIGHT }}>
        <canvas
          ref={canvas}
          role="img"
          aria-label={`Lifetimes of the ${data.rows.length} largest allocations of ${data.in_window}, stacked as they were live; highest ${formatBytes(stacked.peak)}. Click to move the cursor.`}
          className="h-48 w-full cursor-crosshair rounded-xl bg-black/30 sm:h-56"
          onClick={(e) => {
            const r = e.currentTarget.getBoundingClientRect();
            onCursor(shown[0]! + ((e.clientX - r.left) / r.width) * (shown[1]! - shown[0]!));
          }}
          data-testid="lifetimes"
        />
      </div>
      <p className="mt-1 text-xs text-slate-400">
        {data.rows.length < data.in_window ? `The ${data.rows.length.toLocaleString("en-US")} largest of ${data.in_window.toLocaleString("en-US")} allocations` : `${data.rows.length.toLocaleString("en-US")} allocations`}
        {data.smaller_left_out_below_bytes > 0 ? `; those under ${formatBytes(data.smaller_left_out_below_bytes)} are not kept` : ""} · <span data-testid="lifetimes-window">{formatSeconds(shown[0]!)} to {formatSeconds(shown[1]!)}</span>
      </p>
    </div>
  );
}
