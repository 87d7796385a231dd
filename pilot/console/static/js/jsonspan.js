// Where a field named by the server ("steps[0].params.model", "schedule.cron") sits in the
// JSON text a person typed, so its error can be shown at that place.

/**
 * Map every path in a valid JSON text to {start, end}: an object member's span runs from its
 * key to the end of its value, an array element's is the element. Call only on text that
 * JSON.parse accepted.
 */
export function spans(text) {
  const found = new Map();
  let i = 0;
  const skip = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i += 1;
  };
  const string = () => {
    const start = i;
    i += 1;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    i += 1;
    return [JSON.parse(text.slice(start, i)), start];
  };
  const value = (path) => {
    skip();
    const start = i;
    const c = text[i];
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      i += 1;
      skip();
      let index = 0;
      while (text[i] !== close && i < text.length) {
        skip();
        let child;
        let childStart;
        if (c === "{") {
          const [key, keyStart] = string();
          child = path ? `${path}.${key}` : key;
          childStart = keyStart;
          skip();
          i += 1; // the colon
        } else {
          child = `${path}[${index}]`;
          index += 1;
          skip();
          childStart = i;
        }
        const end = value(child);
        found.set(child, { start: childStart, end });
        skip();
        if (text[i] === ",") i += 1;
        skip();
      }
      i += 1;
      return i;
    }
    if (c === '"') {
      string();
      return i;
    }
    while (i < text.length && !",]} \t\n\r".includes(text[i])) i += 1;
    return i;
  };
  value("");
  return found;
}

/** The span of ``field``, or of its nearest ancestor present in the text (a missing field). */
export function locate(map, field) {
  let path = field || "";
  while (path) {
    if (map.has(path)) return { ...map.get(path), path, exact: path === field };
    const cut = Math.max(path.lastIndexOf("."), path.lastIndexOf("["));
    path = cut > 0 ? path.slice(0, cut) : "";
  }
  return null;
}

/** 1-based line and column of ``offset`` in ``text``. */
export function position(text, offset) {
  const before = text.slice(0, offset);
  const line = before.split("\n").length;
  return { line, column: offset - before.lastIndexOf("\n") };
}

/**
 * The fields an API validation error names, as [{field, message}]. Pilot's 400s name the field
 * in details ({field} for plan structure, {path} relative to the step for provider params,
 * {loc} as a pydantic location list)
 * or at the start of the message ("steps[0].when: …").
 */
export function fieldErrors(error) {
  const message = (error && error.message) || "";
  const lead = /^([A-Za-z_][\w-]*(?:\[\d+\]|\.[\w-]+)*):\s*(.*)$/s.exec(message);
  const step = /^(steps\[\d+\])/.exec(message);
  const details = error && error.details;
  if (Array.isArray(details) && details.length && details.every((d) => d && typeof d === "object")) {
    return details.map((d) => {
      if (Array.isArray(d.loc)) return { field: locPath(d.loc), message: String(d.message ?? d.msg ?? "") };
      if (typeof d.field === "string") return { field: d.field === "body" ? "" : d.field, message: String(d.message ?? "") };
      if (typeof d.path === "string") return { field: step ? `${step[1]}.${d.path}` : d.path, message: String(d.message ?? "") };
      return { field: lead ? lead[1] : "", message: String(d.message ?? JSON.stringify(d)) };
    });
  }
  return [lead ? { field: refine(lead[1], lead[2]), message: lead[2] } : { field: "", message }];
}

/** A pydantic-style location (["body", "steps", 0, "params"]) as "steps[0].params". */
export function locPath(loc) {
  let path = "";
  for (const part of loc) {
    if (typeof part === "number") path += `[${part}]`;
    else if (path === "" && (part === "body" || part === "query")) continue;
    else path += path ? `.${part}` : String(part);
  }
  return path;
}

/** A step-level error about the provider or action points at that key, not at the whole step. */
function refine(field, message) {
  if (!/^steps\[\d+\]$/.test(field)) return field;
  if (/has no action/.test(message)) return `${field}.action`;
  if (/unknown provider/.test(message)) return `${field}.provider`;
  return field;
}
