import { useEffect, useState, memo } from "react";
import { fetchStack, type AllocationRow, type StackInfo } from "../lib/api";
import { classInfo, formatBytes } from "../lib/format";

/** The symbolized stack that made the selected allocation, innermost frame first. */
function StackPanelBody({ row, fetcher = fetchStack }: { row: AllocationRow | null; fetcher?: (id: number) => Promise<StackInfo> }) {
  const [stack, setStack] = useState<StackInfo | null>(null);
  const [error, setError] = useState<string | null>(null);
  const id = row?.stack ?? null;
  useEffect(() => {
    setStack(null);
    setError(null);
    if (id === null) return;
    let live = true;
    fetcher(id)
      .then((s) => live && setStack(s))
      .catch((e: unknown) => live && setError(String(e instanceof Error ? e.message : e)));
    return () => {
      live = false;
    };
  }, [id, fetcher]);
  if (!row) return <p className="text-sm text-slate-400">Select an allocation (click, or the arrow keys in the table) to see the stack that made it.</p>;
  return (
    <div aria-live="polite">
      <p className="text-sm text-slate-200">
        <span className="font-mono">{formatBytes(row.bytes)}</span> {classInfo(row.class).label} · {row.api} · pid {row.pid} tid {row.tid}
        {row.addr ? ` · ${row.addr}` : ""}
      </p>
      {id === null && <p className="mt-2 text-sm text-slate-400">No stack was captured for this allocation.</p>}
      {error && <p className="mt-2 text-sm text-rose-300">{error}</p>}
      {stack && (
        <ol className="mt-2 max-h-72 overflow-auto rounded-xl border border-white/10 bg-black/30 p-3 font-mono text-xs leading-relaxed" data-testid="stack-frames">
          {stack.frames.map((f, i) => (
            <li key={i} className="break-all text-slate-200">
              <span className="mr-2 text-slate-500">#{i}</span>
              {f}
            </li>
          ))}
          {stack.truncated && <li className="text-amber-300">truncated: {stack.truncated}</li>}
        </ol>
      )}
    </div>
  );
}

/** Rendered again only when its own props change, not at every update of the page's state. */
export const StackPanel = memo(StackPanelBody);
