import { fireEvent, render, screen } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import { Timeline } from "./Timeline";
import type { TimelineWindow } from "../lib/api";

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

describe("Timeline", () => {
  it("describes the chart and moves the cursor from the keyboard-reachable slider", () => {
    const onCursor = vi.fn();
    render(<Timeline data={data} cursor={null} onCursor={onCursor} />);
    expect(screen.getByRole("img", { name: "Memory by class over 10.00 s: peak 2.0 KiB, 1 out-of-memory failure" })).toBeInTheDocument();
    const slider = screen.getByRole("slider", { name: /Time cursor/ });
    fireEvent.change(slider, { target: { value: "4" } });
    expect(onCursor).toHaveBeenCalledWith(4);
  });
});
