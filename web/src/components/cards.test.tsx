import { render, screen, within } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { GpuCard } from "./GpuCard";
import { Hero } from "./Hero";
import { ProcessList } from "./ProcessList";
import { Alerts } from "./Alerts";
import { ClassBar } from "./ClassBar";
import { Sparkline } from "./Sparkline";
import { GiB, MiB, proc, state } from "../test/fixtures";

describe("GpuCard", () => {
  it("shows the GPU's bytes by class, unexplained included, and its coverage", () => {
    const s = state();
    render(<GpuCard gpu={s.gpus[0]!} history={[]} />);
    expect(screen.getByRole("heading", { name: /GPU 0/ })).toBeInTheDocument();
    expect(screen.getByTestId("gpu-traced")).toHaveTextContent("6.0 GiB");
    expect(screen.getByTestId("class-weights")).toHaveTextContent("4.0 GiB");
    expect(screen.getByTestId("class-kv_cache")).toHaveTextContent("2.0 GiB");
    expect(screen.getByTestId("class-unexplained")).toHaveTextContent("1.0 GiB");
    expect(screen.getByText("86%")).toBeInTheDocument();
    const bar = screen.getByRole("img", { name: /GPU 0 memory: Weights 4\.0 GiB, KV cache 2\.0 GiB, Unexplained 1\.0 GiB of 80\.0 GiB/ });
    expect(bar.querySelectorAll("[data-class]")).toHaveLength(3);
  });

  it("says when NVML cannot give the GPU's size", () => {
    const g = { ...state().gpus[0]!, memory: { unavailable: "no sample" }, coverage: undefined, unexplained_bytes: undefined };
    render(<GpuCard gpu={g} history={[]} />);
    expect(screen.getByText(/size unknown/)).toBeInTheDocument();
    expect(screen.getByText("no NVML")).toBeInTheDocument();
    expect(screen.queryByTestId("class-unexplained")).toBeNull();
  });

  it("says when NVML's figures are of another moment than the traced bytes", () => {
    const s = state();
    const g = s.gpus[0]!;
    const now = g.traced_device_bytes + g.pool_held_bytes;
    // 35 ms old, but 6 GiB were allocated since: another moment.
    const { unmount } = render(<GpuCard gpu={{ ...g, nvml_age_ns: 35.5e6, nvml_traced_bytes: 2 * MiB }} history={[]} />);
    expect(screen.getByTestId("nvml-age")).toHaveTextContent("NVML's sample 36 ms earlier, when 2.0 MiB was traced");
    expect(screen.getByText("at NVML's sample")).toBeInTheDocument();
    unmount();
    // Old, though nothing changed.
    const { unmount: u2 } = render(<GpuCard gpu={{ ...g, nvml_age_ns: 4.41e9, nvml_traced_bytes: now }} history={[]} />);
    expect(screen.getByTestId("nvml-age")).toHaveTextContent(/^\(NVML's sample 4\.41 s earlier\)$/);
    u2();
    // Recent and nothing changed: the same moment, nothing said.
    render(<GpuCard gpu={{ ...g, nvml_age_ns: 0.3e9, nvml_traced_bytes: now }} history={[]} />);
    expect(screen.queryByTestId("nvml-age")).toBeNull();
  });

  it("draws sparklines from the history", () => {
    const s = state();
    const history = [1, 2, 3].map((i) => ({ t: i, total: i * GiB, gpus: { "0": { traced: i * GiB, util: i * 10, used: null } } }));
    render(<GpuCard gpu={s.gpus[0]!} history={history} />);
    expect(screen.getByRole("img", { name: /GPU 0 utilization over the last samples, latest 30%/ })).toBeInTheDocument();
  });
});

describe("Hero", () => {
  it("shows the aggregate and the tracing state", () => {
    render(<Hero state={state()} />);
    expect(screen.getByTestId("hero-bytes")).toHaveTextContent("6.0 GiB");
    expect(screen.getByText(/traced on 1 GPU by 1 process/)).toBeInTheDocument();
    expect(screen.getByRole("progressbar", { name: /GPU memory in use/ })).toHaveAttribute("aria-valuenow", "9");
    expect(screen.getByTestId("tracing")).toHaveTextContent("live");
  });
});

describe("ProcessList", () => {
  it("lists processes with their alerts", () => {
    const ps = [proc(), proc({ pid: 7, comm: "llama", device_bytes: GiB, ooms: 2, host_bytes: 64 * MiB })];
    render(<ProcessList processes={ps} selected={null} onSelect={() => {}} />);
    const rows = screen.getAllByTestId("process-row");
    expect(rows).toHaveLength(2);
    expect(within(rows[1]!).getByTestId("process-oom")).toHaveTextContent("2 OOM");
    expect(within(rows[1]!).getByTestId("process-host")).toHaveTextContent("host fallback 64.0 MiB");
    expect(within(rows[0]!).queryByTestId("process-oom")).toBeNull();
  });

  it("says what a process maps of other processes' memory, apart from its own bytes", () => {
    const imp = (bytes: number, owner_pid: number | null) => ({ bytes, api: "cuIpcOpenMemHandle_v2", source: owner_pid ? `mapped from PID ${owner_pid}` : "from an untraced process", owner_pid });
    const ps = [
      proc({ pid: 8, device_bytes: GiB, imported_bytes: 24 * MiB, imports: [imp(16 * MiB, 41), imp(8 * MiB, 41)] }),
      proc({ pid: 9, imported_bytes: 2 * MiB, imports: [imp(2 * MiB, null), imp(0, 41)] }),
      proc({ pid: 10 }),
    ];
    render(<ProcessList processes={ps} selected={null} onSelect={() => {}} />);
    const rows = screen.getAllByTestId("process-row");
    expect(within(rows[0]!).getByTestId("process-imports")).toHaveTextContent("maps 24.0 MiB from PID 41, not counted here");
    expect(within(rows[0]!).getByTestId("process-bytes")).toHaveTextContent("1.0 GiB");
    expect(within(rows[1]!).getByTestId("process-imports")).toHaveTextContent("maps 2.0 MiB from PID 41 and an unidentified owner");
    expect(within(rows[2]!).queryByTestId("process-imports")).toBeNull();
  });

  it("shows the pod and container a process runs in, as text, and nothing outside one", () => {
    const evil = "<img src=x onerror=alert(3)>";
    const id = "0123456789abcdef".repeat(4);
    const { container } = render(
      <ProcessList
        processes={[
          proc({ pid: 1, pod: { uid: "5f0c-uid", name: evil, namespace: "ml" }, container: id }),
          proc({ pid: 2, pod: { uid: "9a1d-uid", name: null, namespace: null } }),
          proc({ pid: 3 }),
        ]}
        selected={null}
        onSelect={() => {}}
      />,
    );
    const rows = screen.getAllByTestId("process-row");
    expect(within(rows[0]!).getByTestId("process-pod")).toHaveTextContent(`ml/${evil}`);
    expect(within(rows[0]!).getByTestId("process-pod").parentElement).toHaveAttribute("title", "pod UID 5f0c-uid");
    expect(within(rows[0]!).getByTestId("process-container")).toHaveTextContent(/^0123456789ab$/);
    expect(within(rows[0]!).getByTestId("process-container").parentElement).toHaveAttribute("title", id);
    expect(within(rows[1]!).getByTestId("process-pod")).toHaveTextContent("uid 9a1d-uid");
    expect(within(rows[1]!).queryByTestId("process-container")).toBeNull();
    expect(within(rows[2]!).queryByTestId("process-placement")).toBeNull();
    expect(container.querySelector("img")).toBeNull();
  });

  it("has an empty state", () => {
    render(<ProcessList processes={[]} selected={null} onSelect={() => {}} />);
    expect(screen.getByTestId("no-processes")).toBeInTheDocument();
  });

  it("renders names from a traced process as text, never as markup", () => {
    const evil = "<img src=x onerror=alert(1)>";
    const { container } = render(
      <ProcessList processes={[proc({ comm: evil, cmdline: [evil, "--x=</li><script>alert(2)</script>"] })]} selected={null} onSelect={() => {}} />,
    );
    expect(screen.getByTestId("process-comm")).toHaveTextContent(evil);
    expect(container.querySelector("img")).toBeNull();
    expect(container.querySelector("script")).toBeNull();
  });
});

describe("Alerts", () => {
  it("shows the out-of-memory alert and host fallback", () => {
    const s = state({ ooms: 1, host_findings: 3, last_oom: { pid: 9, comm: "train", api: "cuMemAlloc_v2", summary: "kv_cache 7.0 GiB, requested 1.0 GiB" } });
    render(<Alerts state={s} />);
    expect(screen.getByTestId("alert-oom")).toHaveTextContent("Out of memory: train (pid 9) cuMemAlloc_v2 — kv_cache 7.0 GiB, requested 1.0 GiB");
    expect(screen.getByTestId("alert-host")).toHaveTextContent("3 host-memory fallbacks");
  });
  it("is absent when all is well", () => {
    const { container } = render(<Alerts state={state()} />);
    expect(container).toBeEmptyDOMElement();
  });
});

describe("charts", () => {
  it("ClassBar describes itself to screen readers and scales to the capacity", () => {
    render(<ClassBar parts={[{ key: "dynamic", bytes: 25 }]} capacity={100} label="x" legend={false} />);
    const img = screen.getByRole("img", { name: "x: Dynamic 25 B of 100 B" });
    expect((img.firstChild as HTMLElement).style.width).toBe("25%");
  });
  it("Sparkline waits for two samples", () => {
    render(<Sparkline id="s" values={[1]} label="mem" color="#fff" />);
    expect(screen.getByRole("img", { name: "mem: not enough samples yet" })).toBeInTheDocument();
  });
});
