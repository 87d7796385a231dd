// One run: its facts, each step (status, latency, attempts, rendered input, output, error,
// tokens and cost where present), run again, and replay where the API offers it.

import { api, stream } from "../api.js";
import { badge, code, h, messages, mount } from "../dom.js";
import { poll } from "../live.js";
import { between, duration } from "../time.js";
import { cost, empty, header, tokens, usd, when } from "../ui.js";

const ACTIVE = new Set(["queued", "running"]);
const EVERY_MS = 1500;
const EVENTS = "/api/runs/{run_id}/events";
const STREAM_ATTEMPTS = 3; // reconnections (with Last-Event-ID) before falling back to polling

export async function render(root, { params, features, signal, go }) {
  const runId = params[0];
  const notes = messages();
  const body = h("div", { class: "run", "aria-busy": "true" });
  const actions = h("div", { class: "actions" });
  const liveNote = h("p", { class: "live muted", id: "live-note" });
  mount(root, header(`Run #${runId}`), notes.el, actions, liveNote, body);
  let plan; // fetched once: the step names and the plan's name
  const load = async () => {
    const run = await api("GET", `/api/runs/${runId}`, { signal });
    if (plan === undefined) {
      plan = await api("GET", `/api/plans/${run.plan_id}`, { signal }).catch((err) => {
        if (err.status === 404) return null; // the plan was deleted since
        throw err;
      });
    }
    body.setAttribute("aria-busy", "false");
    notes.clear();
    showActions(actions, run, plan, features, notes, go);
    mount(body, facts(run, plan), steps(run, plan));
    body.dataset.status = run.status;
    if (!ACTIVE.has(run.status)) liveNote.textContent = "";
    return ACTIVE.has(run.status);
  };
  let active;
  try {
    active = await load();
  } catch (err) {
    if (err.name === "AbortError") return;
    notes.error(err);
    if (err.status === 404) mount(body, empty("This run does not exist for you.", h("a", { href: "#/runs" }, "Back to all runs"), "."));
    return;
  }
  if (!active) return;
  // The run's events where the API streams them (each one reloads the run); polling otherwise,
  // or once the stream fails. load() answers whether the run is still going.
  if (features.has("GET", EVENTS) && (await follow(runId, load, signal, liveNote))) return;
  if (signal.aborted) return;
  liveNote.dataset.live = "polling";
  liveNote.textContent = `Live: checking every ${EVERY_MS / 1000} s.`;
  poll(load, EVERY_MS, signal, (err) => notes.error(err));
}

/**
 * Follow the run's event stream, reloading the run after each event (one reload at a time).
 * Resolves true when the run has finished, false when the caller should poll instead.
 */
async function follow(runId, load, signal, liveNote) {
  let lastId = null;
  let received = 0;
  let running = null;
  let again = false;
  let finished = false;
  const refresh = () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        finished = !(await load());
      } while (again && !finished);
    })().finally(() => {
      running = null;
    });
    return running;
  };
  for (let attempt = 0; attempt < STREAM_ATTEMPTS && !signal.aborted; attempt += 1) {
    const controller = new AbortController();
    const stop = () => controller.abort();
    signal.addEventListener("abort", stop, { once: true });
    liveNote.dataset.live = "events";
    liveNote.textContent = "Live: following the run's events.";
    try {
      await stream(`/api/runs/${runId}/events`, {
        signal: controller.signal,
        lastEventId: lastId,
        onEvent: (event) => {
          if (event.id !== null) lastId = event.id;
          received += 1;
          liveNote.dataset.events = String(received); // how many arrived (people see the run change; tests read this)
          refresh().then(() => {
            if (finished) controller.abort(); // the run is over: stop listening
          }, () => {});
        },
      });
    } catch (err) {
      if (err.name !== "AbortError" && err.status !== 0) return false; // no usable stream: poll
    } finally {
      signal.removeEventListener("abort", stop);
    }
    if (signal.aborted) return true;
    try {
      await refresh();
    } catch {
      return false;
    }
    if (finished) return true;
  }
  return false;
}

