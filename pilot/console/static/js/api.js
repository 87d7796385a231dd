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
export async function api(method, path, { query, body, signal, as } = {}) {
  const who = as || session();
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (who && who.mode === "token" && who.token) headers.Authorization = `Bearer ${who.token}`;
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
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(response.status, error.code || "http_error", error.message || response.statusText, error.details);
    if (response.status === 401 && !as) for (const fn of listeners) fn(failure);
    throw failure;
  }
  return data;
}
