import { AlertOctagon, Droplets, Crosshair } from "lucide-react";
import { useEffect, useState } from "react";
import { fetchAnalysis, fetchTimeline, type TimelineWindow } from "../lib/api";
import { classInfo, formatBytes, formatSeconds } from "../lib/format";
import { Panel } from "./Panel";
import { Timeline } from "./Timeline";
import { LifetimeView } from "./LifetimeView";
import { FlameGraph } from "./FlameGraph";
import { useRead } from "../hooks/useRead";
import type { View } from "../lib/zoom";
import { Flame, Layers } from "lucide-react";

// The parts of `analyze --json` the page shows (vramtrace/src/analyze).
interface OomExplained {
  pid: number;
  comm: string;
  ts_ns: number;
  api: string;
  request_bytes: number | null;
  held_device_bytes: number;
  by_class: Record<string, number>;
  verdict: string;
  stack?: StackRef | null;
  top_stacks?: { stack?: StackRef | null; bytes?: number }[];
}
/** A stack as the analysis cites it: its frames (innermost first) and its site, the frame in the user's code. */
interface StackRef {
  frames?: string[];
  site?: { title: string; frame: number } | null;
}

/** Up to `n` frames of a stack, from just inside its site outwards: the code that asked, not the allocator's insides. */
export function framesAround(stack: StackRef | null | undefined, n = 6): { frames: string[]; from: number } {
  const frames = stack?.frames ?? [];
  const from = Math.max(0, Math.min((stack?.site?.frame ?? 0) - 1, frames.length - n));
  return { frames: frames.slice(from, from + n), from };
}
interface LeakSuspect {
  pid?: number;
  comm?: string;
  bytes?: number;
  count?: number;
  site?: string | null;
  stack?: { frames?: string[] } | null;
  [k: string]: unknown;
}
/** Points asked for per timeline window: about one per pixel of a wide screen's chart. */
const TIMELINE_POINTS = 600;

export interface Analysis {
  header: { start_monotonic_ns: number };
  postmortem: { ooms: OomExplained[]; leaks: { suspects: LeakSuspect[]; retention: unknown[] } };
}

