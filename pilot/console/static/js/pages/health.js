// Health: per provider success rate, p95 latency and hourly errors over 24 h / 7 d / 30 d as
// charts, cost per day where the API records it, and the scheduler's state.

import { api } from "../api.js";
import { badge, h, messages, mount } from "../dom.js";
import { bars, lines } from "../charts.js";
import { duration } from "../time.js";
import { empty, header, table, usd, when } from "../ui.js";

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
  const budget = features.has("GET", "/api/budget")
    ? h("section", { class: "card budget", "aria-labelledby": "budget-title" }, h("h2", { id: "budget-title" }, "Budget"))
    : null;
  const breakers = h("section", { class: "card breakers", "aria-labelledby": "breakers-title", hidden: true }, h("h2", { id: "breakers-title" }, "Circuit breakers"));
  mount(root, header("Health", picker), notes.el, scheduler, budget, charts, breakers);
  if (budget) showBudget(budget, signal);
  showBreakers(breakers, signal);
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
    costs ? costChart(costs, hours, words, signal) : null,
  );
}

function costChart(costs, hours, words, signal) {
  // GET /api/metrics/costs?group_by=day: {groups: [{day: "YYYY-MM-DD", cost_usd, input_tokens, output_tokens, steps}], total}.
  const groups = (costs.groups || []).filter((g) => typeof g.day === "string");
  const byDay = new Map(groups.map((g) => [g.day, Number(g.cost_usd) || 0]));
  const days = [];
  const first = new Date(Date.now() - hours * 3600 * 1000);
  for (let d = Date.UTC(first.getUTCFullYear(), first.getUTCMonth(), first.getUTCDate()); d <= Date.now(); d += 86400000) {
    days.push(new Date(d).toISOString().slice(0, 10));
  }
  for (const day of byDay.keys()) if (!days.includes(day)) days.push(day);
  days.sort();
  const total = costs.total || {};
  const title = `Cost per day, USD (last ${words})`;
  if (!groups.length) {
    return h(
      "figure",
      { class: "chart", "data-chart": title, "data-points": "0" },
      h("figcaption", {}, title),
      empty("No model calls recorded in this window.", "LLM steps (openai, groq, anthropic) record their tokens and cost; other steps cost nothing here."),
    );
  }
  return h(
    "div",
    { class: "cost" },
    bars({ title, labels: days.map((d) => d.slice(5)), values: days.map((d) => byDay.get(d) ?? 0), unit: "USD", format: usd, signal }),
    h(
      "p",
      { class: "help", id: "cost-total" },
      `In all: ${usd(Number(total.cost_usd) || 0)} for ${total.input_tokens ?? 0} input and ${total.output_tokens ?? 0} output tokens in ${total.steps ?? 0} model steps`,
      total.unpriced_steps ? ` (${total.unpriced_steps} not priced: their model is not in the price table)` : "",
      ".",
    ),
  );
}

