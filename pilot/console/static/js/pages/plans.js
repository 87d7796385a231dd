// Plans: schedule, next run (in the schedule's zone and the viewer's), last run; run now,
// pause/resume, edit, delete; dry run and draft where the API offers them.

import { api } from "../api.js";
import { badge, code, confirmDialog, h, messages, mount } from "../dom.js";
import { absolute, viewerZone } from "../time.js";
import { empty, header, table, when } from "../ui.js";

const LAST_RUN_CONCURRENCY = 4;

export async function render(root, { features, signal, go }) {
  const notes = messages();
  const list = h("div", { class: "plans-list", "aria-busy": "true" });
  const draft = features.has("POST", "/api/plans/draft")
    ? h("a", { class: "button secondary", href: "#/plans/new?draft=1" }, "Draft from a prompt")
    : null;
  mount(root, header("Plans", draft, h("a", { class: "button", href: "#/plans/new", id: "new-plan" }, "New plan")), notes.el, list);
  const reload = () => render(root, { features, signal, go });
  let plans;
  let jobs;
  try {
    [plans, jobs] = await Promise.all([
      api("GET", "/api/plans", { query: { limit: 500 }, signal }).then((d) => d.plans),
      api("GET", "/api/scheduler/jobs", { signal }).then((d) => d.jobs).catch(() => []),
    ]);
  } catch (err) {
    if (err.name !== "AbortError") notes.error(err);
    return;
  }
  list.setAttribute("aria-busy", "false");
  if (!plans.length) {
    mount(
      list,
      empty(
        "No plans yet.",
        "A plan is a list of steps (an LLM call, a webhook, a transform) that runs on demand or on a schedule. ",
        h("a", { href: "#/plans/new" }, "Create your first plan"),
        " from the example JSON.",
      ),
    );
    return;
  }
  const jobByPlan = new Map(jobs.map((j) => [j.plan_id, j]));
  const lastRuns = new Map();
  const columns = [
    { label: "Plan", cell: (p) => h("a", { href: `#/plans/${p.id}/edit` }, p.name) },
    { label: "Steps", cell: (p) => String(p.steps.length), class: "num" },
    { label: "Schedule", cell: (p) => schedule(p) },
    { label: "Next run", cell: (p) => nextRun(p, jobByPlan.get(p.id)) },
    { label: "Last run", cell: (p) => h("span", { class: "last-run", "data-plan-id": p.id }, lastRuns.has(p.id) ? lastRun(lastRuns.get(p.id)) : "…") },
    { label: "Actions", cell: (p) => actions(p, { features, notes, go, reload }), class: "row-actions" },
  ];
  mount(list, table(columns, plans, { caption: "Your plans", rowAttrs: (p) => ({ "data-plan-id": p.id }) }));
  fillLastRuns(list, plans, signal);
}

function schedule(plan) {
  const s = plan.schedule;
  if (!s) return h("span", { class: "muted" }, "manual only");
  const text = s.cron ? `cron ${s.cron} (${s.timezone || plan.timezone})` : `every ${interval(s.interval_seconds)}`;
  return [h("code", {}, text), plan.enabled ? null : [" ", badge("paused")]];
}

