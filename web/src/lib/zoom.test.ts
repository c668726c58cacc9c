import { describe, expect, it } from "vitest";
import { narrowest, selectView, zoomView } from "./zoom";

describe("zoom", () => {
  it("zooms in around the cursor, keeping the window inside the trace", () => {
    expect(zoomView(100, null, 0.25, 40, 1)).toEqual([27.5, 52.5]);
    expect(zoomView(100, null, 0.25, 5, 1)).toEqual([0, 25]);
    expect(zoomView(100, null, 0.25, 99, 1)).toEqual([75, 100]);
    // Without a cursor, around the window's middle.
    expect(zoomView(100, [20, 60], 0.25, null, 1)).toEqual([35, 45]);
  });

  it("zooms out around the window's middle, back to the whole trace once it covers it", () => {
    expect(zoomView(100, [35, 45], 4, null, 1)).toEqual([20, 60]);
    expect(zoomView(100, [90, 100], 4, null, 1)).toEqual([60, 100]);
    expect(zoomView(100, [20, 60], 4, null, 1)).toBeNull();
  });

  it("never goes narrower than the narrowest window", () => {
    expect(zoomView(100, [49, 51], 0.25, 50, 1)).toEqual([49.5, 50.5]);
    expect(narrowest(4096, 0.001)).toBe(1);
    expect(narrowest(1, 0.01)).toBe(0.04);
    expect(narrowest(0.01, 0.01)).toBe(0.01);
  });

  it("takes a dragged window in either direction", () => {
    expect(selectView(100, 70, 30, 1)).toEqual([30, 70]);
    expect(selectView(100, 30, 70, 1)).toEqual([30, 70]);
    expect(selectView(100, 50, 50.2, 1)).toEqual([49.6, 50.6]);
    expect(selectView(100, -5, 120, 1)).toBeNull();
  });
});
