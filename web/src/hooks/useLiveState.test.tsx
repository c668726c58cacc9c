import { act, render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import App from "../App";
import { renderHook } from "@testing-library/react";
import { useLiveState } from "./useLiveState";
import { FakeSocket, GiB, proc, state } from "../test/fixtures";

const create = (url: string) => new FakeSocket(url) as unknown as WebSocket;

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers({ shouldAdvanceTime: true });
  vi.stubGlobal("fetch", vi.fn(() => new Promise(() => {})));
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe("useLiveState", () => {
  it("takes the full state, then applies changes in order", () => {
    const { result } = renderHook(() => useLiveState({ url: "ws://x/ws", createSocket: create }));
    const ws = FakeSocket.all[0]!;
    act(() => {
      ws.open();
      ws.send({ type: "state", seq: 3, state: state() });
    });
    expect(result.current.status).toBe("open");
    act(() =>
      ws.send({ type: "changes", seq: 4, changes: { set: { vram_bytes_used: 7 * GiB }, processes_upsert: [proc({ pid: 5, device_bytes: GiB })], processes_removed: [4242] } }),
    );
    expect(result.current.state?.vram_bytes_used).toBe(7 * GiB);
    expect(result.current.state?.processes.map((p) => p.pid)).toEqual([5]);
    expect(result.current.history).toHaveLength(2);
  });

  it("starts again from the full state after a gap in the sequence", () => {
    const { result } = renderHook(() => useLiveState({ url: "ws://x/ws", createSocket: create, backoff: [10] }));
    const ws = FakeSocket.all[0]!;
    act(() => ws.send({ type: "state", seq: 1, state: state() }));
    act(() => ws.send({ type: "changes", seq: 3, changes: { set: { ooms: 9 } } }));
    expect(ws.closed).toBe(true);
    expect(result.current.state?.ooms).toBe(0);
  });

  it("reconnects with a growing delay and says why", () => {
    const { result } = renderHook(() => useLiveState({ url: "ws://x/ws", createSocket: create, backoff: [100, 1000] }));
    act(() => FakeSocket.all[0]!.drop());
    expect(result.current.status).toBe("reconnecting");
    expect(result.current.error).toBe("the server cannot be reached");
    expect(result.current.attempts).toBe(1);
    act(() => void vi.advanceTimersByTime(100));
    expect(FakeSocket.all).toHaveLength(2);
    act(() => FakeSocket.all[1]!.drop());
    act(() => void vi.advanceTimersByTime(500));
    expect(FakeSocket.all).toHaveLength(2);
    act(() => void vi.advanceTimersByTime(600));
    expect(FakeSocket.all).toHaveLength(3);
    act(() => {
      FakeSocket.all[2]!.open();
      FakeSocket.all[2]!.send({ type: "state", seq: 0, state: state() });
    });
    expect(result.current.status).toBe("open");
    expect(result.current.error).toBeNull();
    expect(result.current.attempts).toBe(0);
  });
});

describe("the page's connection states", () => {
  it("shows loading, then the state, then the reconnect banner whose button reconnects at once", async () => {
    const user = userEvent.setup({ advanceTimers: vi.advanceTimersByTime });
    render(<App live={{ url: "ws://x/ws", createSocket: create, backoff: [60_000] }} />);
    expect(screen.getByRole("status", { name: "Connecting to vramtrace serve" })).toBeInTheDocument();
    act(() => FakeSocket.all[0]!.send({ type: "state", seq: 0, state: state() }));
    expect(screen.getByTestId("hero-bytes")).toHaveTextContent("6.0 GiB");
    expect(screen.queryByTestId("reconnect-banner")).toBeNull();
    act(() => FakeSocket.all[0]!.drop());
    const banner = screen.getByRole("alert");
    expect(banner).toHaveTextContent("vramtrace serve is unreachable");
    // The last state stays on the page under the banner.
    expect(screen.getByTestId("hero-bytes")).toHaveTextContent("6.0 GiB");
    await user.click(screen.getByRole("button", { name: "Reconnect" }));
    expect(FakeSocket.all).toHaveLength(2);
    act(() => FakeSocket.all[1]!.send({ type: "state", seq: 0, state: state({ vram_bytes_used: GiB }) }));
    expect(screen.queryByTestId("reconnect-banner")).toBeNull();
  });
});
