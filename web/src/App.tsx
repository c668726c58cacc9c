import { MotionConfig } from "framer-motion";
import { Gauge, ListTree, Server, Table2 } from "lucide-react";
import { useEffect, useMemo, useRef, useState } from "react";
import { formatSeconds } from "./lib/format";
import { Alerts } from "./components/Alerts";
import { AllocationTable } from "./components/AllocationTable";
import { ConnectionBanner } from "./components/ConnectionBanner";
import { GpuCard } from "./components/GpuCard";
import { Hero } from "./components/Hero";
import { Panel } from "./components/Panel";
import { Postmortem, Skeleton } from "./components/Postmortem";
import { ProcessList } from "./components/ProcessList";
import { StackPanel } from "./components/StackPanel";
import { SystemSummary } from "./components/SystemSummary";
import { useLiveState, type LiveOptions } from "./hooks/useLiveState";
import { useRead } from "./hooks/useRead";
import { allocationsAt, fetchSnapshotAt, getJson, type AllocationRow } from "./lib/api";
import { current, onUnauthorized, setToken } from "./lib/auth";
import { TokenPrompt } from "./components/TokenPrompt";
import type { State } from "./lib/types";

/** The dashboard, behind the token prompt when the server asks for one. */
export default function App({ live }: { live?: LiveOptions }) {
  const [needed, setNeeded] = useState(false);
  const [refused, setRefused] = useState(false);
  // A new token starts the dashboard over: its socket and its reads carry the token.
  const [session, setSession] = useState(0);
  useEffect(
    () =>
      onUnauthorized((sent) => {
        // A refusal of a token given since does not count.
        if (sent !== current()) return;
        setRefused(sent !== null);
        setNeeded(true);
      }),
    [],
  );
  useEffect(() => {
    // The socket cannot tell a refusal from an outage; a read can.
    const ctl = new AbortController();
    getJson("/api/config", ctl.signal).catch(() => {});
    return () => ctl.abort();
  }, [session]);
  const submit = (token: string) => {
    setToken(token);
    setNeeded(false);
    setSession((n) => n + 1);
  };
  return (
    <>
      {needed && <TokenPrompt refused={refused} onSubmit={submit} />}
      <Dashboard key={session} live={live} />
    </>
  );
}

