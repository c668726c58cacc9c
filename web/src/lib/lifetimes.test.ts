import { describe, expect, it } from "vitest";
import { stack } from "./lifetimes";

describe("stack (the lifetime view's layout)", () => {
  it("lays live allocations on each other in the order they were made; a free lets those above fall", () => {
    const { bands, peak } = stack(
      [
        { start: 0, end: 2, bytes: 10, cls: "weights" },
        { start: 1, end: null, bytes: 5, cls: "dynamic" },
        { start: 3, end: 4, bytes: 7, cls: "dynamic" },
      ],
      5,
    );
    expect(peak).toBe(15);
    expect(bands[0]!.steps).toEqual([[0, 0]]);
    // On top of the first, then down to the floor when it is freed.
    expect(bands[1]!.steps).toEqual([
      [1, 10],
      [2, 0],
    ]);
    expect(bands[1]!.end).toBe(5);
    expect(bands[2]!.steps).toEqual([[3, 5]]);
  });
});
