import { render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { FlameGraph } from "./FlameGraph";

afterEach(() => vi.unstubAllGlobals());

describe("FlameGraph", () => {
  it("reads the tree at the cursor and draws the nodes wide enough to see, names as text", async () => {
    const tree = {
      name: "all",
      bytes: 1000,
      children: [
        { name: "<b>w</b> (1)", bytes: 990, children: [{ name: "train_step (model.py:3)", bytes: 990, children: [] }] },
        { name: "tiny (2)", bytes: 1, children: [] },
      ],
    };
    const fetch = vi.fn(async () => new Response(JSON.stringify(tree), { status: 200 }));
    vi.stubGlobal("fetch", fetch);
    const { container } = render(<FlameGraph at={1.5} />);
    await waitFor(() => expect(screen.getByTestId("flame")).toBeInTheDocument());
    expect(fetch).toHaveBeenCalledWith("/api/flame?at=1.5", expect.anything());
    expect(screen.getByRole("img", { name: /Flame graph of 1000 B live at 1\.50 s/ })).toBeInTheDocument();
    expect(screen.getByText("train_step (model.py:3)")).toBeInTheDocument();
    expect(screen.getByText("<b>w</b> (1)")).toBeInTheDocument();
    expect(container.querySelector("b")).toBeNull();
    expect(screen.queryByText("tiny (2)")).toBeNull();
  });
});
