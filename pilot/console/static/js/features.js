// What this Pilot offers, read from its own OpenAPI document, so pages show a button only
// where the API behind it exists (dry run, draft, replay, run events, costs come in later
// versions).

let loaded = null;

export function loadFeatures() {
  if (!loaded) {
    loaded = fetch("/api/openapi.json", { credentials: "omit", cache: "no-store" })
      .then((response) => (response.ok ? response.json() : { paths: {} }))
      .catch(() => ({ paths: {} }))
      .then((doc) => new Features(doc));
  }
  return loaded;
}

export class Features {
  constructor(doc) {
    this.paths = (doc && doc.paths) || {};
  }

  /** Whether ``method path`` (OpenAPI form, e.g. "/api/runs/{run_id}/replay") is served. */
  has(method, path) {
    return Boolean(this.paths[path] && this.paths[path][method.toLowerCase()]);
  }

  /** Whether ``method path`` takes the query parameter ``name``. */
  hasQuery(method, path, name) {
    const operation = this.paths[path] && this.paths[path][method.toLowerCase()];
    return Boolean(operation && (operation.parameters || []).some((p) => p.in === "query" && p.name === name));
  }

  /** The allowed values of the query parameter ``name`` (its schema's enum), or ``fallback``. */
  queryEnum(method, path, name, fallback) {
    const operation = this.paths[path] && this.paths[path][method.toLowerCase()];
    const parameter = operation && (operation.parameters || []).find((p) => p.in === "query" && p.name === name);
    const values = parameter && parameter.schema && parameter.schema.enum;
    return Array.isArray(values) && values.length ? values.map(String) : fallback;
  }
}
