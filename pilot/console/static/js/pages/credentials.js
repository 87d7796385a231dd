// Credentials per provider: masked values, add, test (showing the check's answer), delete.

import { api } from "../api.js";
import { badge, confirmDialog, h, messages, mount } from "../dom.js";
import { duration } from "../time.js";
import { empty, header, when } from "../ui.js";

export async function render(root, { signal }) {
  const notes = messages();
  const body = h("div", { class: "credentials", "aria-busy": "true" });
  mount(root, header("Credentials"), notes.el, body);
  let described;
  let stored;
  try {
    const { providers } = await api("GET", "/api/providers", { signal });
    [described, stored] = await Promise.all([
      Promise.all(providers.map((name) => api("GET", `/api/providers/${encodeURIComponent(name)}`, { signal }))),
      api("GET", "/api/provider-credentials", { signal }).then((d) => d.credentials),
    ]);
  } catch (err) {
    if (err.name !== "AbortError") notes.error(err);
    return;
  }
  body.setAttribute("aria-busy", "false");
  const reload = () => render(root, { signal });
  const needing = described.filter((p) => Object.keys(p.credential_types || {}).length);
  mount(
    body,
    stored.length
      ? null
      : empty("No credentials stored yet.", "Add an API key for a provider below, then press Test to check it against the provider."),
    needing.map((provider) => providerCard(provider, stored.filter((c) => c.provider === provider.name), notes, reload)),
  );
}

function providerCard(provider, rows, notes, reload) {
  const result = h("div", { class: "test-result", "aria-live": "polite" });
  const test = h("button", { type: "button", class: "secondary", disabled: !rows.length }, "Test");
  test.addEventListener("click", async () => {
    test.disabled = true;
    mount(result, h("span", { class: "muted" }, "Checking with the provider…"));
    try {
      const answer = await api("POST", `/api/provider-credentials/${encodeURIComponent(provider.name)}/test`, { body: {} });
      mount(result, testResult(answer));
    } catch (err) {
      mount(result, h("p", { class: "notice error" }, err.words || String(err)));
    } finally {
      test.disabled = false;
    }
  });
  const list = rows.length
    ? h(
        "ul",
        { class: "stored" },
        rows.map((row) =>
          h(
            "li",
            { "data-type": row.type },
            h("code", {}, row.type),
            " ",
            h("span", { class: "masked" }, row.masked_value),
            row.readable ? null : [" ", h("span", { class: "notice-inline error" }, "cannot be decrypted with the configured keys")],
            h("span", { class: "muted" }, " updated "),
            when(row.updated_at),
            " ",
            deleteButton(provider.name, row.type, notes, reload),
          ),
        ),
      )
    : h("p", { class: "muted" }, "Nothing stored for this provider.");
  return h(
    "section",
    { class: "card provider", "data-provider": provider.name, "aria-labelledby": `cred-${provider.name}` },
    h("div", { class: "step-head" }, h("h2", { id: `cred-${provider.name}` }, provider.name), test),
    h("p", { class: "help" }, provider.description),
    list,
    result,
    addForm(provider, notes, reload),
  );
}

function testResult(answer) {
  const error = answer.error || {};
  const meta = answer.metadata || {};
  const words = answer.success
    ? ["Works", meta.model ? ` (${meta.model})` : "", answer.latency_ms ? `, answered in ${duration(answer.latency_ms)}` : ""]
    : [`${error.code || "failed"}: ${error.message || "the provider refused the credential"}`, meta.http_status ? ` (HTTP ${meta.http_status})` : ""];
  return h("p", { class: `notice ${answer.success ? "ok" : "error"}`, "data-success": String(Boolean(answer.success)) }, badge(answer.success ? "success" : "error"), " ", ...words);
}

function deleteButton(provider, type, notes, reload) {
  const button = h("button", { type: "button", class: "small danger", "aria-label": `Delete ${provider} ${type}` }, "Delete");
  button.addEventListener("click", async () => {
    const ok = await confirmDialog({
      title: `Delete ${provider} ${type}?`,
      body: "Steps that need it fail with missing_credentials until you add it again.",
      confirm: "Delete",
      danger: true,
    });
    if (!ok) return;
    try {
      await api("DELETE", `/api/provider-credentials/${encodeURIComponent(provider)}/${encodeURIComponent(type)}`);
      await reload();
    } catch (err) {
      notes.error(err);
    }
  });
  return button;
}

function addForm(provider, notes, reload) {
  const types = Object.entries(provider.credential_types);
  const id = `add-${provider.name}`;
  const typeSelect = h(
    "select",
    { id: `${id}-type`, name: "type" },
    types.map(([name, spec]) => h("option", { value: name }, `${name}${spec.required ? " (required)" : ""}`)),
  );
  const secret = h("input", { id: `${id}-value`, name: "value", type: "password", autocomplete: "off", spellcheck: "false", required: true });
  const hint = h("p", { class: "help", id: `${id}-hint` });
  const showHint = () => {
    const spec = provider.credential_types[typeSelect.value] || {};
    hint.textContent = spec.description || "";
    secret.type = spec.secret === false ? "text" : "password";
  };
  typeSelect.addEventListener("change", showHint);
  showHint();
  const form = h(
    "form",
    { class: "add-credential", "aria-label": `Add a ${provider.name} credential` },
    h("div", { class: "field" }, h("label", { for: `${id}-type` }, "Type"), typeSelect),
    h("div", { class: "field grow" }, h("label", { for: `${id}-value` }, "Value"), secret),
    h("button", { type: "submit" }, "Add"),
    hint,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!secret.value.trim()) {
      notes.info("Type the value first.");
      secret.focus();
      return;
    }
    try {
      await api("POST", `/api/provider-credentials/${encodeURIComponent(provider.name)}`, {
        body: { credentials: { [typeSelect.value]: secret.value } },
      });
      secret.value = "";
      await reload();
    } catch (err) {
      notes.error(err);
    }
  });
  return form;
}
