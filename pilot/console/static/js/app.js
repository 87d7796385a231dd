// The console's shell: learn the auth mode, sign in, route #/… to a page, sign out.

import { onUnauthorized, session, signOut } from "./api.js";
import { h, mount } from "./dom.js";
import { loadFeatures } from "./features.js";
import * as credentials from "./pages/credentials.js";
import * as health from "./pages/health.js";
import * as planEdit from "./pages/plan_edit.js";
import * as plans from "./pages/plans.js";
import * as run from "./pages/run.js";
import * as runs from "./pages/runs.js";
import * as signin from "./pages/signin.js";

const ROUTES = [
  [/^\/runs$/, runs, "runs"],
  [/^\/runs\/(\d+)$/, run, "runs"],
  [/^\/plans$/, plans, "plans"],
  [/^\/plans\/new$/, planEdit, "plans"],
  [/^\/plans\/(\d+)\/edit$/, planEdit, "plans"],
  [/^\/credentials$/, credentials, "credentials"],
  [/^\/health$/, health, "health"],
];

const main = document.getElementById("main");
let current = null; // {controller} of the page on screen
let authMode = null;

/** The route part and the query of the hash: "#/runs?status=error" → ["/runs", URLSearchParams]. */
export function location() {
  const raw = window.location.hash.replace(/^#/, "") || "/runs";
  const [path, query = ""] = raw.split("?");
  return [path, new URLSearchParams(query)];
}

/** Go to a route ("/runs/3", or with a query object). */
export function go(path, query) {
  const search = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v != null)).toString() : "";
  const target = `#${path}${search ? `?${search}` : ""}`;
  if (window.location.hash === target) render();
  else window.location.hash = target;
}

function showIdentity(who) {
  const nav = document.getElementById("nav");
  const box = document.getElementById("who");
  nav.hidden = !who;
  box.hidden = !who;
  if (!who) return;
  document.getElementById("who-name").textContent = who.label || who.user || "signed in";
}

function stopPage() {
  if (current) current.controller.abort();
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close(); // a dialog belongs to the page it opened on
  current = null;
}

async function render() {
  stopPage();
  const controller = new AbortController();
  current = { controller };
  const who = session();
  showIdentity(who && who.mode === authMode ? who : null);
  if (!who || who.mode !== authMode) {
    signin.render(main, { mode: authMode, signal: controller.signal, done: () => go("/runs") });
    return;
  }
  const [path, query] = location();
  const route = ROUTES.find(([pattern]) => pattern.test(path));
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (route && link.dataset.nav === route[2]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!route) {
    mount(main, h("h1", { tabindex: "-1" }, "Page not found"), h("p", {}, "There is no such page. ", h("a", { href: "#/runs" }, "Go to Runs.")));
    return;
  }
  const [pattern, page] = route;
  const params = path.match(pattern).slice(1);
  const features = await loadFeatures();
  if (controller.signal.aborted) return;
  try {
    await page.render(main, { params, query, features, signal: controller.signal, go });
  } catch (err) {
    if (err && err.name === "AbortError") return;
    throw err;
  }
}

function focusHeading() {
  // After a navigation, put keyboard and screen reader focus on the new page's heading.
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: false });
  }
}

async function start() {
  document.getElementById("skip").addEventListener("click", (event) => {
    event.preventDefault(); // the hash is the route: focus the content instead of following #main
    main.focus();
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    signOut();
    go("/runs");
    render();
  });
  onUnauthorized((error) => {
    signOut();
    signin.pendingMessage(`${error.words} Sign in again.`);
    render();
  });
  try {
    // Read even a 503 (database down): its body still says how to sign in.
    const response = await fetch("/api/health", { credentials: "omit", cache: "no-store" });
    const health = await response.json();
    authMode = health.auth_mode || "dev";
  } catch (err) {
    mount(
      main,
      h("h1", {}, "Pilot is not answering"),
      h("p", { class: "notice error" }, `The console could not reach /api/health (${err.message}).`),
      h("p", {}, "Reload this page when the server is up."),
    );
    return;
  }
  window.addEventListener("hashchange", async () => {
    await render();
    focusHeading();
  });
  await render();
}

start();
