import { act, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import App from "../App";
import { base64url } from "../lib/auth";
import { FakeSocket } from "../test/fixtures";

const TOKEN = "e2e-s3cret>>?";
const sockets: { url: string; protocols: string[] }[] = [];
const create = (url: string, protocols: string[]) => {
  sockets.push({ url, protocols });
  return new FakeSocket(url) as unknown as WebSocket;
};

/** A server that wants `TOKEN` on every read. */
function server() {
  return vi.fn((_url: string, init?: RequestInit) => {
    const auth = (init?.headers as Record<string, string> | undefined)?.Authorization;
    const ok = auth === `Bearer ${TOKEN}`;
    return Promise.resolve(new Response(JSON.stringify(ok ? { token_required: true } : { error: "a valid bearer token is required" }), { status: ok ? 200 : 401 }));
  });
}

beforeEach(() => {
  FakeSocket.all = [];
  sockets.length = 0;
  sessionStorage.clear();
});
afterEach(() => vi.unstubAllGlobals());

describe("the token prompt", () => {
  it("encodes the token as the server decodes it", () => {
    // The same token and encoding as the server's test (vramtrace/tests/serve_http.rs).
    expect(base64url(TOKEN)).toBe("ZTJlLXMzY3JldD4-Pw");
  });

  it("asks on a 401, keeps the token in the tab, and sends it on reads and the socket", async () => {
    const fetch = server();
    vi.stubGlobal("fetch", fetch);
    render(<App live={{ url: "ws://x/ws", createSocket: create }} />);
    expect(sockets[0]?.protocols).toEqual([]);
    const dialog = await screen.findByTestId("token-prompt");
    expect(dialog).toHaveAttribute("role", "dialog");
    expect(screen.queryByText(/refused that token/)).toBeNull();
    await userEvent.type(screen.getByLabelText("Token"), TOKEN);
    await userEvent.click(screen.getByRole("button", { name: /open the dashboard/i }));
    await waitFor(() => expect(screen.queryByTestId("token-prompt")).toBeNull());
    expect(sessionStorage.getItem("vramtrace.token")).toBe(TOKEN);
    // The dashboard started over with the token: a socket offering it, a read carrying it.
    expect(sockets.at(-1)?.protocols).toEqual(["vramtrace.bearer.ZTJlLXMzY3JldD4-Pw"]);
    expect(sockets.at(-1)?.url).toBe("ws://x/ws");
    const last = fetch.mock.calls.at(-1)!;
    expect((last[1]?.headers as Record<string, string>).Authorization).toBe(`Bearer ${TOKEN}`);
    expect(String(last[0])).not.toContain(TOKEN);
  });

  it("says so when the server refuses the token given", async () => {
    vi.stubGlobal("fetch", server());
    render(<App live={{ url: "ws://x/ws", createSocket: create }} />);
    await userEvent.type(await screen.findByLabelText("Token"), "wrong");
    await act(async () => userEvent.click(screen.getByRole("button", { name: /open the dashboard/i })));
    expect(await screen.findByText(/refused that token/)).toBeInTheDocument();
    expect(screen.getByTestId("token-prompt")).toBeInTheDocument();
  });

  it("does not ask when the server answers without one", async () => {
    const fetch = vi.fn(() => Promise.resolve(new Response("{}", { status: 200 })));
    vi.stubGlobal("fetch", fetch);
    render(<App live={{ url: "ws://x/ws", createSocket: create }} />);
    await waitFor(() => expect(fetch).toHaveBeenCalled());
    expect(screen.queryByTestId("token-prompt")).toBeNull();
    expect(sockets[0]?.protocols).toEqual([]);
  });
});
