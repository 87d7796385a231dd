// Keeping a page current. Today by polling; where the API offers run events (SSE), a page can
// switch to them (features.has("GET", "/api/runs/{run_id}/events")) and keep this as fallback.

/** Wait ``ms`` or until aborted (resolves false when aborted). */
export function wait(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const timer = setTimeout(() => resolve(!signal.aborted), ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve(false);
    }, { once: true });
  });
}

function visible(signal) {
  if (document.visibilityState === "visible") return Promise.resolve(true);
  return new Promise((resolve) => {
    const check = () => {
      if (document.visibilityState === "visible" || signal.aborted) {
        document.removeEventListener("visibilitychange", check);
        resolve(!signal.aborted);
      }
    };
    document.addEventListener("visibilitychange", check);
    signal.addEventListener("abort", check, { once: true });
  });
}

/**
 * Call ``refresh()`` every ``ms`` while the tab is visible, until ``signal`` aborts or
 * ``refresh`` resolves false. A failed refresh is reported to ``onError`` and retried later.
 */
export async function poll(refresh, ms, signal, onError) {
  while (!signal.aborted) {
    if (!(await wait(ms, signal)) || !(await visible(signal))) return;
    try {
      if ((await refresh()) === false) return;
    } catch (err) {
      if (err && err.name === "AbortError") return;
      if (onError) onError(err);
    }
  }
}
