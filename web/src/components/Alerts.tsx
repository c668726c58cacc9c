import { AlertOctagon, HardDrive, PackageX } from "lucide-react";
import type { State } from "../lib/types";

/** Out-of-memory failures, host-memory fallbacks and lost events, most serious first. */
export function Alerts({ state }: { state: State }) {
  const items: { key: string; tone: string; icon: JSX.Element; text: string; testid: string }[] = [];
  if (state.ooms > 0 && state.last_oom) {
    const o = state.last_oom;
    items.push({
      key: "oom",
      tone: "border-rose-400/40 bg-rose-500/15 text-rose-100",
      icon: <AlertOctagon aria-hidden className="h-5 w-5 shrink-0" />,
      text: `Out of memory${state.ooms > 1 ? ` (${state.ooms} failures)` : ""}: ${o.comm ?? "?"} (pid ${o.pid ?? "?"}) ${o.api ?? ""} — ${o.summary ?? ""}`,
      testid: "alert-oom",
    });
  }
  if (state.host_findings > 0) {
    items.push({
      key: "host",
      tone: "border-amber-400/40 bg-amber-500/15 text-amber-100",
      icon: <HardDrive aria-hidden className="h-5 w-5 shrink-0" />,
      text: `${state.host_findings} host-memory fallback${state.host_findings > 1 ? "s" : ""}: GPU work placed in host RAM`,
      testid: "alert-host",
    });
  }
  if (state.lost_events > 0) {
    items.push({
      key: "lost",
      tone: "border-slate-400/40 bg-slate-500/15 text-slate-100",
      icon: <PackageX aria-hidden className="h-5 w-5 shrink-0" />,
      text: `${state.lost_events} events lost: the figures may be short`,
      testid: "alert-lost",
    });
  }
  if (items.length === 0) return null;
  return (
    <ul className="flex flex-col gap-2" aria-label="Alerts">
      {items.map((i) => (
        <li key={i.key} role="status" data-testid={i.testid} className={`flex items-start gap-2 rounded-xl border px-3 py-2 text-sm ${i.tone}`}>
          {i.icon}
          <span className="break-words">{i.text}</span>
        </li>
      ))}
    </ul>
  );
}
