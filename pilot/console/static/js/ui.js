// Pieces several pages share: times shown both ways, responsive tables, empty states.

import { h } from "./dom.js";
import { absolute, relative } from "./time.js";

/** Relative time with the absolute one beside it (and in the tooltip). */
export function when(iso, timeZone) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const full = absolute(iso, timeZone);
  return h(
    "span",
    { class: "when" },
    h("time", { datetime: iso, title: full }, relative(iso)),
    h("span", { class: "abs" }, full),
  );
}

/**
 * A table that turns into stacked cards on narrow screens (each cell labelled by its column).
 * ``columns``: [{label, cell: (row) => node|string, class?}], ``rows``: data.
 */
export function table(columns, rows, { caption, rowAttrs, className } = {}) {
  return h(
    "table",
    { class: className ? `grid ${className}` : "grid" },
    caption ? h("caption", { class: "visually-hidden" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class || null }, c.label)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          rowAttrs ? rowAttrs(row) : {},
          // One wrapper per cell, so the narrow layout's grid has exactly a label and a value.
          columns.map((c) => h("td", { "data-label": c.label, class: c.class || null }, h("div", { class: "cell" }, c.cell(row)))),
        ),
      ),
    ),
  );
}

/** An empty state: what is missing and what to do next. */
export function empty(title, ...next) {
  return h("div", { class: "empty" }, h("p", { class: "empty-title" }, title), h("p", {}, ...next));
}

/** A page heading with optional actions on the right. */
export function header(title, ...actions) {
  return h("div", { class: "page-head" }, h("h1", {}, title), h("div", { class: "actions" }, ...actions));
}

/** A labelled <select> from [[value, text], …]. */
export function select(id, label, options, value, onchange) {
  const el = h(
    "select",
    { id, name: id, onchange },
    options.map(([v, text]) => h("option", { value: v, selected: String(v) === String(value ?? "") }, text)),
  );
  return h("div", { class: "field" }, h("label", { for: id }, label), el);
}

/** Sum of tokens in a step's metadata.usage, whatever the vendor calls them; null when none. */
export function tokens(metadata) {
  const usage = metadata && metadata.usage;
  if (!usage || typeof usage !== "object") return null;
  if (typeof usage.total_tokens === "number") return usage.total_tokens;
  const parts = ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"]
    .map((k) => usage[k])
    .filter((v) => typeof v === "number");
  return parts.length ? parts.reduce((a, b) => a + b, 0) : null;
}

/** A cost in USD where the API records one (cost_usd on the step's metadata or log), else null. */
export function cost(...sources) {
  for (const source of sources) {
    if (source && typeof source.cost_usd === "number") return source.cost_usd;
  }
  return null;
}

export function usd(value) {
  if (value === null || value === undefined) return "—";
  return `$${value < 0.01 && value > 0 ? value.toFixed(6) : value.toFixed(4)}`;
}
