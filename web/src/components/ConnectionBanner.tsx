import { RefreshCw, WifiOff } from "lucide-react";
import type { Status } from "../hooks/useLiveState";

/** Said when the server cannot be reached, with a way to try again now. */
export function ConnectionBanner({ status, error, attempts, onReconnect }: { status: Status; error: string | null; attempts: number; onReconnect: () => void }) {
  if (status !== "reconnecting") return null;
  return (
    <div role="alert" data-testid="reconnect-banner" className="flex flex-wrap items-center justify-between gap-3 rounded-2xl border border-rose-400/40 bg-rose-500/15 px-4 py-3 text-rose-100">
      <p className="flex items-center gap-2">
        <WifiOff aria-hidden className="h-5 w-5" />
        <span>
          <strong className="font-semibold">vramtrace serve is unreachable.</strong> {error ?? ""}
          {attempts > 0 ? ` · retrying (attempt ${attempts})` : ""}
        </span>
      </p>
      <button
        type="button"
        onClick={onReconnect}
        className="inline-flex items-center gap-2 rounded-xl bg-rose-200 px-3 py-1.5 font-semibold text-rose-950 hover:bg-white focus:outline-none focus-visible:ring-2 focus-visible:ring-white"
      >
        <RefreshCw aria-hidden className="h-4 w-4" /> Reconnect
      </button>
    </div>
  );
}
