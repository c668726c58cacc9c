import { useCallback, useEffect, useRef, useState } from "react";
import { socketProtocols } from "../lib/auth";
import { applyChanges } from "../lib/state";
import type { Message, State } from "../lib/types";

export type Status = "connecting" | "open" | "reconnecting";

/** One sample per message: what the sparklines draw. */
export interface Sample {
  t: number;
  total: number;
  gpus: Record<string, { traced: number; util: number | null; used: number | null }>;
}

export const HISTORY = 120;

export interface LiveOptions {
  url?: string;
  /** For tests: the socket to use instead of the browser's. */
  createSocket?: (url: string, protocols: string[]) => WebSocket;
  /** Delays between attempts, in ms; the last repeats. */
  backoff?: number[];
  now?: () => number;
}

export interface Live {
  state: State | null;
  status: Status;
  /** Why the last connection ended, when it did. */
  error: string | null;
  /** Attempts since the last open connection. */
  attempts: number;
  history: Sample[];
  reconnect: () => void;
}

function defaultUrl(): string {
  const { protocol, host } = window.location;
  return `${protocol === "https:" ? "wss:" : "ws:"}//${host}/ws`;
}

function sample(s: State, t: number): Sample {
  const gpus: Sample["gpus"] = {};
  const tele = s.telemetry?.gpus?.gpus ?? [];
  for (const g of s.gpus) {
    const tg = tele.find((x) => String(x.index) === g.gpu);
    gpus[g.gpu] = {
      traced: g.traced_device_bytes + g.pool_held_bytes,
      util: tg?.utilization_gpu_percent ?? null,
      used: g.memory?.used_bytes ?? null,
    };
  }
  return { t, total: s.vram_bytes_used + s.pool_held_bytes, gpus };
}

/**
 * The served state over `/ws`: the full state, then changes applied in order. A connection
 * that ends is tried again after a growing delay; `reconnect` tries at once.
 */
export function useLiveState(opts: LiveOptions = {}): Live {
  const { createSocket, now = () => Date.now() } = opts;
  const backoff = opts.backoff ?? [500, 1000, 2000, 4000, 8000];
  const [state, setState] = useState<State | null>(null);
  const [status, setStatus] = useState<Status>("connecting");
  const [error, setError] = useState<string | null>(null);
  const [attempts, setAttempts] = useState(0);
  const [history, setHistory] = useState<Sample[]>([]);
  const sock = useRef<WebSocket | null>(null);
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const tries = useRef(0);
  const seq = useRef<number | null>(null);
  const stopped = useRef(false);
  const stateRef = useRef<State | null>(null);

  const connect = useCallback(() => {
    if (timer.current) clearTimeout(timer.current);
    timer.current = null;
    if (sock.current) {
      sock.current.onclose = null;
      sock.current.close();
    }
    const url = opts.url ?? defaultUrl();
    let ws: WebSocket;
    try {
      // The token, when there is one, rides in a subprotocol: never in the URL.
      const protocols = socketProtocols();
      ws = createSocket ? createSocket(url, protocols) : new WebSocket(url, protocols);
    } catch (e) {
      setError(String(e));
      return;
    }
    sock.current = ws;
    setStatus(tries.current === 0 ? "connecting" : "reconnecting");
    ws.onopen = () => {
      tries.current = 0;
      setAttempts(0);
    };
    ws.onmessage = (ev: MessageEvent) => {
      let msg: Message;
      try {
        msg = JSON.parse(String(ev.data)) as Message;
      } catch {
        return;
      }
      let next: State | null = stateRef.current;
      if (msg.type === "state") {
        next = msg.state;
        seq.current = msg.seq;
        setStatus("open");
        setError(null);
      } else if (msg.type === "changes") {
        if (!next || seq.current === null || msg.seq !== seq.current + 1) {
          // A gap: start again from the full state.
          ws.close();
          return;
        }
        seq.current = msg.seq;
        next = applyChanges(next, msg.changes);
      } else {
        return;
      }
      stateRef.current = next;
      setState(next);
      const s = sample(next, now());
      setHistory((h) => (h.length >= HISTORY ? [...h.slice(h.length - HISTORY + 1), s] : [...h, s]));
    };
    ws.onclose = (ev: CloseEvent) => {
      sock.current = null;
      seq.current = null;
      if (stopped.current) return;
      tries.current += 1;
      setAttempts(tries.current);
      setStatus("reconnecting");
      setError(ev.reason || (ev.code === 1006 || !ev.code ? "the server cannot be reached" : `closed (${ev.code})`));
      const delay = backoff[Math.min(tries.current - 1, backoff.length - 1)] ?? 8000;
      timer.current = setTimeout(connect, delay);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [createSocket, opts.url]);

  useEffect(() => {
    stopped.current = false;
    connect();
    return () => {
      stopped.current = true;
      if (timer.current) clearTimeout(timer.current);
      if (sock.current) {
        sock.current.onclose = null;
        sock.current.close();
      }
    };
  }, [connect]);

  const reconnect = useCallback(() => {
    connect();
  }, [connect]);

  return { state, status, error, attempts, history, reconnect };
}