export function Postmortem({ cursor, onCursor }: { cursor: number | null; onCursor: (t: number) => void }) {
  // The whole trace's timeline, and the window shown (both views draw the same one).
  const [whole, setWhole] = useState<TimelineWindow | null>(null);
  const [view, setView] = useState<View>(null);
  const [analysis, setAnalysis] = useState<Analysis | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const ctl = new AbortController();
    // The analysis reads the whole trace on the server: asked for once the timeline is drawn,
    // so that it does not hold up the first render.
    fetchTimeline(null, null, TIMELINE_POINTS, ctl.signal)
      .then((t) => {
        setWhole(t);
        return new Promise((r) => setTimeout(r, 50));
      })
      .catch((e: Error) => ctl.signal.aborted || setError(e.message))
      .then(() => (ctl.signal.aborted ? null : fetchAnalysis<Analysis>(ctl.signal)))
      .then((a) => a && setAnalysis(a), (e: Error) => ctl.signal.aborted || setError(e.message));
    return () => ctl.abort();
  }, []);
  // The server computes the level of detail of the visible window.
  const { data: zoomed, error: zoomError } = useRead(
    JSON.stringify(view),
    view === null ? null : (signal) => fetchTimeline(view[0], view[1], TIMELINE_POINTS, signal),
    120,
  );
  // Until the window asked for comes, the last one stays drawn.
  const timeline = view === null ? whole : (zoomed ?? whole);
  const start = analysis?.header.start_monotonic_ns ?? 0;
  return (
    <div className="grid grid-cols-1 gap-4 lg:grid-cols-3">
      <Panel title="Out-of-memory explanations" labelledBy="pm-ooms" icon={<AlertOctagon aria-hidden className="h-4 w-4 text-rose-300" />} className="lg:col-span-2">
        {!analysis ? (
          <Skeleton label="Analyzing the trace" />
        ) : analysis.postmortem.ooms.length === 0 ? (
          <p className="text-slate-400">No out-of-memory failure in this trace.</p>
        ) : (
          <ol className="flex flex-col gap-3">
            {analysis.postmortem.ooms.map((o, i) => {
              const t = (o.ts_ns - start) / 1e9;
              const holder = o.top_stacks?.[0];
              const { frames, from } = framesAround(holder?.stack);
              return (
                <li key={i} className="rounded-xl border border-rose-400/30 bg-rose-500/10 p-3" data-testid="pm-oom" data-ts-ns={o.ts_ns}>
                  <div className="flex flex-wrap items-baseline justify-between gap-2">
                    <p className="font-semibold">
                      {o.comm} <span className="font-mono text-slate-400">pid {o.pid}</span> · {o.api} of {formatBytes(o.request_bytes)}
                    </p>
                    <button type="button" onClick={() => onCursor(t)} className="rounded-lg bg-rose-200 px-2 py-1 text-sm font-semibold text-rose-950 hover:bg-white focus:outline-none focus-visible:ring-2 focus-visible:ring-white" data-testid="goto-oom">
                      Go to {formatSeconds(t)}
                    </button>
                  </div>
                  <p className="mt-1 text-sm text-rose-100" data-testid="pm-oom-verdict">{o.verdict}</p>
                  <p className="mt-1 text-xs text-slate-300">
                    held {formatBytes(o.held_device_bytes)}:{" "}
                    {Object.entries(o.by_class)
                      .map(([k, v]) => `${classInfo(k).label} ${formatBytes(v)}`)
                      .join(", ")}
                  </p>
                  {o.stack?.site && (
                    <p className="mt-1 text-xs text-slate-300" data-testid="pm-oom-asked">
                      asked from <span className="font-mono text-slate-100">{o.stack.site.title}</span>
                    </p>
                  )}
                  {holder?.stack?.site && (
                    <p className="mt-1 text-xs text-slate-300" data-testid="pm-oom-holder">
                      most held by <span className="font-mono text-slate-100">{holder.stack.site.title}</span>
                      {holder.bytes !== undefined ? ` (${formatBytes(holder.bytes)})` : ""}, whose stack:
                    </p>
                  )}
                  {frames.length > 0 && (
                    <ol className="mt-2 max-h-32 overflow-auto rounded-lg bg-black/30 p-2 font-mono text-[11px] text-slate-300">
                      {from > 0 && <li className="text-slate-500">… {from} frame{from === 1 ? "" : "s"} inside the runtime above</li>}
                      {frames.map((f, j) => (
                        <li key={j} className={`break-all ${from + j === holder?.stack?.site?.frame ? "text-cyan-200" : ""}`}>{f}</li>
                      ))}
                    </ol>
                  )}
                </li>
              );
            })}
          </ol>
        )}
      </Panel>
      <Panel title="Leak suspects" labelledBy="pm-leaks" icon={<Droplets aria-hidden className="h-4 w-4 text-amber-300" />}>
        {!analysis ? (
          <Skeleton label="Analyzing the trace" />
        ) : analysis.postmortem.leaks.suspects.length === 0 ? (
          <p className="text-slate-400">No leak suspect{analysis.postmortem.leaks.retention.length ? ` (${analysis.postmortem.leaks.retention.length} allocator retention finding${analysis.postmortem.leaks.retention.length > 1 ? "s" : ""})` : ""}.</p>
        ) : (
          <ul className="flex flex-col gap-2" data-testid="pm-leaks">
            {analysis.postmortem.leaks.suspects.slice(0, 20).map((s, i) => (
              <li key={i} className="rounded-xl border border-amber-400/30 bg-amber-500/10 p-2 text-sm">
                <p className="font-semibold">{String(s.comm ?? "")} {s.pid !== undefined ? <span className="font-mono text-slate-400">pid {s.pid}</span> : null}</p>
                <p className="break-all font-mono text-xs text-slate-300">{String(s.site ?? s.stack?.frames?.[0] ?? "")}</p>
                {s.bytes !== undefined && <p className="text-xs text-amber-100">{formatBytes(Number(s.bytes))}</p>}
              </li>
            ))}
          </ul>
        )}
      </Panel>
      <Panel title="Memory timeline by class" labelledBy="pm-timeline" icon={<Crosshair aria-hidden className="h-4 w-4 text-fuchsia-300" />} className="lg:col-span-3">
        {(error ?? zoomError) && <p role="alert" className="text-rose-300">{error ?? zoomError}</p>}
        {timeline ? <Timeline data={timeline} cursor={cursor} onCursor={onCursor} view={view} onView={setView} /> : <Skeleton label="Loading the timeline" />}
      </Panel>
      <Panel title="Allocation lifetimes" labelledBy="pm-lifetimes" icon={<Layers aria-hidden className="h-4 w-4 text-cyan-300" />} className="lg:col-span-3">
        {whole ? <LifetimeView duration={whole.duration_s} view={view} cursor={cursor} onCursor={onCursor} /> : <Skeleton label="Loading the lifetimes" />}
      </Panel>
      <Panel title={`Flame graph ${cursor === null ? "at the end" : `at ${formatSeconds(cursor)}`}`} labelledBy="pm-flame" icon={<Flame aria-hidden className="h-4 w-4 text-orange-300" />} className="lg:col-span-3">
        <FlameGraph at={cursor} />
      </Panel>
    </div>
  );
}

export function Skeleton({ label }: { label: string }) {
  return (
    <div role="status" aria-label={label} className="flex flex-col gap-2">
      <div className="h-4 w-2/3 animate-pulse rounded bg-white/10 motion-reduce:animate-none" />
      <div className="h-4 w-1/2 animate-pulse rounded bg-white/10 motion-reduce:animate-none" />
      <div className="h-4 w-3/4 animate-pulse rounded bg-white/10 motion-reduce:animate-none" />
      <span className="sr-only">{label}…</span>
    </div>
  );
}
