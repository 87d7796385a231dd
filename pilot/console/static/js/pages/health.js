// Health: per provider success rate, p95 latency and hourly errors over 24 h / 7 d / 30 d as
// charts, cost per day where the API records it, and the scheduler's state.

import { api } from "../api.js";
import { badge, h, messages, mount } from "../dom.js";
import { bars, lines } from "../charts.js";
import { duration } from "../time.js";
import { empty, header, usd, when } from "../ui.js";

const WINDOWS = [
  ["24h", 24, "24 hours"],
  ["7d", 24 * 7, "7 days"],
  ["30d", 24 * 30, "30 days"],
];

export async function render(root, { query, features, signal, go }) {
  const chosen = WINDOWS.find(([key]) => key === query.get("window")) || WINDOWS[0];
  const [key, hours, words] = chosen;
  const notes = messages();
  const picker = h(
    "div",
    { class: "segmented", role: "group", "aria-label": "Time window" },
    WINDOWS.map(([k, , w]) =>
      h("button", { type: "button", class: "secondary", "aria-pressed": String(k === key), onclick: () => go("/health", { window: k }) }, w),
    ),
  );
  const scheduler = h("section", { class: "card", "aria-labelledby": "sched-title" }, h("h2", { id: "sched-title" }, "Scheduler"));
  const charts = h("section", { class: "charts", "aria-busy": "true", "aria-label": `Providers over the last ${words}` });
  mount(root, header("Health", picker), notes.el, scheduler, charts);
  try {
    const [healthBody, jobs, providers, errors, costs] = await Promise.all([
      fetch("/api/health", { credentials: "omit", cache: "no-store", signal }).then((r) => r.json()),
      api("GET", "/api/scheduler/jobs", { signal }).then((d) => d.jobs).catch(() => null),
      api("GET", "/api/metrics/providers", { query: { hours }, signal }),
      api("GET", "/api/metrics/errors", { query: { hours }, signal }),
      features.has("GET", "/api/metrics/costs")
        ? api("GET", "/api/metrics/costs", { query: { hours, group_by: "day" }, signal }).catch(() => null)
        : null,
    ]);
    showScheduler(scheduler, healthBody, jobs);
    charts.setAttribute("aria-busy", "false");
    showCharts(charts, providers.providers, errors.trends, costs, hours, words, signal);
  } catch (err) {
    if (err.name !== "AbortError") notes.error(err);
  }
}

function showScheduler(box, health, jobs) {
  const state = health.scheduler || {};
  const due = (jobs || []).filter((j) => j.next_run_time).sort((a, b) => a.next_run_time.localeCompare(b.next_run_time));
  const rows = [
    ["Pilot", badge(health.status === "healthy" ? "ok" : "down")],
    ["Database", badge((health.database && health.database.status) || "unknown")],
    ["Scheduler in this process", badge(state.status || "unknown")],
    state.jobs !== undefined ? ["Schedules loaded (all users)", String(state.jobs)] : null,
    state.started_at ? ["Running since", when(state.started_at)] : null,
    jobs ? ["Your scheduled plans", `${jobs.length} (${jobs.filter((j) => j.paused).length} paused)`] : null,
    due.length ? ["Next firing", [h("a", { href: `#/plans/${due[0].plan_id}/edit` }, due[0].name || `plan #${due[0].plan_id}`), " ", when(due[0].next_run_time)]] : null,
  ].filter(Boolean);
  box.append(
    h("dl", { class: "facts-inline" }, rows.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    state.status === "disabled"
      ? h("p", { class: "help" }, "This process does not fire schedules (SCHEDULER_ENABLED=false or not a serving process); another Pilot process may.")
      : null,
  );
}

function hourBuckets(hours) {
  const now = new Date();
  now.setUTCMinutes(0, 0, 0);
  const last = Math.floor(now.getTime() / 1000);
  return Array.from({ length: hours }, (_, i) => last - (hours - 1 - i) * 3600);
}

function showCharts(box, providers, trends, costs, hours, words, signal) {
  if (!providers.length) {
    mount(
      box,
      empty(`No steps ran in the last ${words}.`, "Run a plan (", h("a", { href: "#/plans" }, "Plans"), " → Run now) and its providers' health appears here."),
    );
    return;
  }
  const names = providers.map((p) => p.provider).sort();
  const byName = new Map(providers.map((p) => [p.provider, p]));
  const xs = hourBuckets(hours);
  const index = new Map(xs.map((x, i) => [x, i]));
  const errorSeries = names.map((name) => ({ label: name, values: xs.map(() => 0) }));
  for (const row of trends) {
    const slot = index.get(Math.floor(new Date(row.hour).getTime() / 1000));
    const series = errorSeries[names.indexOf(row.provider)];
    if (slot !== undefined && series) series.values[slot] = row.errors;
  }
  const summary = providers.reduce((a, p) => ({ total: a.total + p.total_executions, failed: a.failed + p.failed }), { total: 0, failed: 0 });
  mount(
    box,
    h("p", { class: "help" }, `${summary.total} steps in the last ${words}, ${summary.failed} failed.`),
    h(
      "div",
      { class: "chart-grid" },
      bars({
        title: `Success rate by provider (last ${words})`,
        labels: names,
        values: names.map((n) => byName.get(n).success_rate),
        unit: "%",
        max: 100,
        format: (v) => `${Math.round(v * 10) / 10}%`,
        signal,
      }),
      bars({
        title: `p95 latency by provider (last ${words})`,
        labels: names,
        values: names.map((n) => byName.get(n).p95_latency_ms),
        unit: "ms",
        format: (v) => (v < 10 && !Number.isInteger(v) ? `${v.toFixed(1)} ms` : duration(v)),
        signal,
      }),
    ),
    lines({ title: `Errors per hour (last ${words})`, xs, series: errorSeries, unit: "errors", signal }),
    costs ? costChart(costs, words, signal) : null,
  );
}

function costChart(costs, words, signal) {
  // /api/metrics/costs?group_by=day (issue 11): rows of {day|key, cost_usd}; drawn only when it answers that way.
  const rows = costs.costs || costs.rows || costs.groups || [];
  const days = rows.filter((r) => typeof r.cost_usd === "number").map((r) => [String(r.day || r.key || r.group), r.cost_usd]);
  if (!days.length) return null;
  return bars({ title: `Cost per day (last ${words})`, labels: days.map((d) => d[0].slice(0, 10)), values: days.map((d) => d[1]), unit: "USD", format: usd, signal });
}
