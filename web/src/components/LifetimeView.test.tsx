import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { LifetimeView, lifetimeWindow } from "./LifetimeView";

const answer = (from: number, to: number) => ({ from, to, in_window: 1, smaller_left_out_below_bytes: 0, rows: [[from, null, 4096, "dynamic", 1, null]] });

beforeEach(() => {
  vi.stubGlobal(
    "fetch",
    vi.fn((url: string) => {
      const q = new URL(url, "http://x").searchParams;
      const from = Number(q.get("from") ?? 0);
      const to = Number(q.get("to") ?? 100);
      return Promise.resolve(new Response(JSON.stringify(answer(from, to))));
    }),
  );
  HTMLCanvasElement.prototype.getContext = () => null;
});
afterEach(() => vi.unstubAllGlobals());

describe("LifetimeView", () => {
  it("keeps its window inside the trace, around the cursor", () => {
    expect(lifetimeWindow(100, null, 40)).toEqual([0, 100]);
    expect(lifetimeWindow(100, 20, 40)).toEqual([30, 50]);
    expect(lifetimeWindow(100, 20, 5)).toEqual([0, 20]);
    expect(lifetimeWindow(100, 20, 99)).toEqual([80, 100]);
    expect(lifetimeWindow(100, 20, null)).toEqual([40, 60]);
  });

  it("asks the server for the window around the cursor when zoomed, and for the whole trace again", async () => {
    const fetch = vi.mocked(globalThis.fetch);
    const { rerender } = render(<LifetimeView duration={100} cursor={50} onCursor={() => {}} />);
    await waitFor(() => expect(fetch).toHaveBeenCalledTimes(1));
    expect(String(fetch.mock.calls[0]![0])).not.toContain("from=");
    await userEvent.click(await screen.findByTestId("lifetimes-zoom-in"));
    await waitFor(() => expect(String(fetch.mock.calls.at(-1)![0])).toContain("from=37.5&to=62.5"));
    // The window follows the cursor.
    rerender(<LifetimeView duration={100} cursor={70} onCursor={() => {}} />);
    await waitFor(() => expect(String(fetch.mock.calls.at(-1)![0])).toContain("from=57.5&to=82.5"));
    await waitFor(() => expect(screen.getByTestId("lifetimes-window")).toHaveTextContent(/57\.5.*82\.5/));
    await userEvent.click(screen.getByRole("button", { name: "Whole trace" }));
    await waitFor(() => expect(String(fetch.mock.calls.at(-1)![0])).not.toContain("from="));
  });
});
