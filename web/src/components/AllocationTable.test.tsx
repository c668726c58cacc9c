import { act, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import { AllocationTable, ROW_HEIGHT } from "./AllocationTable";
import { StackPanel } from "./StackPanel";
import type { AllocationRow, AllocFetcher } from "../lib/api";

const N = 100_000;
function row(i: number): AllocationRow {
  return { pid: 1, comm: "w", addr: `0x${(0x7f0000000000 + i * 4096).toString(16)}`, bytes: N - i, mem: "device", api: "cuMemAlloc_v2", class: "dynamic", device: 0, tid: 1, stack: i, t: i / 1000, top_frame: `site_${i}` };
}
const fetcher: AllocFetcher = vi.fn(async ({ offset, limit }) => ({
  total: N,
  offset,
  rows: Array.from({ length: Math.max(0, Math.min(limit, N - offset)) }, (_, k) => row(offset + k)),
}));

describe("AllocationTable", () => {
  it("renders only the rows in view of 100,000 and reads only the pages around them", async () => {
    render(<AllocationTable pid={null} version={0} fetcher={fetcher} />);
    await waitFor(() => expect(screen.getByTestId("alloc-total")).toHaveTextContent("100,000 live allocations"));
    expect(screen.getAllByTestId("alloc-row").length).toBeLessThan(20);
    const grid = screen.getByRole("grid", { name: "Live allocations" });
    expect(grid).toHaveAttribute("aria-rowcount", String(N + 1));
    const calls = (fetcher as ReturnType<typeof vi.fn>).mock.calls.length;
    expect(calls).toBeLessThanOrEqual(2);
    // Scroll to the middle: the rows there are read and drawn.
    act(() => {
      grid.scrollTop = 50_000 * ROW_HEIGHT;
      fireEvent.scroll(grid);
    });
    await waitFor(() => expect(screen.getByText(/site_50000/)).toBeInTheDocument());
    expect(screen.getAllByTestId("alloc-row").length).toBeLessThan(20);
  });

  it("moves the selection with the keyboard and hands the row on", async () => {
    const onSelect = vi.fn();
    render(<AllocationTable pid={null} version={0} fetcher={fetcher} onSelect={onSelect} />);
    await waitFor(() => expect(screen.getByText(/site_0/)).toBeInTheDocument());
    const grid = screen.getByRole("grid");
    grid.focus();
    fireEvent.keyDown(grid, { key: "ArrowDown" });
    fireEvent.keyDown(grid, { key: "ArrowDown" });
    await waitFor(() => expect(onSelect).toHaveBeenLastCalledWith(expect.objectContaining({ stack: 1 })));
    expect(screen.getAllByRole("row", { selected: true })).toHaveLength(1);
  });
});

describe("StackPanel", () => {
  it("shows the symbolized frames of the selected allocation", async () => {
    const stack = vi.fn(async (id: number) => ({ id, frames: ["train_step (model.py:42)", "<script>alert(1)</script> (x.so+0x10)"], truncated: null }));
    const { container } = render(<StackPanel row={row(7)} fetcher={stack} />);
    await waitFor(() => expect(screen.getByTestId("stack-frames")).toHaveTextContent("train_step (model.py:42)"));
    expect(stack).toHaveBeenCalledWith(7);
    expect(container.querySelector("script")).toBeNull();
  });
});
