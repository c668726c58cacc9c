import { fetchFlame, type FlameNode } from "../lib/api";
import { formatBytes, formatSeconds } from "../lib/format";
import { useRead } from "../hooks/useRead";

const MAX_DEPTH = 48;

function hue(name: string): number {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return 260 + (h % 80);
}

function Row({ node, total, depth }: { node: FlameNode; total: number; depth: number }) {
  if (depth > MAX_DEPTH) return null;
  const kids = node.children.filter((c) => c.bytes / total >= 0.004);
  return (
    <div className="flex min-w-0 flex-col" style={{ width: `${(node.bytes / total) * 100}%` }}>
      <div
        title={`${node.name}: ${formatBytes(node.bytes)}`}
        className="mb-px mr-px h-5 truncate rounded-sm px-1 text-[11px] leading-5 text-slate-950"
        style={{ background: `hsl(${hue(node.name)} 85% 72%)` }}
      >
        {node.name}
      </div>
      {kids.length > 0 && (
        <div className="flex">
          {kids.map((c, i) => (
            <Row key={`${c.name}-${i}`} node={c} total={total} depth={depth + 1} />
          ))}
        </div>
      )}
    </div>
  );
}

/** Live bytes by stack at the cursor: the process on top, the entry point at the bottom. */
export function FlameGraph({ at }: { at: number | null }) {
  const { data: tree, error } = useRead(String(at), (signal) => fetchFlame(at, signal), 150);
  if (error) return <p role="alert" className="text-rose-300">{error}</p>;
  if (!tree) return <div role="status" aria-label="Loading the flame graph" className="h-24 animate-pulse rounded-xl bg-white/5 motion-reduce:animate-none" />;
  if (tree.bytes === 0) return <p className="text-slate-400">Nothing is live {at === null ? "at the end of the trace" : `at ${formatSeconds(at)}`}.</p>;
  return (
    <div role="img" aria-label={`Flame graph of ${formatBytes(tree.bytes)} live ${at === null ? "at the end" : `at ${formatSeconds(at)}`}, by stack`} className="overflow-x-auto" data-testid="flame">
      <div className="flex min-w-[640px]">
        <Row node={tree} total={tree.bytes} depth={0} />
      </div>
    </div>
  );
}
