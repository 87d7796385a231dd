// Times as people read them: relative ("3 min ago") next to absolute, in the viewer's zone
// or a named one (a schedule's).

const UNITS = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
  ["second", 1],
];
const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });

export function parse(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "3 min ago", "in 2 hr"; "just now" within 5 s. */
export function relative(iso, now = Date.now()) {
  const date = parse(iso);
  if (!date) return "—";
  const seconds = (date.getTime() - now) / 1000;
  if (Math.abs(seconds) < 5) return "just now";
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "second") return relativeFormat.format(Math.round(seconds / size), unit);
  }
  return "—";
}

/** "4 Dec 2026, 14:40:45 CET" in ``timeZone`` (the viewer's when omitted). */
export function absolute(iso, timeZone) {
  const date = parse(iso);
  if (!date) return "—";
  try {
    // dateStyle/timeStyle cannot be combined with timeZoneName: spell the parts out.
    return new Intl.DateTimeFormat(undefined, {
      year: "numeric",
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      timeZone: timeZone || undefined,
      timeZoneName: "short",
    }).format(date);
  } catch {
    return date.toISOString(); // an unknown zone name: fall back to UTC in ISO form
  }
}

export function viewerZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

/** Milliseconds as "850 ms", "12.4 s", "3 min 5 s". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function between(startIso, endIso) {
  const start = parse(startIso);
  const end = parse(endIso);
  return start && end ? duration(end.getTime() - start.getTime()) : "—";
}
