import { render, screen, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { LifetimeView } from "./LifetimeView";

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
  it("asks the server for the window it is given, and for the whole trace again", async () => {
    const fetch = vi.mocked(globalThis.fetch);
    const { rerender } = render(<LifetimeView duration={100} view={null} cursor={50} onCursor={() => {}} />);
    await waitFor(() => expect(fetch).toHaveBeenCalledTimes(1));
    expect(String(fetch.mock.calls[0]![0])).not.toContain("from=");
    rerender(<LifetimeView duration={100} view={[37.5, 62.5]} cursor={50} onCursor={() => {}} />);
    await waitFor(() => expect(String(fetch.mock.calls.at(-1)![0])).toContain("from=37.5&to=62.5"));
    await waitFor(() => expect(screen.getByTestId("lifetimes-window")).toHaveTextContent(/37\.5.*62\.5/));
    // The cursor moving does not move the window: the timeline decides it.
    const asked = fetch.mock.calls.length;
    rerender(<LifetimeView duration={100} view={[37.5, 62.5]} cursor={70} onCursor={() => {}} />);
    await new Promise((r) => setTimeout(r, 300));
    expect(fetch).toHaveBeenCalledTimes(asked);
    rerender(<LifetimeView duration={100} view={null} cursor={70} onCursor={() => {}} />);
    await waitFor(() => expect(String(fetch.mock.calls.at(-1)![0])).not.toContain("from="));
    await waitFor(() => expect(screen.getByTestId("lifetimes-window")).toHaveTextContent(/^0 ms to 100\.00 s$/));
  });

  it("has no zoom of its own", async () => {
    render(<LifetimeView duration={100} view={null} cursor={50} onCursor={() => {}} />);
    await screen.findByTestId("lifetimes");
    expect(screen.queryByRole("button")).toBeNull();
  });
});
