import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Postmortem, framesAround } from "./Postmortem";

const COLUMNS = ["t", "weights", "kv_cache", "dynamic", "pool", "host_fallback", "unknown", "peak_device_bytes"];

/** A server that answers each read for the window asked (the whole 100 s trace without one). */
function server(url: string): unknown {
  const u = new URL(url, "http://x");
  const from = Number(u.searchParams.get("from") ?? 0);
  const to = Number(u.searchParams.get("to") ?? 100);
  switch (u.pathname) {
    case "/api/timeline":
      return { from, to, duration_s: 100, resolution_s: 0.01, columns: COLUMNS, points: [[to, 1, 0, 0, 0, 0, 0, 1]], ooms: [] };
    case "/api/lifetimes":
      return { from, to, in_window: 1, smaller_left_out_below_bytes: 0, rows: [[from, null, 4096, "dynamic", 1, null]] };
    case "/api/analysis":
      return { header: { start_monotonic_ns: 0 }, postmortem: { ooms: [], leaks: { suspects: [], retention: [] } } };
    case "/api/flame":
      return { name: "all", bytes: 0, children: [] };
  }
  throw new Error(`unexpected read ${url}`);
}

const asked = (path: string) =>
  vi
    .mocked(globalThis.fetch)
    .mock.calls.map(([u]) => String(u))
    .filter((u) => u.startsWith(path));
/** The window of the last read of `path`: "from-to", or "whole". */
const lastWindow = (path: string) => {
  const q = new URL(asked(path).at(-1)!, "http://x").searchParams;
  return q.has("from") ? `${q.get("from")}-${q.get("to")}` : "whole";
};

beforeEach(() => {
  vi.stubGlobal(
    "fetch",
    vi.fn((url: string) => Promise.resolve(new Response(JSON.stringify(server(url))))),
  );
  HTMLCanvasElement.prototype.getContext = () => null;
});
afterEach(() => vi.unstubAllGlobals());

describe("Postmortem", () => {
  it("shows the timeline and the lifetimes over the same window, asked of the server, as the timeline zooms", async () => {
    render(<Postmortem cursor={20} onCursor={() => {}} />);
    await screen.findByTestId("lifetimes");
    expect(lastWindow("/api/timeline")).toBe("whole");
    expect(lastWindow("/api/lifetimes")).toBe("whole");

    fireEvent.click(screen.getByRole("button", { name: "Zoom in around the cursor" }));
    await waitFor(() => expect(lastWindow("/api/timeline")).toBe("7.5-32.5"));
    await waitFor(() => expect(lastWindow("/api/lifetimes")).toBe("7.5-32.5"));
    await waitFor(() => expect(screen.getByTestId("lifetimes-window")).toHaveTextContent("7.50 s to 32.50 s"));
    expect(screen.getByTestId("timeline-window")).toHaveTextContent("7.50 s to 32.50 s");

    // A drag across the zoomed chart: 72 px of axis, then 1000 px for its 25 s.
    const plot = screen.getByTestId("timeline-plot");
    vi.spyOn(plot, "getBoundingClientRect").mockReturnValue({ left: 0, width: 1080, top: 0, height: 200, right: 1080, bottom: 200, x: 0, y: 0, toJSON: () => ({}) });
    await waitFor(() => expect(screen.getByRole("img", { name: /from 7\.50 s to 32\.50 s/ })).toBeInTheDocument());
    fireEvent.mouseDown(plot, { button: 0, clientX: 72 + 100 });
    fireEvent.mouseUp(window, { clientX: 72 + 500 });
    await waitFor(() => expect(lastWindow("/api/timeline")).toBe("10-20"));
    await waitFor(() => expect(lastWindow("/api/lifetimes")).toBe("10-20"));

    fireEvent.click(screen.getByRole("button", { name: "Whole trace" }));
    await waitFor(() => expect(lastWindow("/api/lifetimes")).toBe("whole"));
    expect(screen.getByTestId("timeline-window")).toHaveTextContent("0 ms to 100.00 s");
    // The whole trace's timeline was kept: not asked again.
    expect(asked("/api/timeline").filter((u) => !u.includes("from="))).toHaveLength(1);
  });
});

describe("framesAround", () => {
  const frames = Array.from({ length: 22 }, (_, i) => `f${i}`);
  it("starts just inside the site, so the code that asked shows, not the allocator's insides", () => {
    expect(framesAround({ frames, site: { title: "workload.py:210 scenario_oom", frame: 19 } })).toEqual({ frames: ["f16", "f17", "f18", "f19", "f20", "f21"], from: 16 });
    expect(framesAround({ frames, site: { title: "x", frame: 3 } })).toEqual({ frames: ["f2", "f3", "f4", "f5", "f6", "f7"], from: 2 });
  });
  it("starts at the innermost frame without a site, or when the site is the innermost", () => {
    expect(framesAround({ frames })).toEqual({ frames: ["f0", "f1", "f2", "f3", "f4", "f5"], from: 0 });
    expect(framesAround({ frames: ["a", "b"], site: { title: "a", frame: 0 } })).toEqual({ frames: ["a", "b"], from: 0 });
    expect(framesAround(null)).toEqual({ frames: [], from: 0 });
  });
});
