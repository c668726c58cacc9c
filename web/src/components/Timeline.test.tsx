import { fireEvent, render, screen } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import { Timeline } from "./Timeline";
import type { TimelineWindow } from "../lib/api";
import type { View } from "../lib/zoom";

const data: TimelineWindow = {
  from: 0,
  to: 10,
  duration_s: 10,
  resolution_s: 0.001,
  columns: ["t", "weights", "kv_cache", "dynamic", "pool", "host_fallback", "unknown", "peak_device_bytes"],
  points: [
    [5, 100, 0, 0, 0, 0, 0, 100],
    [10, 100, 50, 0, 0, 0, 0, 2048],
  ],
  ooms: [{ t: 9, pid: 1, api: "cuMemAlloc_v2", requested_bytes: 1 }],
};

function draw(over: { data?: TimelineWindow; cursor?: number | null; view?: View } = {}) {
  const onCursor = vi.fn();
  const onView = vi.fn();
  render(<Timeline data={over.data ?? data} cursor={over.cursor ?? null} onCursor={onCursor} view={over.view ?? null} onView={onView} />);
  // The plot: 72 px of axis, then 1000 px of time, then 8 px of margin.
  const plot = screen.getByTestId("timeline-plot");
  vi.spyOn(plot, "getBoundingClientRect").mockReturnValue({ left: 100, width: 1080, top: 0, height: 200, right: 1180, bottom: 200, x: 100, y: 0, toJSON: () => ({}) });
  return { onCursor, onView, plot };
}

describe("Timeline", () => {
  it("describes the chart and moves the cursor from the keyboard-reachable slider", () => {
    const { onCursor } = draw();
    expect(screen.getByRole("img", { name: "Memory by class from 0 ms to 10.00 s of 10.00 s: peak 2.0 KiB, 1 out-of-memory failure" })).toBeInTheDocument();
    const slider = screen.getByRole("slider", { name: /Time cursor/ });
    fireEvent.change(slider, { target: { value: "4" } });
    expect(onCursor).toHaveBeenCalledWith(4);
  });

  it("zooms to the window dragged across the chart", () => {
    const { onCursor, onView, plot } = draw();
    fireEvent.mouseDown(plot, { button: 0, clientX: 100 + 72 + 600 });
    fireEvent.mouseMove(window, { clientX: 100 + 72 + 300 });
    expect(screen.getByTestId("timeline-brush")).toHaveStyle({ left: "372px", width: "300px" });
    fireEvent.mouseUp(window, { clientX: 100 + 72 + 300 });
    expect(onView).toHaveBeenCalledTimes(1);
    const [from, to] = onView.mock.calls[0]![0] as [number, number];
    expect(from).toBeCloseTo(3);
    expect(to).toBeCloseTo(6);
    expect(onCursor).not.toHaveBeenCalled();
    expect(screen.queryByTestId("timeline-brush")).toBeNull();
  });

  it("moves the cursor on a click, in the window shown", () => {
    const zoomed = { ...data, from: 2, to: 4, points: [[3, 100, 0, 0, 0, 0, 0, 100]] };
    const { onCursor, onView, plot } = draw({ data: zoomed, view: [2, 4] });
    fireEvent.mouseDown(plot, { button: 0, clientX: 100 + 72 + 250 });
    fireEvent.mouseUp(window, { clientX: 100 + 72 + 252 });
    expect(onCursor).toHaveBeenCalledTimes(1);
    expect(onCursor.mock.calls[0]![0]).toBeCloseTo(2.5);
    expect(onView).not.toHaveBeenCalled();
    // The OOM at 9 s is outside the window: not counted in it.
    expect(screen.getByRole("img", { name: /from 2\.00 s to 4\.00 s of 10\.00 s: .* 0 out-of-memory failures/ })).toBeInTheDocument();
  });

  it("zooms from buttons: in around the cursor, out, whole trace", () => {
    const whole = draw({ cursor: 8 });
    expect(screen.getByRole("button", { name: "Zoom out" })).toBeDisabled();
    expect(screen.getByRole("button", { name: "Whole trace" })).toBeDisabled();
    fireEvent.click(screen.getByRole("button", { name: "Zoom in around the cursor" }));
    expect(whole.onView).toHaveBeenLastCalledWith([6.75, 9.25]);
  });

  it("zooms out and back to the whole trace from a window", () => {
    const { onView } = draw({ view: [4, 5], data: { ...data, from: 4, to: 5 } });
    expect(screen.getByTestId("timeline-window")).toHaveTextContent("4.00 s to 5.00 s");
    fireEvent.click(screen.getByRole("button", { name: "Zoom out" }));
    expect(onView).toHaveBeenLastCalledWith([2.5, 6.5]);
    fireEvent.click(screen.getByRole("button", { name: "Whole trace" }));
    expect(onView).toHaveBeenLastCalledWith(null);
  });

  it("stops zooming in at a few of the server's buckets", () => {
    draw({ view: [5, 5.004], data: { ...data, from: 5, to: 5.004 } });
    expect(screen.getByRole("button", { name: "Zoom in around the cursor" })).toBeDisabled();
  });
});
