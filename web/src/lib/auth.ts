// The bearer token of a `vramtrace serve --token-file`: asked for when the API answers 401,
// kept for this tab in sessionStorage, sent as `Authorization: Bearer` on requests and as a
// WebSocket subprotocol (a browser cannot set headers on a WebSocket). Never in a URL: a
// query string ends up in logs.

const KEY = "vramtrace.token";
/** The subprotocol prefix the server reads (vramtrace/src/serve/ws.rs, BEARER_PROTOCOL). */
export const BEARER_PROTOCOL = "vramtrace.bearer.";
/** The token, when sessionStorage refused to keep it. */
let memory: string | null = null;

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  try {
    if (token === null) sessionStorage.removeItem(KEY);
    else sessionStorage.setItem(KEY, token);
    memory = null;
  } catch {
    // Storage refused (a private window's quota): the token lasts until the page goes.
    memory = token;
  }
}

/** The token requests carry now. */
export function current(): string | null {
  return getToken() ?? memory;
}

/** base64url of the token's UTF-8 bytes, without padding: the characters a subprotocol may hold. */
export function base64url(text: string): string {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The WebSocket subprotocols that carry the token (none without one). */
export function socketProtocols(): string[] {
  const t = current();
  return t ? [BEARER_PROTOCOL + base64url(t)] : [];
}

/** Told the token a refused request carried (null: none). */
type Listener = (sent: string | null) => void;
const listeners = new Set<Listener>();

/** Called whenever the server refuses a request for want of a valid token. */
export function onUnauthorized(l: Listener): () => void {
  listeners.add(l);
  return () => void listeners.delete(l);
}

export function unauthorized(sent: string | null): void {
  for (const l of [...listeners]) l(sent);
}