function showActions(box, run, plan, features, notes, go) {
  const again = h("button", { type: "button", id: "run-again" }, "Run again");
  again.addEventListener("click", async () => {
    again.disabled = true;
    try {
      const queued = await api("POST", `/api/plans/${run.plan_id}/run`, { body: { input: run.input || {} } });
      go(`/runs/${queued.id}`);
    } catch (err) {
      notes.error(err);
      again.disabled = false;
    }
  });
  const canReplay = features.has("POST", "/api/runs/{run_id}/replay") && !ACTIVE.has(run.status);
  mount(
    box,
    plan ? again : null,
    canReplay ? replayForm(run, plan, notes, go) : null,
    h("a", { class: "button secondary", href: "#/runs" }, "All runs"),
  );
}

function replayForm(run, plan, notes, go) {
  // POST /api/runs/<id>/replay {from_step?}: earlier steps' recorded results are reused, no calls.
  const stepIds = ((plan && plan.steps) || []).map((s, i) => [s.id ?? i, `${i + 1}. ${s.id || `step ${i + 1}`}`]);
  const from = h(
    "select",
    { id: "replay-from", name: "from_step" },
    h("option", { value: "" }, "the first failed step"),
    stepIds.map(([value, text]) => h("option", { value: String(value) }, text)),
  );
  const button = h("button", { type: "submit", class: "secondary", id: "replay" }, "Replay");
  const form = h(
    "form",
    { class: "replay", "aria-label": "Replay this run" },
    button,
    h("label", { for: "replay-from" }, " from "),
    from,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    const chosen = from.value;
    const body = {};
    if (chosen !== "") body.from_step = /^\d+$/.test(chosen) ? Number(chosen) : chosen;
    try {
      const replayed = await api("POST", `/api/runs/${run.id}/replay`, { body });
      go(`/runs/${replayed.id}`);
    } catch (err) {
      notes.error(err);
      button.disabled = false;
    }
  });
  return form;
}

function facts(run, plan) {
  const usage = run.usage || null; // issue 11: the run's LLM totals
  const logTokens = (run.logs || []).map((l) => stepTokens(l, l.output && l.output.metadata)).filter((t) => t !== null);
  const totalTokens = usage && usage.llm_steps ? usage.input_tokens + usage.output_tokens : logTokens.length ? logTokens.reduce((a, b) => a + b, 0) : null;
  const totalCost = usage && usage.llm_steps ? usage.cost_usd : cost(run) ?? sumCost(run.logs || []);
  const source = run.replay_of ?? run.replayed_from ?? run.source_run_id ?? null;
  const rows = [
    ["Status", badge(run.status)],
    ["Plan", plan ? h("a", { href: `#/plans/${plan.id}/edit` }, plan.name) : `plan #${run.plan_id} (deleted)`],
    ["Trigger", run.trigger],
    source !== null ? ["Replay of", h("a", { href: `#/runs/${source}` }, `run #${source}`)] : null,
    run.scheduled_for ? ["Scheduled for", when(run.scheduled_for)] : null,
    ["Created", when(run.created_at)],
    ["Started", when(run.started_at)],
    ["Finished", when(run.finished_at)],
    ["Duration", run.finished_at ? between(run.started_at || run.created_at, run.finished_at) : "—"],
    totalTokens !== null ? ["Tokens", usage && usage.llm_steps ? `${totalTokens} (${usage.input_tokens} in, ${usage.output_tokens} out)` : String(totalTokens)] : null,
    totalCost !== null ? ["Cost", [usd(totalCost), usage && usage.unpriced_steps ? ` (${usage.unpriced_steps} step(s) not priced)` : ""]] : null,
  ].filter(Boolean);
  return h(
    "section",
    { class: "card facts", "aria-label": "Run details" },
    h("dl", {}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k.toLowerCase() }, v)])),
    run.error ? h("div", { class: "run-error" }, h("h2", {}, "Error"), h("p", { class: "error-text" }, run.error)) : null,
  );
}

/** A step's tokens: the log row's counts (issue 11) or the result's usage. */
function stepTokens(log, metadata) {
  if (log && (typeof log.input_tokens === "number" || typeof log.output_tokens === "number")) {
    return (log.input_tokens || 0) + (log.output_tokens || 0);
  }
  return tokens(metadata);
}

