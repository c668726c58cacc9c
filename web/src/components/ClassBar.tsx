import { classInfo, formatBytes } from "../lib/format";

export interface ClassBarProps {
  parts: { key: string; bytes: number }[];
  /** The bar's full width in bytes (the GPU's size); the sum of the parts when unknown. */
  capacity?: number | null;
  label: string;
  legend?: boolean;
  height?: "sm" | "lg";
}

/** Memory by class as one stacked bar, with its figures for screen readers. */
export function ClassBar({ parts, capacity, label, legend = true, height = "lg" }: ClassBarProps) {
  const shown = parts.filter((p) => p.bytes > 0);
  const sum = shown.reduce((s, p) => s + p.bytes, 0);
  const full = Math.max(capacity ?? 0, sum, 1);
  const description = shown.length
    ? shown.map((p) => `${classInfo(p.key).label} ${formatBytes(p.bytes)}`).join(", ")
    : "nothing traced";
  return (
    <div>
      <div
        role="img"
        aria-label={`${label}: ${description}${capacity ? ` of ${formatBytes(capacity)}` : ""}`}
        className={`flex w-full overflow-hidden rounded-full bg-white/[0.06] ring-1 ring-inset ring-white/10 ${height === "lg" ? "h-4" : "h-2"}`}
      >
        {shown.map((p) => {
          const c = classInfo(p.key);
          return (
            <div
              key={p.key}
              data-class={p.key}
              title={`${c.label}: ${formatBytes(p.bytes)}`}
              // No width transition: at 5 updates a second it never settled, so the page laid
              // out, painted and rastered every frame (bench-web's performance trace).
              className="h-full"
              style={{
                width: `${(p.bytes / full) * 100}%`,
                background: p.key === "unexplained"
                  ? `repeating-linear-gradient(45deg, ${c.color}, ${c.color} 4px, #334155 4px, #334155 8px)`
                  : `linear-gradient(180deg, ${c.color}, ${c.color}cc)`,
              }}
            />
          );
        })}
      </div>
      {legend && (
        <ul className="mt-2 flex flex-wrap gap-x-3 gap-y-1 text-xs text-slate-300" aria-label={`${label} by class`}>
          {parts.map((p) => {
            const c = classInfo(p.key);
            return (
              <li key={p.key} className="flex items-center gap-1.5" data-testid={`class-${p.key}`} data-bytes={p.bytes}>
                <span aria-hidden className="inline-block h-2.5 w-2.5 rounded-sm" style={{ background: c.color }} />
                <span>{c.label}</span>
                <span className="font-mono text-slate-100">{formatBytes(p.bytes)}</span>
              </li>
            );
          })}
        </ul>
      )}
    </div>
  );
}
