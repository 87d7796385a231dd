// Create or edit a plan as JSON. The server validates; each error it names is shown at the
// place in the text where that field is (or would be).

import { api } from "../api.js";
import { badge, describeError, h, messages, mount, setFlash } from "../dom.js";
import { fieldErrors, locate, position, spans } from "../jsonspan.js";
import { header, table } from "../ui.js";
import { dryRunReport } from "./plans.js";

const FIELDS = ["name", "original_prompt", "steps", "schedule", "timezone", "enabled"];
const EXAMPLE = {
  name: "Hello plan",
  steps: [
    { id: "greet", provider: "logic", action: "transform", params: { template: "Hello from Pilot" } },
    { id: "shout", provider: "logic", action: "transform", params: { template: "{{ steps.greet.data }}!" } },
  ],
  schedule: null,
  timezone: "UTC",
  enabled: true,
};

export async function render(root, { params, query, features, signal, go }) {
  const planId = params[0] || null;
  const notes = messages();
  const editor = h("textarea", {
    id: "plan-json",
    class: "json",
    rows: "22",
    spellcheck: "false",
    autocomplete: "off",
    autocapitalize: "off",
    "aria-describedby": "plan-help plan-errors",
  });
  const errors = h("div", { id: "plan-errors", class: "field-errors", "aria-live": "assertive" });
  const save = h("button", { type: "submit", id: "save-plan" }, planId ? "Save changes" : "Create plan");
  const form = h(
    "form",
    { class: "card editor", novalidate: true },
    h("label", { for: "plan-json" }, "Plan (JSON)"),
    h(
      "p",
      { class: "help", id: "plan-help" },
      "Fields: name, steps (each {id, provider, action, params, when?, retry?, timeout_s?, continue_on_error?}), ",
      "schedule ({\"cron\": \"0 9 * * 1-5\", \"timezone\": \"Europe/Berlin\"} or {\"interval_seconds\": 3600}; null for none), ",
      "timezone, enabled. Steps read earlier results with {{ steps.<id>.data }}.",
    ),
    editor,
    errors,
    h(
      "div",
      { class: "actions" },
      save,
      h("button", { type: "button", class: "secondary", onclick: () => format(editor, errors) }, "Format JSON"),
      h("a", { class: "button secondary", href: "#/plans" }, "Cancel"),
    ),
  );
  const draftBox = query.get("draft") && features.has("POST", "/api/plans/draft") ? draftForm(editor, notes, go) : null;
  const referenceSlot = h("div");
  mount(root, header(planId ? `Edit plan #${planId}` : "New plan"), notes.el, draftBox, form, referenceSlot);
  reference(signal).then((box) => referenceSlot.replaceWith(box), () => {});
  if (!planId) editor.value = JSON.stringify(EXAMPLE, null, 2);
  if (planId) {
    editor.readOnly = true; // nothing to edit (or save over the plan) until it has loaded
    save.disabled = true;
    try {
      const plan = await api("GET", `/api/plans/${planId}`, { signal });
      editor.value = JSON.stringify(Object.fromEntries(FIELDS.map((f) => [f, plan[f]])), null, 2);
      root.querySelector("h1").textContent = `Edit plan: ${plan.name}`;
      editor.readOnly = false;
      save.disabled = false;
    } catch (err) {
      if (err.name === "AbortError") return;
      notes.error(err);
      save.disabled = true;
      return;
    }
  }
  form.dataset.ready = "true";
  editor.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    notes.clear();
    const text = editor.value;
    let body;
    try {
      body = JSON.parse(text);
    } catch (err) {
      showSyntaxError(editor, errors, err);
      return;
    }
    save.disabled = true;
    try {
      const saved = planId ? await api("PUT", `/api/plans/${planId}`, { body }) : await api("POST", "/api/plans", { body });
      clearErrors(editor, errors);
      if (!planId) {
        setFlash(`Created “${saved.name}” (#${saved.id}). Press Run now to try it.`);
        go("/plans");
        return;
      }
      notes.info(`Saved “${saved.name}”. `, h("a", { href: "#/plans" }, "Back to plans"), ".");
    } catch (err) {
      if (err.status === 400 || err.status === 422) showFieldErrors(editor, errors, err, text);
      else notes.error(err);
    } finally {
      save.disabled = false;
    }
  });
}

