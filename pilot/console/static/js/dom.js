// Building the page without HTML strings: every value becomes a text node or an attribute,
// never markup. The console's CSP (Trusted Types with no policy) makes every HTML sink throw anyway.

const SAFE_HREF = /^(#|\/(?!\/))/; // in-app routes and same-origin paths only

/**
 * h("a", {href: "#/runs", class: "x", onclick: fn}, "text", child, [more])
 * Attributes are set with setAttribute (href checked), event handlers must be functions,
 * children that are strings or numbers become text nodes; null, undefined and false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${name} must be a function`);
      el.addEventListener(name.slice(2), value);
    } else if (name === "style" || name === "srcdoc" || /html$/i.test(name)) {
      throw new TypeError(`${name} is not allowed`);
    } else if (name === "href" && !SAFE_HREF.test(String(value))) {
      throw new TypeError("links go to in-app routes or same-origin paths only");
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

/** Append children (nested arrays allowed) as nodes or text. */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace everything inside ``el``. */
export function mount(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** Pretty JSON for display (as text); strings are shown as they are. */
export function pretty(value) {
  if (typeof value === "string") return value;
  if (value === undefined) return "";
  return JSON.stringify(value, null, 2);
}

/** A <pre> with a value as text; long values scroll inside it. */
export function code(value, label) {
  return h("pre", { class: "code", tabindex: "0", "aria-label": label || null }, pretty(value));
}

/** A status word as a coloured badge (colour from the word, the word itself as text). */
export function badge(status) {
  const known = ["success", "error", "running", "queued", "skipped", "interrupted", "paused", "active", "ok", "down", "would_run", "unresolved", "closed", "open", "half_open", "exceeded", "warn"];
  const kind = known.includes(status) ? status : "other";
  return h("span", { class: `badge badge-${kind}`, "data-status": String(status) }, String(status));
}

/** A confirmation dialog (<dialog>, keyboard usable); resolves true when confirmed. */
export function confirmDialog({ title, body, confirm = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      h("p", {}, body),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", value: "cancel", class: "secondary", onclick: () => dialog.close("cancel") }, "Cancel"),
        h("button", { type: "button", value: "ok", class: danger ? "danger" : "", onclick: () => dialog.close("ok") }, confirm),
      ),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "ok");
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button.secondary").focus();
  });
}

let flash = null;

/** A notice for the next page shown (e.g. "Created plan X" after going back to the list). */
export function setFlash(text) {
  flash = text;
}

/** A message area for one page: errors in words, notices, cleared on demand. */
export function messages() {
  const box = h("div", { class: "messages", role: "status", "aria-live": "polite" });
  if (flash) box.append(h("p", { class: "notice info" }, flash));
  flash = null;
  return {
    el: box,
    error(err) {
      mount(box, h("p", { class: "notice error", role: "alert" }, describeError(err)));
    },
    info(text, ...extra) {
      mount(box, h("p", { class: "notice info" }, text, ...extra));
    },
    clear() {
      box.replaceChildren();
    },
  };
}

/** Words for an error from the API or the network. */
export function describeError(err) {
  if (err && err.name === "ApiError") return err.words;
  if (err && err.name === "AbortError") return "Cancelled.";
  return `Something went wrong in the console: ${err && err.message ? err.message : err}`;
}
