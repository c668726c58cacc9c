import { Cpu } from "lucide-react";
import { motion } from "framer-motion";
import { formatBytes, formatPercent, nvmlAge } from "../lib/format";
import { gpuClasses } from "../lib/state";
import type { Gpu, TelemetryGpu } from "../lib/types";
import type { Sample } from "../hooks/useLiveState";
import { ClassBar } from "./ClassBar";
import { Sparkline } from "./Sparkline";

export function GpuCard({ gpu, telemetry, history, wide = false }: { gpu: Gpu; telemetry?: TelemetryGpu; history: Sample[]; wide?: boolean }) {
  const total = gpu.memory?.total_bytes ?? telemetry?.memory_total_bytes ?? null;
  const used = gpu.memory?.used_bytes ?? telemetry?.memory_used_bytes ?? null;
  const traced = gpu.traced_device_bytes + gpu.pool_held_bytes;
  // NVML's used figure and the coverage are those of its latest sample, which may be older
  // than the traced bytes: then they say when it was taken.
  const age = gpu.memory?.used_bytes !== undefined ? nvmlAge(gpu) : "";
  const title = gpu.index !== undefined ? `GPU ${gpu.index}` : gpu.gpu === "unknown" ? "GPU (unknown)" : `GPU ${gpu.gpu}`;
  const headingId = `gpu-${gpu.gpu}-title`;
  const mem = history.map((h) => h.gpus[gpu.gpu]?.traced ?? null);
  const util = history.map((h) => h.gpus[gpu.gpu]?.util ?? null);
  return (
    <motion.article
      initial={{ opacity: 0, y: 12 }}
      animate={{ opacity: 1, y: 0 }}
      aria-labelledby={headingId}
      data-testid={`gpu-card-${gpu.gpu}`}
      className={`min-w-0 rounded-2xl border border-white/10 bg-gradient-to-br from-[#161327] to-[#0e0c18] p-5 ${wide ? "md:col-span-2 2xl:col-span-3" : ""}`}
    >
      <header className="flex items-start justify-between gap-3">
        <div className="min-w-0">
          <h3 id={headingId} className="flex items-center gap-2 font-display text-lg font-semibold">
            <Cpu aria-hidden className="h-5 w-5 text-cyan-300" />
            {title}
          </h3>
          <p className="truncate text-sm text-slate-400">{gpu.name ?? (gpu.index === undefined ? "CUDA device as the process numbers it" : "name unknown")}</p>
        </div>
        <div className="text-right">
          <p className="text-xs uppercase tracking-wider text-slate-400">coverage</p>
          <p className="font-mono text-sm text-slate-200">{gpu.coverage === undefined || gpu.coverage === null ? "no NVML" : formatPercent(gpu.coverage)}</p>
          {age && gpu.coverage !== undefined && gpu.coverage !== null && <p className="text-xs text-amber-200/80">at NVML's sample</p>}
        </div>
      </header>
      <div className={wide ? "lg:grid lg:grid-cols-[3fr_2fr] lg:items-end lg:gap-8" : ""}>
      <div>
      <div className="mt-4 flex flex-wrap items-baseline gap-x-3">
        <p className="bg-gradient-to-r from-cyan-300 via-fuchsia-300 to-violet-300 bg-clip-text font-display text-4xl font-bold text-transparent" data-testid="gpu-traced" data-bytes={traced}>
          {formatBytes(traced)}
        </p>
        <p className="text-sm text-slate-400">
          traced{used !== null ? ` · ${formatBytes(used)} used` : ""}
          {total !== null ? ` of ${formatBytes(total)}` : " · size unknown"}
          {used !== null && age && <span data-testid="nvml-age" className="text-amber-200/80">{` (${age})`}</span>}
        </p>
      </div>
      <div className="mt-4">
        <ClassBar parts={gpuClasses(gpu)} capacity={total} label={`${title} memory`} />
      </div>
      </div>
      <div className="mt-4 grid grid-cols-2 gap-3">
        <div>
          <p className="text-xs text-slate-400">Traced memory</p>
          <Sparkline id={`spark-mem-${gpu.gpu}`} values={mem} label={`${title} traced memory over the last samples`} color="#22d3ee" />
        </div>
        <div>
          <p className="text-xs text-slate-400">Utilization {telemetry?.utilization_gpu_percent !== undefined && telemetry?.utilization_gpu_percent !== null ? `${telemetry.utilization_gpu_percent}%` : "—"}</p>
          <Sparkline id={`spark-util-${gpu.gpu}`} values={util} max={100} label={`${title} utilization over the last samples`} color="#e879f9" />
        </div>
      </div>
      </div>
    </motion.article>
  );
}
