import { useCallback, useEffect, useMemo, useRef, useState, memo } from "react";
import { classInfo, formatBytes, formatSeconds } from "../lib/format";
import { fetchAllocations, type AllocFetcher, type AllocationRow } from "../lib/api";

export const ROW_HEIGHT = 34;
export const PAGE = 200;
const VIEW_ROWS = 12;

interface Props {
  pid: number | null;
  /** Changes when the served state moved: the visible rows are read again. */
  version: number;
  fetcher?: AllocFetcher;
  onSelect?: (row: AllocationRow | null) => void;
  viewRows?: number;
}

/**
 * The live allocations, any number of them: only the rows in view are in the page, and
 * only the pages of rows around the view are read from the server.
 */
function AllocationTableBody({ pid, version, fetcher = fetchAllocations, onSelect, viewRows = VIEW_ROWS }: Props) {
  const [sort, setSort] = useState<"bytes" | "age">("bytes");
  const [total, setTotal] = useState<number | null>(null);
  const [pages, setPages] = useState<Map<number, AllocationRow[]>>(new Map());
  const [scrollTop, setScrollTop] = useState(0);
  const [selected, setSelected] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const inflight = useRef(new Set<string>());
  const box = useRef<HTMLDivElement>(null);
  const gen = useRef(0);

  const first = Math.floor(scrollTop / ROW_HEIGHT);
  const last = first + viewRows + 1;
  const wanted = useMemo(() => {
    const a = Math.floor(Math.max(0, first - 20) / PAGE);
    const b = Math.floor((last + 20) / PAGE);
    const out: number[] = [];
    for (let p = a; p <= b; p++) out.push(p);
    return out;
  }, [first, last]);

  const load = useCallback(
    (page: number, g: number) => {
      const key = `${g}:${page}`;
      if (inflight.current.has(key)) return;
      inflight.current.add(key);
      fetcher({ pid, offset: page * PAGE, limit: PAGE, sort })
        .then((r) => {
          if (g !== gen.current) return;
          setError(null);
          setTotal(r.total);
          setPages((m) => new Map(m).set(page, r.rows));
        })
        .catch((e: unknown) => {
          if (g === gen.current) setError(String(e instanceof Error ? e.message : e));
        })
        .finally(() => inflight.current.delete(key));
    },
    [fetcher, pid, sort],
  );

  // A new filter or order starts from nothing; a new version re-reads what is in view.
  useEffect(() => {
    gen.current += 1;
    setPages(new Map());
    setTotal(null);
    setSelected(null);
  }, [pid, sort]);

  useEffect(() => {
    const g = gen.current;
    for (const p of wanted) load(p, g);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [wanted, version, load]);

  const rowAt = (i: number): AllocationRow | undefined => pages.get(Math.floor(i / PAGE))?.[i % PAGE];

  useEffect(() => {
    onSelect?.(selected === null ? null : rowAt(selected) ?? null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [selected, pages]);

  const move = (to: number) => {
    if (!total) return;
    const i = Math.max(0, Math.min(total - 1, to));
    setSelected(i);
    const el = box.current;
    if (!el) return;
    if (i * ROW_HEIGHT < el.scrollTop) el.scrollTop = i * ROW_HEIGHT;
    else if ((i + 1) * ROW_HEIGHT > el.scrollTop + viewRows * ROW_HEIGHT) el.scrollTop = (i + 1) * ROW_HEIGHT - viewRows * ROW_HEIGHT;
    setScrollTop(el.scrollTop);
  };

  const onKey = (e: React.KeyboardEvent) => {
    const cur = selected ?? -1;
    const keys: Record<string, number> = {
      ArrowDown: cur + 1,
      ArrowUp: cur - 1,
      PageDown: cur + viewRows,
      PageUp: cur - viewRows,
      Home: 0,
      End: (total ?? 1) - 1,
    };
    const to = keys[e.key];
    if (to !== undefined) {
      e.preventDefault();
      move(to);
    } else if (e.key === "Escape") setSelected(null);
  };

  const rows: JSX.Element[] = [];
  if (total) {
    for (let i = first; i < Math.min(last, total); i++) {
      const r = rowAt(i);
      const c = classInfo(r?.class ?? "unknown");
      rows.push(
        <div
          key={i}
          role="row"
          aria-rowindex={i + 2}
          aria-selected={selected === i}
          data-testid="alloc-row"
          onClick={() => setSelected(i)}
          className={`absolute left-0 right-0 grid cursor-pointer grid-cols-[6.5rem_1fr_5rem] items-center gap-2 px-3 text-sm sm:grid-cols-[6.5rem_7rem_8rem_1fr_5rem_5rem] ${selected === i ? "bg-cyan-400/15" : i % 2 ? "bg-white/[0.02]" : ""}`}
          style={{ top: i * ROW_HEIGHT, height: ROW_HEIGHT }}
        >
          <span role="gridcell" className="font-mono text-slate-100">{r ? formatBytes(r.bytes) : "…"}</span>
          <span role="gridcell" className="hidden items-center gap-1.5 sm:flex">
            <span aria-hidden className="h-2 w-2 rounded-sm" style={{ background: c.color }} />
            {r ? c.label : ""}
          </span>
          <span role="gridcell" className="hidden truncate font-mono text-xs text-slate-300 sm:block">{r?.api ?? ""}</span>
          <span role="gridcell" className="truncate text-xs text-slate-300" title={r?.top_frame ?? ""}>
            {r ? <><span className="text-slate-100">{r.top_frame ?? r.addr ?? "?"}</span> <span className="text-slate-500">· {r.comm} {r.pid}</span></> : ""}
          </span>
          <span role="gridcell" className="hidden font-mono text-xs text-slate-400 sm:block">{r?.addr ? r.addr.slice(-8) : ""}</span>
          <span role="gridcell" className="text-right font-mono text-xs text-slate-400">{r && r.t !== null ? `+${formatSeconds(r.t)}` : ""}</span>
        </div>,
      );
    }
  }

  return (
    <div>
      <div className="mb-2 flex flex-wrap items-center justify-between gap-2 text-xs text-slate-400">
        <span data-testid="alloc-total">{total === null ? "loading…" : `${total.toLocaleString("en-US")} live allocations${pid !== null ? ` of pid ${pid}` : ""}`}</span>
        <label className="flex items-center gap-2">
          Order
          <select value={sort} onChange={(e) => setSort(e.target.value as "bytes" | "age")} className="rounded-lg border border-white/10 bg-slate-900 px-2 py-1 text-slate-100">
            <option value="bytes">largest first</option>
            <option value="age">newest first</option>
          </select>
        </label>
      </div>
      {error && <p role="alert" className="mb-2 text-sm text-rose-300">Could not read the allocations: {error}</p>}
      <div
        ref={box}
        role="grid"
        aria-label="Live allocations"
        aria-rowcount={(total ?? 0) + 1}
        tabIndex={0}
        onKeyDown={onKey}
        onScroll={(e) => setScrollTop((e.target as HTMLDivElement).scrollTop)}
        className="relative overflow-auto rounded-xl border border-white/10 bg-black/20 focus:outline-none focus-visible:ring-2 focus-visible:ring-cyan-300"
        style={{ height: (total === 0 ? 3 : viewRows) * ROW_HEIGHT }}
      >
        <div role="row" aria-rowindex={1} className="sr-only">
          <span role="columnheader">Size</span>
          <span role="columnheader">Class</span>
          <span role="columnheader">Entry point</span>
          <span role="columnheader">Made by</span>
          <span role="columnheader">Address</span>
          <span role="columnheader">Made at (since the first event)</span>
        </div>
        <div style={{ height: (total ?? 0) * ROW_HEIGHT, position: "relative" }}>{rows}</div>
        {total === 0 && <p className="absolute inset-0 grid place-items-center text-slate-400">No live allocations.</p>}
      </div>
    </div>
  );
}

/** Rendered again only when its own props change, not at every update of the page's state. */
export const AllocationTable = memo(AllocationTableBody);
