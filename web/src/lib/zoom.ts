// The time window the postmortem page shows: the timeline and the lifetime view both draw it,
// and both ask the server for it alone.

/** Seconds `[from, to]` into the trace; `null` is the whole trace. */
export type View = [number, number] | null;

/** The narrowest window worth asking for: a few of the server's buckets, and no less than 1/4096 of the trace. */
export function narrowest(duration: number, resolution: number): number {
  return Math.min(duration, Math.max(duration / 4096, resolution * 4));
}

/** A window `span` seconds wide centred on `centre`, moved inside the trace; `null` once it covers it. */
function placed(duration: number, span: number, centre: number): View {
  if (span >= duration) return null;
  const from = Math.min(Math.max(0, centre - span / 2), duration - span);
  return [from, from + span];
}

/**
 * `view` made `factor` times as wide (below 1: zoom in), centred on `centre` (the cursor; the
 * window's middle without one), never narrower than `min`.
 */
export function zoomView(duration: number, view: View, factor: number, centre: number | null, min: number): View {
  const [lo, hi] = view ?? [0, duration];
  const span = Math.max(Math.min((hi - lo) * factor, duration), min);
  return placed(duration, span, centre ?? (lo + hi) / 2);
}

/** The window between two times picked with the mouse, in either order, at least `min` wide. */
export function selectView(duration: number, a: number, b: number, min: number): View {
  const lo = Math.max(0, Math.min(a, b));
  const hi = Math.min(duration, Math.max(a, b));
  return placed(duration, Math.max(hi - lo, min), (lo + hi) / 2);
}
