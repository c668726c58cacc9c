import type { ReactNode } from "react";

/** A glass card. */
export function Panel(props: { title?: ReactNode; icon?: ReactNode; actions?: ReactNode; className?: string; children: ReactNode; labelledBy?: string }) {
  const id = props.labelledBy;
  return (
    <section
      aria-labelledby={id}
      className={`relative min-w-0 rounded-2xl border border-white/10 bg-[#100e1c]/85 p-4 sm:p-5 ${props.className ?? ""}`}
    >
      {props.title !== undefined && (
        <header className="mb-3 flex items-center justify-between gap-2">
          <h2 id={id} className="flex items-center gap-2 font-display text-sm font-semibold uppercase tracking-[0.14em] text-slate-300">
            {props.icon}
            {props.title}
          </h2>
          {props.actions}
        </header>
      )}
      {props.children}
    </section>
  );
}
