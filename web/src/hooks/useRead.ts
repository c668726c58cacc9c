import { useEffect, useRef, useState } from "react";

/**
 * What `read` answers, asked `delay` ms after `key` last changed, so that a cursor being dragged
 * or zoom steps in a row ask once; a newer key aborts the read before it. With `read` null
 * nothing is asked and the answer is null. The last answer stays until the next one comes.
 */
export function useRead<T>(key: string, read: ((signal: AbortSignal) => Promise<T>) | null, delay: number): { data: T | null; error: string | null } {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const latest = useRef(read);
  latest.current = read;
  useEffect(() => {
    const r = latest.current;
    if (!r) {
      setData(null);
      return;
    }
    const ctl = new AbortController();
    const timer = setTimeout(() => {
      r(ctl.signal).then(
        (x) => {
          setError(null);
          setData(x);
        },
        (e: Error) => ctl.signal.aborted || setError(e.message),
      );
    }, delay);
    return () => {
      clearTimeout(timer);
      ctl.abort();
    };
  }, [key, delay]);
  return { data, error };
}
