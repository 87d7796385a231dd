// The one way the console talks to Pilot: same origin, JSON, identity per auth mode.
// Token mode: the token lives in sessionStorage and goes only in the Authorization header
// (never in a URL, never in a cookie). Dev mode: user_id goes in the query string, as the
// API documents.

const KEY = "pilot.console.session";
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** The error in words for a person. */
  get words() {
    if (this.status === 0) return `Pilot did not answer (${this.message}). Is the server running?`;
    const lead = {
      400: "Pilot refused the request",
      401: "Pilot did not accept your sign-in",
      403: "Pilot refused: not allowed for this user",
      404: "Not found",
      409: "Conflict",
      413: "The request is too large",
      415: "Pilot expected JSON",
      422: "Pilot could not use the request",
      429: "Too many requests: try again shortly",
      502: "An upstream service failed",
      503: "Pilot is unavailable right now",
    }[this.status] || `Pilot answered ${this.status}`;
    return this.message ? `${lead}: ${this.message}` : `${lead}.`;
  }
}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

export function signIn(value) {
  sessionStorage.setItem(KEY, JSON.stringify(value));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

/** ``fn(error)`` is called when Pilot answers 401 to a signed-in request (the token stopped working). */
export function onUnauthorized(fn) {
  listeners.add(fn);
}

function urlFor(path, query, who) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  if (who && who.mode === "dev" && who.user) url.searchParams.set("user_id", who.user);
  return url;
}

/**
 * Call the API: ``api("GET", "/api/plans", {query: {limit: 50}})``, ``api("POST", path, {body})``.
 * Resolves to the parsed JSON (null for 204); rejects with an ApiError that has words for people.
 * ``as`` overrides the stored session (used to check a sign-in before keeping it).
 */
function headersFor(who, accept, extra = {}) {
  const headers = { Accept: accept, ...extra };
  if (who && who.mode === "token" && who.token) headers.Authorization = `Bearer ${who.token}`;
  return headers;
}

async function failure(response, as) {
  const text = await response.text().catch(() => "");
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  const error = (data && data.error) || {};
  const failed = new ApiError(response.status, error.code || "http_error", error.message || response.statusText, error.details);
  if (response.status === 401 && !as) for (const fn of listeners) fn(failed);
  return failed;
}

export async function api(method, path, { query, body, signal, as } = {}) {
  const who = as || session();
  const headers = headersFor(who, "application/json", body !== undefined ? { "Content-Type": "application/json" } : {});
  let response;
  try {
    response = await fetch(urlFor(path, query, who), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      redirect: "error",
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", err.message || "network error");
  }
  if (!response.ok) throw await failure(response, as);
  if (response.status === 204) return null;
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/**
 * Read a Server-Sent Events stream with fetch (EventSource cannot send the Authorization
 * header, and a token never goes in a URL): ``onEvent({event, data, id})`` for each event,
 * ``data`` parsed as JSON when it is JSON. Resolves when the server ends the stream;
 * rejects with an ApiError when it answers anything but ``200 text/event-stream``.
 * ``lastEventId`` resumes after that event (the ``Last-Event-ID`` header).
 */
export async function stream(path, { query, signal, onEvent, lastEventId } = {}) {
  const who = session();
  const headers = headersFor(who, "text/event-stream", lastEventId ? { "Last-Event-ID": String(lastEventId) } : {});
  let response;
  try {
    response = await fetch(urlFor(path, query, who), { method: "GET", headers, credentials: "omit", cache: "no-store", redirect: "error", signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", err.message || "network error");
  }
  if (!response.ok) throw await failure(response);
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream") || !response.body) {
    throw new ApiError(response.status, "not_a_stream", "the server did not answer with an event stream");
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const parsed = parseEvent(block);
      if (parsed.id !== null) id = parsed.id;
      if (parsed.data !== null) onEvent({ event: parsed.event, data: parsed.data, id });
    }
  }
}

/** One event block's fields (WHATWG text/event-stream): comments skipped, data lines joined. */
function parseEvent(block) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "event") event = value;
    else if (name === "data") data.push(value);
    else if (name === "id") id = value;
  }
  if (!data.length) return { event, id, data: null };
  const text = data.join("\n");
  try {
    return { event, id, data: JSON.parse(text) };
  } catch {
    return { event, id, data: text };
  }
}