function clearErrors(editor, errors) {
  editor.removeAttribute("aria-invalid");
  errors.replaceChildren();
}

function jump(editor, start, end, focus = true) {
  if (focus) editor.focus();
  editor.setSelectionRange(start, end);
  const { line } = position(editor.value, start);
  const lineHeight = parseFloat(getComputedStyle(editor).lineHeight) || 18;
  editor.scrollTop = Math.max(0, (line - 3) * lineHeight);
}

function lineOf(text, line) {
  return text.split("\n")[line - 1] || "";
}

function showFieldErrors(editor, errors, err, text) {
  const map = spans(text);
  const items = fieldErrors(err).map(({ field, message }) => {
    const where = locate(map, field);
    const pos = where ? position(text, where.start) : null;
    const missing = where && !where.exact;
    return h(
      "li",
      { class: "field-error", "data-field": field || "(plan)" },
      h("code", { class: "field" }, field || "plan"),
      " ",
      h("span", { class: "message" }, message),
      pos
        ? h(
            "div",
            { class: "at" },
            h("span", { class: "muted" }, `line ${pos.line}${missing ? ` (missing inside ${where.path})` : ""}: `),
            h("code", { class: "excerpt" }, lineOf(text, pos.line).trim()),
            " ",
            h("button", { type: "button", class: "link", onclick: () => jump(editor, where.start, where.end) }, "Show in editor"),
          )
        : null,
    );
  });
  editor.setAttribute("aria-invalid", "true");
  mount(errors, h("p", { class: "notice error", role: "alert" }, "Pilot did not save the plan:"), h("ul", {}, items));
  const first = locate(map, fieldErrors(err)[0].field);
  if (first) jump(editor, first.start, first.end, false); // selected and scrolled into view; focus stays put
}

function showSyntaxError(editor, errors, err) {
  // Chromium says "… at position 123 (line 5 column 7)"; others differ, so the position is optional.
  const at = /position (\d+)/.exec(err.message);
  const offset = at ? Number(at[1]) : null;
  const pos = offset !== null ? position(editor.value, offset) : null;
  editor.setAttribute("aria-invalid", "true");
  mount(
    errors,
    h("p", { class: "notice error", role: "alert" }, `This is not valid JSON: ${err.message}`),
    pos ? h("p", {}, h("span", { class: "muted" }, `line ${pos.line}: `), h("code", { class: "excerpt" }, lineOf(editor.value, pos.line).trim())) : null,
  );
  if (offset !== null) jump(editor, offset, offset + 1);
}

function format(editor, errors) {
  try {
    editor.value = JSON.stringify(JSON.parse(editor.value), null, 2);
    clearErrors(editor, errors);
  } catch (err) {
    showSyntaxError(editor, errors, err);
  }
}

