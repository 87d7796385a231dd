// Sign-in that fits the server's AUTH_MODE: a user name in dev mode, a pasted token in token mode.

import { api, signIn } from "../api.js";
import { h, messages, mount } from "../dom.js";

let pending = null;

/** A message to show on the next sign-in form (e.g. "your token stopped working"). */
export function pendingMessage(text) {
  pending = text;
}

function jwtSubject(token) {
  // Shown as a label only; the server verifies the token, the console never trusts this.
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const payload = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.sub === "string" ? payload.sub : null;
  } catch {
    return null;
  }
}

export function render(root, { mode, done }) {
  const notes = messages();
  if (pending) notes.info(pending);
  pending = null;
  const token = mode === "token";
  const input = token
    ? h("input", {
        id: "credential",
        name: "token",
        type: "password",
        autocomplete: "off",
        spellcheck: "false",
        required: true,
        "aria-describedby": "credential-help",
      })
    : h("input", {
        id: "credential",
        name: "user",
        type: "text",
        autocomplete: "username",
        spellcheck: "false",
        required: true,
        maxlength: "255",
        "aria-describedby": "credential-help",
      });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", novalidate: true },
    h("label", { for: "credential" }, token ? "API token or JWT" : "User name"),
    input,
    h(
      "p",
      { class: "help", id: "credential-help" },
      token
        ? [
            "This Pilot runs with AUTH_MODE=token. Paste a token from ",
            h("code", {}, "flask --app app create-token YOUR_NAME"),
            " or a JWT from your identity provider. It is kept in this tab only (sessionStorage) and sent as an Authorization header.",
          ]
        : [
            "This Pilot runs with AUTH_MODE=dev: whoever can reach it picks a user name, and you see that user's plans, runs and credentials. Use token mode for anything shared.",
          ],
    ),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) {
      notes.info(token ? "Paste a token first." : "Type a user name first.");
      input.focus();
      return;
    }
    const who = token
      ? { mode: "token", token: value, label: jwtSubject(value) || "API token" }
      : { mode: "dev", user: value, label: value };
    button.disabled = true;
    try {
      await api("GET", "/api/plans", { query: { limit: 1 }, as: who }); // proves the sign-in before keeping it
      signIn(who);
      done();
    } catch (err) {
      notes.error(err);
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  mount(root, h("h1", {}, "Sign in to Pilot"), notes.el, form);
  input.focus();
}
