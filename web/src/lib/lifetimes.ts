/**
 * Stacks allocations as PyTorch memory_viz's Active Memory Timeline does: at every moment
 * the live allocations lie on each other in the order they were made, so that one freed
 * lets those above it fall. Returns, per allocation, the steps of its lower edge.
 */
export interface Band {
  start: number;
  end: number;
  bytes: number;
  cls: string;
  /** [time, offset] from its start: the offset holds until the next step. */
  steps: [number, number][];
}

export function stack(rows: { start: number; end: number | null; bytes: number; cls: string }[], endOfTrace: number): { bands: Band[]; peak: number } {
  const bands: Band[] = rows.map((r) => ({ start: r.start, end: r.end ?? endOfTrace, bytes: r.bytes, cls: r.cls, steps: [] }));
  const events: { t: number; kind: 0 | 1; i: number }[] = [];
  bands.forEach((b, i) => {
    events.push({ t: b.start, kind: 1, i });
    events.push({ t: b.end, kind: 0, i });
  });
  // Frees before allocations at the same time; in time order.
  events.sort((a, b) => a.t - b.t || a.kind - b.kind || a.i - b.i);
  const live: number[] = [];
  let peak = 0;
  let k = 0;
  while (k < events.length) {
    const t = events[k]!.t;
    while (k < events.length && events[k]!.t === t) {
      const e = events[k]!;
      if (e.kind === 1) live.push(e.i);
      else {
        const at = live.indexOf(e.i);
        if (at >= 0) live.splice(at, 1);
      }
      k += 1;
    }
    let off = 0;
    for (const i of live) {
      const b = bands[i]!;
      const last = b.steps[b.steps.length - 1];
      if (!last || last[1] !== off) b.steps.push([t, off]);
      off += b.bytes;
    }
    peak = Math.max(peak, off);
  }
  return { bands, peak };
}