function draftForm(editor, notes, go) {
  const prompt = h("textarea", {
    id: "draft-prompt",
    rows: "3",
    required: true,
    placeholder: "e.g. Every weekday at 9, summarise https://example.com/feed and post it to my webhook",
  });
  const save = h("input", { id: "draft-save", type: "checkbox" });
  const dry = h("input", { id: "draft-dry-run", type: "checkbox" });
  const button = h("button", { type: "submit", id: "draft-button" }, "Draft");
  const report = h("div", { class: "draft-report", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card draft", "aria-label": "Draft a plan from a prompt" },
    h("label", { for: "draft-prompt" }, "Describe the plan"),
    h(
      "p",
      { class: "help" },
      "Your own model (the first of openai, groq, anthropic you stored an api_key for) drafts the plan; Pilot validates it and asks the model to repair what fails. A drafted plan is saved disabled.",
    ),
    prompt,
    h(
      "div",
      { class: "actions" },
      button,
      h("label", { class: "check" }, save, " Save it (disabled) at once"),
      h("label", { class: "check" }, dry, " Dry run the draft"),
    ),
    report,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!prompt.value.trim()) {
      notes.info("Describe the plan first.");
      prompt.focus();
      return;
    }
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    mount(report, h("p", { class: "muted" }, "Asking the model…"));
    notes.clear();
    try {
      const answer = await api("POST", "/api/plans/draft", { body: { prompt: prompt.value, save: save.checked, dry_run: dry.checked } });
      const plan = answer.plan || {};
      mount(
        report,
        h("p", { class: "notice ok", "data-drafted": "true" }, `Drafted by ${answer.provider} ${answer.model} in ${(answer.attempts || []).length} attempt(s).`),
        attemptsTable(answer.attempts || []),
        answer.dry_run ? [h("h3", {}, "Dry run of the draft"), dryRunReport(answer.dry_run)] : null,
      );
      if (answer.saved && plan.id) {
        setFlash(`Drafted and saved “${plan.name}” (#${plan.id}), disabled: check it, then resume it or run it now.`);
        go(`/plans/${plan.id}/edit`);
        return;
      }
      editor.value = JSON.stringify(Object.fromEntries(FIELDS.filter((f) => f in plan).map((f) => [f, plan[f]])), null, 2);
      notes.info("Drafted: check the JSON below, then create the plan.");
    } catch (err) {
      const details = (err && err.details) || {};
      mount(
        report,
        h("p", { class: "notice error", role: "alert" }, describeError(err)),
        Array.isArray(details.attempts) ? attemptsTable(details.attempts) : null,
      );
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
  return form;
}

/** Every model attempt of a draft: valid or not, the validation errors it got, its tokens. */
function attemptsTable(attempts) {
  if (!attempts.length) return null;
  return [
    h("h3", {}, "Attempts"),
    table(
      [
        { label: "#", cell: (a) => String(a.attempt) },
        { label: "Valid", cell: (a) => badge(a.valid ? "success" : "error") },
        {
          label: "Errors",
          cell: (a) =>
            (a.errors || []).length
              ? h("ul", { class: "plain" }, a.errors.map((e) => h("li", {}, h("code", {}, (e && e.code) || "error"), " ", (e && e.message) || "")))
              : "—",
        },
        { label: "Tokens", cell: (a) => (a.usage && typeof a.usage.total_tokens === "number" ? String(a.usage.total_tokens) : "—") },
      ],
      attempts,
      { caption: "Attempts of the draft", className: "attempts", rowAttrs: (a) => ({ "data-valid": String(Boolean(a.valid)) }) },
    ),
  ];
}

async function reference(signal) {
  // Providers, actions and their params, from the registry (GET /api/providers/<name>).
  const box = h("details", { class: "card reference" }, h("summary", {}, "Providers, actions and params"));
  try {
    const { providers } = await api("GET", "/api/providers", { signal });
    const described = await Promise.all(providers.map((name) => api("GET", `/api/providers/${encodeURIComponent(name)}`, { signal })));
    for (const provider of described) {
      for (const [action, spec] of Object.entries(provider.actions)) {
        const props = (spec.params_schema && spec.params_schema.properties) || {};
        const required = new Set((spec.params_schema && spec.params_schema.required) || []);
        box.append(
          h(
            "div",
            { class: "ref-action" },
            h("h3", {}, h("code", {}, `${provider.name}.${action}`)),
            h("p", {}, spec.description),
            h(
              "ul",
              {},
              Object.entries(props).map(([name, schema]) =>
                h("li", {}, h("code", {}, name), required.has(name) ? " (required)" : "", schema.description ? ` — ${schema.description}` : ""),
              ),
            ),
          ),
        );
      }
    }
  } catch (err) {
    if (err.name === "AbortError") throw err;
    box.append(h("p", { class: "muted" }, "The provider list could not be loaded."));
  }
  return box;
}
