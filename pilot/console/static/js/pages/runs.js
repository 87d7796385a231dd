// Runs: every plan's runs, newest first, live (polling), filtered by plan, status and trigger.
// (Run events are per run: the run page follows them; this list polls.)

import { api } from "../api.js";
import { badge, h, messages, mount } from "../dom.js";
import { poll } from "../live.js";
import { between } from "../time.js";
import { empty, header, select, table, when } from "../ui.js";

const STATUSES = ["queued", "running", "success", "error", "interrupted", "skipped"];
const TRIGGERS = ["manual", "schedule", "api", "replay"];
const PAGE = 50;
const EVERY_MS = 3000;

export async function render(root, { query, features, signal, go }) {
  // The filters' values as this Pilot documents them (a newer one may add a trigger, e.g. replay).
  const statuses = features.queryEnum("GET", "/api/runs", "status", STATUSES);
  const triggers = features.queryEnum("GET", "/api/runs", "trigger", TRIGGERS);
  const filters = {
    plan_id: query.get("plan_id") || "",
    status: query.get("status") || "",
    trigger: query.get("trigger") || "",
    before: query.get("before") || "",
  };
  const notes = messages();
  const list = h("div", { class: "runs-list", "aria-busy": "true" });
  const liveNote = h("p", { class: "live muted", id: "live-note" });
  const refilter = (name) => (event) => go("/runs", { ...filters, before: "", [name]: event.target.value });

  const planOptions = [["", "All plans"]];
  const form = h(
    "form",
    { class: "filters", onsubmit: (e) => e.preventDefault(), "aria-label": "Filter runs" },
    select("filter-plan", "Plan", planOptions, filters.plan_id, refilter("plan_id")),
    select("filter-status", "Status", [["", "Any status"], ...statuses.map((s) => [s, s])], filters.status, refilter("status")),
    select("filter-trigger", "Trigger", [["", "Any trigger"], ...triggers.map((t) => [t, t])], filters.trigger, refilter("trigger")),
  );
  mount(root, header("Runs", h("a", { class: "button secondary", href: "#/plans" }, "Plans")), notes.el, form, liveNote, list);

  api("GET", "/api/plans", { query: { limit: 500 }, signal })
    .then((data) => {
      const select = form.querySelector("#filter-plan");
      for (const plan of data.plans) {
        select.append(h("option", { value: plan.id, selected: String(plan.id) === filters.plan_id }, `${plan.name} (#${plan.id})`));
      }
    })
    .catch(() => {}); // the list still works without names in the filter

  const filtered = filters.plan_id || filters.status || filters.trigger;
  const load = async () => {
    const data = await api("GET", "/api/runs", { query: { ...filters, limit: PAGE }, signal });
    list.setAttribute("aria-busy", "false");
    notes.clear();
    showRuns(list, data, filters, filtered, go);
    liveNote.textContent = filters.before
      ? "Showing older runs: not updated live."
      : `Live: updated every ${EVERY_MS / 1000} s (last at ${new Date().toLocaleTimeString()}).`;
  };
  try {
    await load();
  } catch (err) {
    if (err.name === "AbortError") return;
    notes.error(err);
  }
  if (!filters.before) poll(load, EVERY_MS, signal, (err) => notes.error(err));
}

function showRuns(list, data, filters, filtered, go) {
  if (!data.runs.length) {
    mount(
      list,
      filtered || filters.before
        ? empty("No runs match these filters.", h("a", { href: "#/runs" }, "Show all runs"), ".")
        : empty(
            "No runs yet.",
            "Open ",
            h("a", { href: "#/plans" }, "Plans"),
            ", create a plan and press Run now; its runs appear here as they happen.",
          ),
    );
    return;
  }
  const columns = [
    { label: "Run", cell: (r) => h("a", { href: `#/runs/${r.id}` }, `#${r.id}`) },
    { label: "Plan", cell: (r) => (r.plan_name === null ? `plan #${r.plan_id}` : r.plan_name) },
    { label: "Status", cell: (r) => [badge(r.status), r.error ? h("span", { class: "row-error" }, r.error) : null] },
    { label: "Trigger", cell: (r) => r.trigger },
    { label: "Created", cell: (r) => when(r.created_at) },
    { label: "Duration", cell: (r) => (r.finished_at ? between(r.started_at || r.created_at, r.finished_at) : "—") },
  ];
  const older = data.next_before
    ? h("button", { type: "button", class: "secondary", onclick: () => go("/runs", { ...filters, before: data.next_before }) }, "Older runs")
    : null;
  const newest = filters.before ? h("button", { type: "button", class: "secondary", onclick: () => go("/runs", { ...filters, before: "" }) }, "Newest runs") : null;
  mount(
    list,
    table(columns, data.runs, { caption: "Runs, newest first", rowAttrs: (r) => ({ "data-run-id": r.id }) }),
    h("div", { class: "pager" }, newest, older),
  );
}