function sumCost(logs) {
  const costs = logs.map((l) => cost(l, l.output && l.output.metadata)).filter((c) => c !== null);
  return costs.length ? costs.reduce((a, b) => a + b, 0) : null;
}

function steps(run, plan) {
  const planSteps = (plan && plan.steps) || [];
  const outcomes = run.step_results || [];
  const count = Math.max(planSteps.length, outcomes.length);
  if (!count) return empty("This plan has no steps.", "Add steps in the plan's JSON, then run it again.");
  const logsByIndex = new Map();
  for (const log of run.logs || []) if (log.step_index !== null) logsByIndex.set(log.step_index, log);
  const cards = [];
  for (let index = 0; index < count; index += 1) {
    cards.push(stepCard(index, planSteps[index], outcomes.find((o) => o.index === index), logsByIndex.get(index), run));
  }
  return h("section", { class: "steps", "aria-label": "Steps" }, h("h2", {}, "Steps"), h("ol", { class: "step-list" }, cards));
}

function stepCard(index, planStep, outcome, log, run) {
  const result = (outcome && outcome.result) || null;
  let status = outcome ? outcome.status : ACTIVE.has(run.status) ? "queued" : "not run";
  // A step recorded as running in a run that has ended was cut off (the run was interrupted).
  if (status === "running" && !ACTIVE.has(run.status)) status = "interrupted";
  const name = (planStep && (planStep.name || planStep.id)) || (outcome && outcome.id) || `step ${index + 1}`;
  const provider = (outcome && outcome.provider) || (planStep && planStep.provider) || "?";
  const action = (outcome && outcome.action) || (planStep && planStep.action) || "?";
  const metadata = (result && result.metadata) || (log && log.output && log.output.metadata) || {};
  const latency = result ? result.latency_ms : log ? log.latency_ms : null;
  const attempts = metadata.attempts ?? (log ? log.attempt : null);
  const tokenCount = stepTokens(log, metadata);
  const stepCost = cost(log, metadata);
  const error = (result && result.error) || (log && log.error ? { code: log.error_code, message: log.error } : null);
  const output = result ? result.data : log && log.output ? log.output.data : undefined;
  const stats = [
    ["Latency", latency !== null && latency !== undefined ? duration(latency) : "—"],
    ["Attempts", attempts ?? "—"],
    tokenCount !== null ? ["Tokens", String(tokenCount)] : null,
    stepCost !== null ? ["Cost", usd(stepCost)] : null,
    metadata.model ? ["Model", metadata.model] : null,
    metadata.http_status ? ["HTTP", String(metadata.http_status)] : null,
  ].filter(Boolean);
  const warning = metadata.budget_warning || null;
  return h(
    "li",
    { class: `card step step-status-${status.replace(" ", "-")}`, "data-step-index": index },
    h(
      "div",
      { class: "step-head" },
      h("h3", {}, `${index + 1}. `, name),
      h("span", { class: "muted" }, `${provider}.${action}`),
      badge(status),
    ),
    h("dl", { class: "stats" }, stats.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    warning ? h("p", { class: "notice warn" }, "Budget: ", warning) : null,
    error ? h("div", { class: "step-error" }, h("strong", {}, error.code || "error"), ": ", h("span", { class: "error-text" }, error.message || "")) : null,
    log && log.input !== undefined ? h("details", { class: "io", open: true }, h("summary", {}, "Input (rendered)"), code(log.input, `Step ${index + 1} input`)) : null,
    output !== undefined && output !== null ? outputBlock(output, index) : null,
    Object.keys(metadata).length ? h("details", { class: "io" }, h("summary", {}, "Metadata"), code(metadata)) : null,
  );
}

function outputBlock(output, index) {
  // A model's answer is read as text first; the whole structure stays one click away.
  const text = output && typeof output === "object" && typeof output.text === "string" ? output.text : null;
  if (text === null) return h("div", { class: "io output" }, h("h4", {}, "Output"), code(output, `Step ${index + 1} output`));
  return h(
    "div",
    { class: "io output" },
    h("h4", {}, "Output"),
    h("pre", { class: "code prose", tabindex: "0", "aria-label": `Step ${index + 1} output text` }, text),
    h("details", { class: "io" }, h("summary", {}, "Full output (JSON)"), code(output)),
  );
}