async function showBudget(box, signal) {
  // GET/PUT/DELETE /api/budget: the month's spend against the user's own budget.
  const view = h("div", { class: "budget-view" });
  const amount = h("input", { id: "budget-amount", name: "monthly_usd", type: "text", inputmode: "decimal", autocomplete: "off", size: "10" });
  const onExceed = h(
    "select",
    { id: "budget-on-exceed", name: "on_exceed" },
    h("option", { value: "refuse" }, "refuse LLM steps"),
    h("option", { value: "warn" }, "warn only"),
  );
  const save = h("button", { type: "submit" }, "Save budget");
  const remove = h("button", { type: "button", class: "secondary", hidden: true }, "Remove budget");
  const errors = messages();
  const form = h(
    "form",
    { class: "budget-form", "aria-label": "Set the monthly budget", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "budget-amount" }, "Monthly budget (USD)"), amount),
    h("div", { class: "field" }, h("label", { for: "budget-on-exceed" }, "Once it is spent"), onExceed),
    save,
    remove,
  );
  box.append(view, errors.el, form);
  const show = (data) => {
    const b = data.budget;
    mount(
      view,
      h(
        "dl",
        { class: "facts-inline" },
        h("div", {}, h("dt", {}, `Spent in ${data.month} (UTC)`), h("dd", { id: "budget-spent" }, usd(data.spent_usd))),
        h("div", {}, h("dt", {}, "Budget"), h("dd", { id: "budget-limit" }, b ? `${usd(b.monthly_usd)} a month, ${b.on_exceed}` : "none set")),
        b ? h("div", {}, h("dt", {}, "Remaining"), h("dd", { id: "budget-remaining" }, usd(data.remaining_usd))) : null,
        b ? h("div", {}, h("dt", {}, "State"), h("dd", {}, badge(data.exceeded ? "exceeded" : "ok"))) : null,
      ),
      b ? null : h("p", { class: "help" }, "No budget: model steps run whatever they cost. Set one below to refuse (or warn about) model calls once a month's spend reaches it."),
    );
    if (b) {
      amount.value = String(b.monthly_usd);
      onExceed.value = b.on_exceed;
    }
    remove.hidden = !b;
  };
  const act = async (fn) => {
    save.disabled = true;
    remove.disabled = true;
    errors.clear();
    try {
      show(await fn());
    } catch (err) {
      if (err.name !== "AbortError") errors.error(err);
    } finally {
      save.disabled = false;
      remove.disabled = false;
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = amount.value.trim();
    const number = Number(text);
    // Sent as typed when it is not a number, so Pilot's own validation message names the field.
    const monthly = text !== "" && Number.isFinite(number) ? number : text;
    act(async () => {
      const data = await api("PUT", "/api/budget", { body: { monthly_usd: monthly, on_exceed: onExceed.value } });
      errors.info("Budget saved.");
      return data;
    });
  });
  remove.addEventListener("click", () =>
    act(async () => {
      await api("DELETE", "/api/budget");
      amount.value = "";
      return api("GET", "/api/budget");
    }),
  );
  await act(() => api("GET", "/api/budget", { signal }));
}

async function showBreakers(box, signal) {
  // GET /api/providers/<name> says this process's circuit breakers per provider (issue 11).
  let described;
  try {
    const { providers } = await api("GET", "/api/providers", { signal });
    described = await Promise.all(providers.map((name) => api("GET", `/api/providers/${encodeURIComponent(name)}`, { signal })));
  } catch {
    return; // the page works without this panel
  }
  const rows = [];
  for (const provider of described) {
    const cb = provider.circuit_breakers;
    if (!cb) continue;
    for (const host of cb.hosts || []) rows.push([provider.name, host.host, host.state, host.consecutive_failures, host.retry_in_s]);
    const others = cb.other_hosts || {};
    if (others.tracked) rows.push([provider.name, `${others.tracked} other host(s)`, others.open ? "open" : others.half_open ? "half_open" : "closed", "—", null]);
  }
  if (!described.some((p) => p.circuit_breakers)) return;
  box.hidden = false;
  const enabled = described.find((p) => p.circuit_breakers).circuit_breakers;
  box.append(
    h(
      "p",
      { class: "help" },
      enabled.enabled
        ? `A host's circuit opens after ${enabled.failures} failures within ${enabled.window_seconds} s and stays open ${enabled.cooldown_seconds} s (state of this server process).`
        : "Circuit breakers are switched off on this server.",
    ),
    rows.length
      ? table(
          [
            { label: "Provider", cell: (r) => r[0] },
            { label: "Host", cell: (r) => r[1] },
            { label: "State", cell: (r) => badge(r[2]) },
            { label: "Recent failures", cell: (r) => String(r[3]) },
            { label: "Retry in", cell: (r) => (r[4] === null || r[4] === undefined ? "—" : `${r[4]} s`) },
          ],
          rows,
          { caption: "Circuit breakers", rowAttrs: (r) => ({ "data-provider": r[0] }) },
        )
      : h("p", { class: "muted" }, "No provider host is tracked yet."),
  );
}