function Dashboard({ live }: { live?: LiveOptions }) {
  const { state: liveState, status, error, attempts, history, reconnect } = useLiveState(live);
  const [cursor, setCursor] = useState<number | null>(null);
  const [pid, setPid] = useState<number | null>(null);
  const [row, setRow] = useState<AllocationRow | null>(null);
  const version = useThrottledVersion(liveState, 1000);

  // The cursor moves the whole page: the state at that moment, replayed by the server.
  const { data: atState, error: cursorError } = useRead(String(cursor), cursor === null ? null : (signal) => fetchSnapshotAt<State>(cursor, signal), 120);

  const state = atState ?? liveState;
  const replay = liveState?.tracing === "replay";
  const teleGpus = state?.telemetry?.gpus?.gpus ?? [];
  const fetcherAt = useMemo(() => allocationsAt(atState ? cursor : null), [atState, cursor]);

  return (
    <MotionConfig reducedMotion="user">
      <a href="#main" className="sr-only focus:not-sr-only focus:absolute focus:left-2 focus:top-2 focus:z-50 focus:rounded focus:bg-white focus:px-3 focus:py-1 focus:text-black">
        Skip to content
      </a>
      {/* Its own compositing layer: the gradients are rastered once, not again under every
          figure that changes (at 5 updates a second that halved the raster threads' time). */}
      <div aria-hidden className="pointer-events-none absolute inset-0 -z-10 [contain:strict] [will-change:transform] bg-[radial-gradient(circle_at_15%_0%,rgba(34,211,238,0.14),transparent_40%),radial-gradient(circle_at_90%_10%,rgba(217,70,239,0.16),transparent_40%),radial-gradient(circle_at_50%_100%,rgba(124,58,237,0.14),transparent_50%)]" />
      <div className="relative isolate mx-auto flex min-h-screen max-w-[1600px] flex-col gap-4 px-3 py-4 sm:px-6 sm:py-6">
        <nav className="flex items-center justify-between" aria-label="vramtrace">
          <p className="flex items-center gap-2 font-display text-xl font-bold tracking-tight">
            <span aria-hidden className="grid h-8 w-8 place-items-center rounded-lg bg-gradient-to-br from-cyan-400 to-fuchsia-500 text-[#07060d]">
              <Gauge className="h-5 w-5" />
            </span>
            vramtrace
          </p>
          <p className="text-xs text-slate-400" aria-live="polite" data-testid="conn-status">
            {status === "open" ? "connected" : status === "connecting" ? "connecting…" : "disconnected"}
          </p>
        </nav>
        <ConnectionBanner status={status} error={error} attempts={attempts} onReconnect={reconnect} />
        <main id="main" className="flex flex-col gap-4">
          {!state ? (
            <Panel>
              {status === "reconnecting" ? <p className="text-slate-300">No state yet: the server has not answered.</p> : <Skeleton label="Connecting to vramtrace serve" />}
            </Panel>
          ) : (
            <>
              <Hero state={state} cursor={cursor} />
              {cursorError && <p role="alert" className="text-rose-300">Could not read the state at the cursor: {cursorError}</p>}
              <Alerts state={state} />
              {replay && <Postmortem cursor={cursor} onCursor={setCursor} />}
              <section aria-label="GPUs" className="grid grid-cols-1 gap-4 md:grid-cols-2 2xl:grid-cols-3">
                {state.gpus.length === 0 ? (
                  <Panel className="md:col-span-2 2xl:col-span-3">
                    <p className="text-slate-400" data-testid="no-gpus">No GPU yet: nothing traced, and NVML lists none.</p>
                  </Panel>
                ) : (
                  state.gpus.map((g) => <GpuCard key={g.gpu} wide={state.gpus.length === 1} gpu={g} telemetry={teleGpus.find((t) => String(t.index) === g.gpu)} history={atState ? [] : history} />)
                )}
              </section>
              <div className="grid grid-cols-1 gap-4 lg:grid-cols-5">
                <Panel title="Processes" labelledBy="procs-title" icon={<ListTree aria-hidden className="h-4 w-4 text-cyan-300" />} className="lg:col-span-3">
                  <ProcessList processes={state.processes} selected={pid} onSelect={setPid} />
                </Panel>
                <Panel title="System" labelledBy="sys-title" icon={<Server aria-hidden className="h-4 w-4 text-violet-300" />} className="lg:col-span-2">
                  <SystemSummary state={state} />
                </Panel>
              </div>
              <div className="grid grid-cols-1 gap-4 lg:grid-cols-5">
                <Panel title={replay ? (cursor === null ? "Allocations live at the end of the trace" : `Allocations live at ${formatSeconds(cursor)}`) : "Live allocations"} labelledBy="allocs-title" icon={<Table2 aria-hidden className="h-4 w-4 text-fuchsia-300" />} className="lg:col-span-3">
                  <AllocationTable key={cursor === null ? "now" : `at-${cursor}`} pid={pid} version={version} onSelect={setRow} fetcher={fetcherAt} />
                </Panel>
                <Panel title="Stack" labelledBy="stack-title" className="lg:col-span-2">
                  <StackPanel row={row} />
                </Panel>
              </div>
            </>
          )}
        </main>
        <footer className="pb-2 text-center text-xs text-slate-500">vramtrace serve · read-only · {replay ? "postmortem" : "live"}</footer>
      </div>
    </MotionConfig>
  );
}

/** A number that moves at most once per `ms` while `value` keeps changing. */
function useThrottledVersion(value: unknown, ms: number): number {
  const [v, setV] = useState(0);
  const last = useRef(0);
  const pending = useRef<ReturnType<typeof setTimeout> | null>(null);
  useEffect(() => {
    const now = Date.now();
    const wait = Math.max(0, last.current + ms - now);
    if (pending.current) return;
    pending.current = setTimeout(() => {
      pending.current = null;
      last.current = Date.now();
      setV((x) => x + 1);
    }, wait);
  }, [value, ms]);
  useEffect(() => () => {
    if (pending.current) clearTimeout(pending.current);
  }, []);
  return v;
}