function interval(seconds) {
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function nextRun(plan, job) {
  if (!plan.schedule) return h("span", { class: "muted" }, "—");
  if (!plan.enabled || (job && job.paused)) return h("span", { class: "muted" }, "paused");
  if (!job || !job.next_run_time) return h("span", { class: "muted" }, "not scheduled");
  const zone = plan.schedule.timezone || plan.timezone || "UTC";
  const mine = viewerZone();
  return h(
    "span",
    { class: "next-run" },
    when(job.next_run_time, zone),
    zone !== mine ? h("span", { class: "abs" }, `${absolute(job.next_run_time, mine)} (your time)`) : null,
  );
}

function lastRun(run) {
  if (!run) return h("span", { class: "muted" }, "never run");
  return [h("a", { href: `#/runs/${run.id}` }, badge(run.status)), " ", when(run.created_at)];
}

async function fillLastRuns(list, plans, signal) {
  // One small request per plan, a few at a time; a failure leaves that cell as "unknown".
  const queue = [...plans];
  const worker = async () => {
    while (queue.length && !signal.aborted) {
      const plan = queue.shift();
      const cell = list.querySelector(`.last-run[data-plan-id="${plan.id}"]`);
      try {
        const data = await api("GET", "/api/runs", { query: { plan_id: plan.id, limit: 1 }, signal });
        if (cell) mount(cell, lastRun(data.runs[0]));
      } catch (err) {
        if (err.name === "AbortError") return;
        if (cell) mount(cell, h("span", { class: "muted", title: err.words || "" }, "unknown"));
      }
    }
  };
  await Promise.all(Array.from({ length: LAST_RUN_CONCURRENCY }, worker));
}

function actions(plan, { features, notes, go, reload }) {
  const act = (label, fn, attrs = {}) => {
    const button = h("button", { type: "button", class: "small", ...attrs }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await fn();
      } catch (err) {
        notes.error(err);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  };
  const runNow = act("Run now", async () => {
    const run = await api("POST", `/api/plans/${plan.id}/run`, { body: {} });
    go(`/runs/${run.id}`);
  }, { "aria-label": `Run ${plan.name} now` });
  const dry = features.hasQuery("POST", "/api/plans/{plan_id}/run", "dry_run")
    ? act("Dry run", async () => {
        const result = await api("POST", `/api/plans/${plan.id}/run`, { query: { dry_run: "true" }, body: {} });
        await showDryRun(plan, result);
      }, { class: "small secondary", "aria-label": `Dry run ${plan.name}` })
    : null;
  const toggle = plan.schedule
    ? act(plan.enabled ? "Pause" : "Resume", async () => {
        await api("POST", `/api/plans/${plan.id}/${plan.enabled ? "pause" : "resume"}`, { body: {} });
        notes.info(`${plan.name}: schedule ${plan.enabled ? "paused" : "resumed"}.`);
        await reload();
      }, { class: "small secondary", "aria-label": `${plan.enabled ? "Pause" : "Resume"} the schedule of ${plan.name}` })
    : null;
  const edit = h("a", { class: "button small secondary", href: `#/plans/${plan.id}/edit`, "aria-label": `Edit ${plan.name}` }, "Edit");
  const remove = act("Delete", async () => {
    const ok = await confirmDialog({
      title: `Delete plan “${plan.name}”?`,
      body: "Its schedule stops and its runs are deleted; execution logs are kept. This cannot be undone.",
      confirm: "Delete plan",
      danger: true,
    });
    if (!ok) return;
    await api("DELETE", `/api/plans/${plan.id}`);
    notes.info(`Deleted ${plan.name}.`);
    await reload();
  }, { class: "small danger", "aria-label": `Delete ${plan.name}` });
  return h("div", { class: "buttons" }, runNow, dry, toggle, edit, remove);
}

function showDryRun(plan, result) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "wide dry-run", "aria-labelledby": "dry-run-title" },
      h("h2", { id: "dry-run-title" }, `Dry run of ${plan.name}`),
      h(
        "p",
        { class: "help" },
        "Nothing was sent and nothing was recorded: steps without side effects (logic) ran; the others show the params they would send.",
      ),
      dryRunReport(result),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: () => dialog.close() }, "Close")),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

const DRY_WORDS = {
  success: "ran (no side effects)",
  error: "failed",
  would_run: "would run",
  skipped: "skipped",
  unresolved: "depends on a step not run",
};

/** A dry run's answer ({status, error, steps: [...]}) as one card per step, values as text. */
export function dryRunReport(result) {
  const steps = (result && result.steps) || [];
  return h(
    "div",
    { class: "dry-report", "data-status": result && result.status },
    h("p", {}, "Outcome: ", badge(result.status), result.error ? [" ", h("span", { class: "error-text" }, result.error)] : null),
    steps.length
      ? h(
          "ol",
          { class: "step-list" },
          steps.map((step) =>
            h(
              "li",
              { class: "card step", "data-step-index": step.index, "data-dry-status": step.status },
              h(
                "div",
                { class: "step-head" },
                h("h3", {}, `${step.index + 1}. `, step.id || `step ${step.index + 1}`),
                h("span", { class: "muted" }, `${step.provider}.${step.action}`),
                badge(step.status),
                h("span", { class: "muted" }, DRY_WORDS[step.status] || ""),
              ),
              step.reason ? h("p", { class: "muted" }, step.reason) : null,
              step.missing_credentials
                ? h("p", { class: "notice error" }, "Missing credentials: ", step.missing_credentials.join(", "), ". Add them on the Credentials page.")
                : null,
              step.credentials_unreadable ? h("p", { class: "notice error" }, step.credentials_unreadable) : null,
              step.error ? h("div", { class: "step-error" }, h("strong", {}, step.error.code || "error"), ": ", h("span", { class: "error-text" }, step.error.message || "")) : null,
              step.params !== undefined ? h("div", { class: "io" }, h("h4", {}, "Params (rendered)"), code(step.params, `Step ${step.index + 1} params`)) : null,
              step.result && step.result.data !== undefined
                ? h("div", { class: "io output" }, h("h4", {}, "Output"), code(step.result.data, `Step ${step.index + 1} output`))
                : null,
            ),
          ),
        )
      : h("p", { class: "muted" }, "The plan has no steps."),
  );
}
