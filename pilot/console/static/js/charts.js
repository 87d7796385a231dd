// Charts drawn with uPlot (vendored, loaded by the page as window.uPlot), each with its data
// also available as a table for people who cannot see the canvas.

import { h } from "./dom.js";

// Okabe–Ito: distinguishable with the common colour-vision deficiencies.
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#7f7f7f"];
const HEIGHT = 220;

export function colour(index) {
  return PALETTE[index % PALETTE.length];
}

function theme() {
  const style = getComputedStyle(document.documentElement);
  return {
    text: style.getPropertyValue("--text").trim() || "#222",
    grid: style.getPropertyValue("--grid").trim() || "#ddd",
  };
}

function axis(extra = {}) {
  const t = theme();
  return { stroke: t.text, grid: { stroke: t.grid, width: 1 }, ticks: { stroke: t.grid, width: 1 }, ...extra };
}

function width(el) {
  return Math.max(240, Math.floor(el.clientWidth || el.parentElement.clientWidth || 320));
}

/** Keep a chart as wide as its box; stops when ``signal`` aborts. */
function follow(plot, el, signal) {
  const observer = new ResizeObserver(() => plot.setSize({ width: width(el), height: HEIGHT }));
  observer.observe(el);
  signal.addEventListener("abort", () => {
    observer.disconnect();
    plot.destroy();
  }, { once: true });
}

function dataTable(caption, head, rows) {
  return h(
    "details",
    { class: "chart-data" },
    h("summary", {}, "Show the numbers"),
    h(
      "table",
      { class: "grid compact" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))),
    ),
  );
}

/** The top of a value axis: a little above the largest value (cents and fractions of them too), 1 when all are 0. */
function top(values) {
  const largest = Math.max(0, ...values.filter((v) => v !== null));
  return largest > 0 ? largest * 1.15 : 1;
}

/**
 * One bar per category (providers): ``values`` aligned with ``labels``.
 * Returns a <figure> whose ``data-points`` says how many values were drawn.
 */
export function bars({ title, labels, values, unit, max, signal, format = (v) => String(v) }) {
  const box = h("div", { class: "chart-canvas" });
  const figure = h(
    "figure",
    { class: "chart", "data-chart": title, "data-points": String(values.filter((v) => v !== null).length) },
    h("figcaption", {}, title),
    box,
    dataTable(title, ["provider", unit], labels.map((label, i) => [label, values[i] === null ? "—" : format(values[i])])),
  );
  requestAnimationFrame(() => {
    if (signal.aborted) return;
    const xs = labels.map((_, i) => i);
    const every = Math.max(1, Math.ceil(labels.length / Math.max(1, Math.floor(width(box) / 56))));
    const plot = new window.uPlot(
      {
        width: width(box),
        height: HEIGHT,
        legend: { show: false },
        cursor: { points: { show: false }, drag: { x: false, y: false } },
        scales: { x: { time: false, range: [-0.5, labels.length - 0.5] }, y: { range: [0, max ?? top(values)] } },
        axes: [
          // Every label where they fit (about 56 px each), else every n-th: 30 days on a phone stay readable.
          axis({ splits: () => xs, values: (u, splits) => splits.map((i) => (i % every === 0 ? labels[i] ?? "" : "")) }),
          // Wide enough for the longest tick label ("$0.000015", "100%"): about 7 px a character.
          axis({ values: (u, splits) => splits.map((v) => `${format(v)}`), size: Math.max(50, 7 * format(max ?? top(values)).length + 24) }),
        ],
        series: [{}, { label: unit, fill: colour(0), stroke: colour(0), paths: window.uPlot.paths.bars({ size: [0.6, 64] }), points: { show: false } }],
      },
      [xs, values],
      box,
    );
    follow(plot, box, signal);
  });
  return figure;
}

/**
 * Lines over time: ``xs`` in Unix seconds, ``series`` [{label, values}] aligned with it.
 */
export function lines({ title, xs, series, unit, signal }) {
  const box = h("div", { class: "chart-canvas" });
  const points = series.reduce((n, s) => n + s.values.filter((v) => v !== null).length, 0);
  const totals = series.map((s) => [s.label, String(s.values.reduce((a, b) => a + (b || 0), 0))]);
  const figure = h(
    "figure",
    { class: "chart", "data-chart": title, "data-points": String(points), "data-series": String(series.length) },
    h("figcaption", {}, title),
    box,
    dataTable(title, ["provider", `${unit} in the window`], totals),
  );
  requestAnimationFrame(() => {
    if (signal.aborted) return;
    const plot = new window.uPlot(
      {
        width: width(box),
        height: HEIGHT,
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max) * 1.15] } },
        // Counts: whole-number ticks only.
        axes: [axis(), axis({ size: 50, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000] })],
        series: [
          {},
          ...series.map((s, i) => ({
            label: s.label,
            stroke: colour(i),
            width: 2,
            paths: window.uPlot.paths.stepped({ align: 1 }),
            points: { show: false },
          })),
        ],
      },
      [xs, ...series.map((s) => s.values)],
      box,
    );
    follow(plot, box, signal);
  });
  return figure;
}
