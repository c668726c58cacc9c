/** A small line over the latest samples, drawn as one SVG path (cheap at 5 updates/s). */
export function Sparkline(props: { values: (number | null)[]; label: string; color: string; max?: number; id: string }) {
  const vals = props.values.map((v) => (v === null || !Number.isFinite(v) ? null : v));
  const known = vals.filter((v): v is number => v !== null);
  const w = 120;
  const h = 32;
  if (known.length < 2) {
    return (
      <svg role="img" aria-label={`${props.label}: not enough samples yet`} viewBox={`0 0 ${w} ${h}`} className="h-8 w-full">
        <line x1="0" x2={w} y1={h - 1} y2={h - 1} stroke="#334155" strokeDasharray="2 3" />
      </svg>
    );
  }
  const max = Math.max(props.max ?? 0, ...known, 1);
  const step = w / Math.max(vals.length - 1, 1);
  let d = "";
  vals.forEach((v, i) => {
    if (v === null) return;
    const x = i * step;
    const y = h - 2 - (v / max) * (h - 4);
    d += `${d ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const last = known[known.length - 1] ?? 0;
  return (
    <svg role="img" aria-label={`${props.label}, latest ${props.max === 100 ? `${last}%` : last}`} viewBox={`0 0 ${w} ${h}`} preserveAspectRatio="none" className="h-8 w-full">
      <defs>
        <linearGradient id={props.id} x1="0" x2="0" y1="0" y2="1">
          <stop offset="0" stopColor={props.color} stopOpacity="0.45" />
          <stop offset="1" stopColor={props.color} stopOpacity="0" />
        </linearGradient>
      </defs>
      <path d={`${d}L${w},${h}L0,${h}Z`} fill={`url(#${props.id})`} />
      <path d={d} fill="none" stroke={props.color} strokeWidth="1.6" vectorEffect="non-scaling-stroke" />
    </svg>
  );
}
