// Calls to the taskfleet JSON API with the key the user signed in with (sessionStorage only:
// never in a URL, never logged), and a server-sent-events reader over fetch() (EventSource
// cannot send the X-Bot-Key header).

const STORE = "taskfleet.key";

/** The key of this tab's session, or null. */
export function key() {
  return sessionStorage.getItem(STORE);
}

/** Keeps `k` for this tab's session. */
export function signIn(k) {
  sessionStorage.setItem(STORE, k);
}

/** Forgets the key. */
export function signOut() {
  sessionStorage.removeItem(STORE);
}

/** An API error: the HTTP status and the server's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** `method path` with the key; resolves to {body, headers}; rejects with ApiError. */
export async function call(method, path, body) {
  const headers = { "X-Bot-Key": key() || "", Accept: "application/json" };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!r.ok) {
    const msg = (json && json.error && json.error.message) || r.statusText || "request failed";
    throw new ApiError(r.status, `${r.status}: ${msg}`);
  }
  return { body: json, headers: r.headers };
}

/** GET `path`, the JSON body only. */
export async function get(path) {
  return (await call("GET", path)).body;
}

/**
 * Reads the server-sent events of `path`, calling onEvent(type, data) for each, until
 * `signal` aborts or the server ends the stream. Resolves when the stream ends.
 */
export async function stream(path, signal, onEvent) {
  const r = await fetch(path, {
    headers: { "X-Bot-Key": key() || "", Accept: "text/event-stream" },
    signal, cache: "no-store",
  });
  if (!r.ok || !r.body) throw new ApiError(r.status, `${r.status}: the live feed was refused`);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      dispatch(block, onEvent);
    }
  }
}

/** One event block: `event:` type (default `message`) and its `data:` lines. */
function dispatch(block, onEvent) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length) onEvent(type, data.join("\n"));
}
