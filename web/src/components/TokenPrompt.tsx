import { KeyRound } from "lucide-react";
import { useState, type FormEvent } from "react";

/**
 * Asks for the bearer token of a `vramtrace serve --token-file` when the server refused the
 * page's requests. The token stays in this tab (sessionStorage), never in the URL.
 */
export function TokenPrompt({ refused, onSubmit }: { refused: boolean; onSubmit: (token: string) => void }) {
  const [value, setValue] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const t = value.trim();
    if (t) onSubmit(t);
  };
  return (
    <div role="dialog" aria-modal="true" aria-labelledby="token-title" data-testid="token-prompt" className="fixed inset-0 z-40 grid place-items-center bg-[#07060d]/80 p-4">
      <form onSubmit={submit} className="flex w-full max-w-md flex-col gap-3 rounded-2xl border border-white/10 bg-[#100e1c] p-5 shadow-xl">
        <h2 id="token-title" className="flex items-center gap-2 font-display text-lg font-semibold">
          <KeyRound aria-hidden className="h-5 w-5 text-cyan-300" /> This server needs a token
        </h2>
        <p className="text-sm text-slate-300">
          It was started with <code className="font-mono">--token-file</code>. The token is kept in this tab only and sent with each request.
        </p>
        {refused && (
          <p role="alert" className="text-sm text-rose-300">
            The server refused that token.
          </p>
        )}
        <label className="flex flex-col gap-1 text-sm">
          Token
          <input
            type="password"
            autoComplete="current-password"
            autoFocus
            value={value}
            onChange={(e) => setValue(e.target.value)}
            className="rounded-lg border border-white/15 bg-black/30 px-3 py-2 font-mono text-slate-100 focus:outline-none focus-visible:ring-2 focus-visible:ring-cyan-300"
          />
        </label>
        <button type="submit" disabled={!value.trim()} className="self-end rounded-xl bg-cyan-300 px-4 py-1.5 font-semibold text-[#07060d] hover:bg-white disabled:opacity-50 focus:outline-none focus-visible:ring-2 focus-visible:ring-white">
          Open the dashboard
        </button>
      </form>
    </div>
  );
}
