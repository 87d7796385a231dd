"""``GET /api/openapi.json``: an OpenAPI 3.1 document generated from the routes and their ``@validate`` models.

Paths and path parameters come from ``app.url_map`` (each rule's converters); what an
operation takes and answers comes from the ``ApiSpec`` that ``@validate``
(``pilot.http.validation``) left on its view: the same pydantic models that check the
request. A route without ``@validate`` still appears (marked ``x-undocumented``) and
``undocumented(app)`` names it, which the test suite asserts is empty. Security follows
``AUTH_MODE``: a bearer scheme in token mode, none in dev mode (callers name ``user_id``).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from jsonschema import Draft202012Validator
from pydantic import BaseModel, TypeAdapter

from pilot.application import PilotApp, current_pilot
from pilot.http.models import BLANK, COMPONENT_KEY, USER_ID_SCHEMA, Error, Plan, ValidationIssue
from pilot.http.validation import Answer, ApiSpec, spec_of, validate
from pilot.steps.plan_schema import PlanBody, zone_names
from provider_registry import CREDENTIAL_TYPE

API_VERSION = "0.1.0"
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
NOT_API = ("console.",)  # the web console's page and files: HTML for people, not API
REF_TEMPLATE = "#/components/schemas/{model}"
Schema = dict[str, Any]
_PARAM = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
MAX_DB_ID = 2**63 - 1
NAME_SCHEMA: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
PATH_PARAMS: dict[str, tuple[str, Schema]] = {
    "plan_id": ("the plan's id", {"type": "integer", "minimum": 1, "maximum": MAX_DB_ID}),
    "run_id": ("the run's id", {"type": "integer", "minimum": 1, "maximum": MAX_DB_ID}),
    "provider": ("a provider name, e.g. openai", NAME_SCHEMA),
    "name": ("a provider name, e.g. openai", NAME_SCHEMA),
    "type_": (
        "a credential type, e.g. api_key or header:X-Api-Key",
        {"type": "string", "pattern": f"^(?:{CREDENTIAL_TYPE.pattern})$", "not": {"const": "test"}},
    ),
}
RETRY_AFTER: Schema = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "the request is not valid: the message names the field; for invalid input details is a list of "
        "ValidationIssue {loc, msg, field}",
    ),
    401: ("Unauthorized", "AUTH_MODE=token and no valid Bearer token was sent"),
    403: ("Forbidden", "a user_id differs from the token's user, or the Host is not allowed (host_not_allowed)"),
    404: ("NotFound", "no such resource for this user"),
    405: ("MethodNotAllowed", "the path has no such method (OPTIONS answers which it has)"),
    409: (
        "Conflict",
        "a record with the same key exists, a stored credential is unreadable, or the plan's state "
        "does not allow it (no schedule to pause)",
    ),
    413: ("PayloadTooLarge", "the body is larger than MAX_REQUEST_BYTES"),
    415: ("UnsupportedMediaType", "the body must be application/json"),
    422: (
        "Unprocessable",
        "no valid plan came out of the model (details: attempts, errors), or the Idempotency-Key was used for "
        "a different request (idempotency_key_reused)",
    ),
    429: (
        "TooManyRequests",
        "run_queue_full: the user already has RUN_QUEUE_MAX_PER_USER runs queued; retry after the Retry-After "
        "header's seconds",
    ),
    502: ("BadGateway", "the model's server failed, refused the key or could not be reached (details: error)"),
    503: ("ServiceUnavailable", "the database is unavailable"),
}


# Views outside the HTTP layer (pilot/ops may not import it), described here by endpoint.
OUTSIDE_VIEWS: dict[str, ApiSpec] = {
    "metrics.exposition": ApiSpec(
        operation_id="prometheusMetrics",
        summary="Prometheus exposition (text format; OpenMetrics when asked)",
        tag="operations",
        responses={200: Answer("metrics", {"type": "string"}, media_type="text/plain")},
        auth=False,
    ),
}


def openapi_path(rule: str) -> tuple[str, list[tuple[str, str]]]:
    """``/api/plans/<int:plan_id>`` → (``/api/plans/{plan_id}``, [("plan_id", "int")])."""
    params = [(m["name"], m["converter"] or "default") for m in _PARAM.finditer(rule)]
    return _PARAM.sub(lambda m: "{" + m["name"] + "}", rule), params


def _routes(app: Flask) -> list[tuple[str, str, list[tuple[str, str]], ApiSpec | None]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(NOT_API):
            continue
        path, params = openapi_path(rule.rule)
        spec = spec_of(app.view_functions.get(rule.endpoint)) or OUTSIDE_VIEWS.get(rule.endpoint)
        found += [(method, path, params, spec) for method in sorted((rule.methods or set()) - IGNORED_METHODS)]
    return sorted(found, key=lambda item: (item[1], item[0]))


def undocumented(app: Flask) -> list[str]:
    """``METHOD /path`` of every route whose view has no ``@validate``."""
    return [f"{method} {path}" for method, path, _, spec in _routes(app) if spec is None]


class _Components:
    """The schemas the operations refer to, collected as models are met."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}

    def schema(self, model: Any) -> Schema:
        """A reference to ``model`` (a pydantic model) or its inline schema (any other type, or a dict)."""
        if model is None:
            return {}
        if isinstance(model, dict):
            return model
        if isinstance(model, type) and issubclass(model, BaseModel):
            if model.__name__ not in self.schemas:
                self._add(model.__name__, model.model_json_schema(ref_template=REF_TEMPLATE))
            return {"$ref": REF_TEMPLATE.format(model=model.__name__)}
        generated = TypeAdapter(model).json_schema(ref_template=REF_TEMPLATE)
        for key, value in _user_ids(generated.pop("$defs", {})).items():
            self.schemas.setdefault(key, value)
        return _resolve(generated)

    def _add(self, name: str, generated: Schema) -> None:
        for key, value in _user_ids(generated.pop("$defs", {})).items():
            self.schemas.setdefault(key, value)
        self.schemas[name] = _user_ids({name: generated})[name]


# pydantic leaves a constraint under its own name when a before-validator wraps an optional number
BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _resolve(node: Any) -> Any:
    """``{x-pilot-component: Name}`` (``pilot.http.models.component``) → ``{$ref: #/components/schemas/Name}``;
    numeric bounds under their JSON Schema names."""
    if isinstance(node, dict):
        if COMPONENT_KEY in node:
            return {"$ref": REF_TEMPLATE.format(model=node[COMPONENT_KEY])}
        numeric = node.get("type") in ("integer", "number")
        return {(BOUNDS.get(key, key) if numeric else key): _resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value) for value in node]
    return node


def _user_ids(schemas: dict[str, Schema]) -> dict[str, Schema]:
    """Every body's ``user_id`` documented as auth reads it (the domain models take it as Any)."""
    for name, schema in schemas.items():
        schema = schemas[name] = _resolve(schema)
        if isinstance(schema.get("properties"), dict) and "user_id" in schema["properties"]:
            schema["properties"]["user_id"] = {"anyOf": [USER_ID_SCHEMA, {"type": "null"}]}  # null: not named
    return schemas


def _query_parameters(model: type[BaseModel]) -> list[Schema]:
    generated = _resolve(model.model_json_schema())
    parameters = []
    for name, schema in generated.get("properties", {}).items():
        schema = {key: value for key, value in schema.items() if key != "title"}
        options = [option for option in schema.pop("anyOf", []) if option != {"type": "null"}]
        if options:
            schema = {**options[0], **schema} if len(options) == 1 else {"anyOf": options, **schema}
        if schema.get("default") is None:
            schema.pop("default", None)
        if schema.get("type") == "integer":
            schema.setdefault("maximum", MAX_DB_ID)  # ids and counts the database can hold
        if schema.pop(BLANK, False):  # ?name= (empty) means the parameter is absent
            keep = {key: schema.pop(key) for key in ("description", "deprecated", "default") if key in schema}
            schema = {"anyOf": [schema, {"const": ""}], **keep}
        description = schema.pop("description", name)
        deprecated = schema.pop("deprecated", False)
        parameter = {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
        if deprecated:
            parameter["deprecated"] = True
        parameters.append(parameter)
    return parameters


def _answer(components: _Components, answer: Answer) -> Schema:
    out: Schema = {"description": answer.description}
    content = {}
    if answer.model is not None:
        content[answer.media_type] = {"schema": components.schema(answer.model)}
    for media_type, model in answer.alternatives.items():
        content[media_type] = {"schema": components.schema(model)}
    if content:
        out["content"] = content
    if answer.headers:
        out["headers"] = dict(answer.headers)
    return out


def _error_statuses(spec: ApiSpec, token_mode: bool) -> set[int]:
    errors = set(spec.errors) | {400, 403}  # every request: query and Host checks (pilot/http/guard.py)
    if spec.idempotent:
        errors |= {422}
    if spec.auth:
        errors |= {400, 403, 503} | ({401} if token_mode else set())
    if spec.body is not None:
        errors |= {400, 413, 415}
    return errors


def _operation(
    components: _Components, params: list[tuple[str, str]], spec: ApiSpec | None, token_mode: bool
) -> Schema:
    parameters: list[Schema] = []
    for name, converter in params:
        description, schema = PATH_PARAMS.get(name, (name, {"type": "string"}))
        if converter == "int":
            schema = {"type": "integer", "minimum": 1, "maximum": MAX_DB_ID}
        parameters.append({"name": name, "in": "path", "required": True, "description": description, "schema": schema})
    if spec is None:
        return {"summary": "(not described yet)", "x-undocumented": True, "parameters": parameters, "responses": {}}
    if spec.query is not None:
        parameters += _query_parameters(spec.query)
    for name, schema, description in spec.headers:
        parameters.append(
            {"name": name, "in": "header", "required": False, "description": description, "schema": schema}
        )
    responses: Schema = {str(status): _answer(components, answer) for status, answer in spec.responses.items()}
    if spec.idempotent:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
        responses["409"] = {
            "description": "a request with this Idempotency-Key is still executing (idempotency_key_in_use); "
            "retry after Retry-After seconds. A repeat of a finished request answers as it did, with "
            "Idempotent-Replayed: true",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": {"application/json": {"schema": components.schema(Error)}},
        }
    if spec.auth:
        parameters.append({"$ref": "#/components/parameters/UserId"})
    for status in sorted(_error_statuses(spec, token_mode)):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/{ERRORS[status][0]}"})
    operation: Schema = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "tags": [spec.tag],
        "parameters": parameters,
        "responses": responses,
    }
    if spec.description:
        operation["description"] = spec.description
    if spec.body is not None:
        body_schema = components.schema(spec.body)
        operation["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": body_schema}},
        }
    if not spec.auth and token_mode:
        operation["security"] = []
    return operation


def build_document(app: PilotApp) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``app`` as it is routed now."""
    token_mode = app.settings.auth_mode == "token"
    components = _Components()
    for model in (Error, ValidationIssue, PlanBody, Plan):  # named by component() references
        components.schema(model)
    paths: dict[str, dict[str, Any]] = {}
    tags: set[str] = set()
    for method, path, params, spec in _routes(app):
        paths.setdefault(path, {})[method.lower()] = _operation(components, params, spec, token_mode)
        if spec is not None:
            tags.add(spec.tag)
    instances = _per_provider_credentials(paths, app.registry)
    schemas = {**components.schemas, **provider_schemas(app.registry), "TimeZone": _time_zones()}
    user = "'Authorization: Bearer <JWT or pilot_ API token>'" if token_mode else "user_id (query or JSON body)"
    origins = app.settings.cors_origins
    cors = (
        f"CORS for {', '.join(origins)} (a preflight answers the methods each path has)"
        if origins
        else "no CORS (CORS_ORIGINS is empty)"
    )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Pilot",
            "version": API_VERSION,
            "description": "Self-hosted automation server: provider credentials, plans, runs, schedules, logs. "
            "Errors are always {error: {code, message, details}}. "
            f"This server (AUTH_MODE={app.settings.auth_mode}) learns the caller from {user}. "
            f"Browsers on other origins: {cors}.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": {
                "UserId": {
                    "name": "user_id",
                    "in": "query",
                    "required": False,
                    "schema": USER_ID_SCHEMA,
                    "description": "AUTH_MODE=dev: the acting user (or in the JSON body). "
                    "AUTH_MODE=token: optional, must equal the token's user (else 403)",
                },
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e](?:[\\x20-\\x7e]{0,253}[\\x21-\\x7e])?$"},
                    "description": "the same key with the same request within 24 hours returns the first answer "
                    "(status and body, with Idempotent-Replayed: true) without executing again; with another "
                    "request it is 422. Keys are per user",
                },
            },
            "responses": {
                name: {
                    "description": description,
                    "content": {"application/json": {"schema": components.schema(Error)}},
                    **(
                        {"headers": {"Retry-After": {"schema": {"type": "integer"}}}}
                        if name == "TooManyRequests"
                        else {}
                    ),
                }
                for name, description in ERRORS.values()
            },
        },
        "tags": [{"name": tag} for tag in sorted(tags)],
        INSTANCES: instances,
    }
    if token_mode:
        document["components"]["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "A JWT (HS256 JWT_SECRET or RS256 from JWKS_URL; the user is its 'sub') or a "
                "Pilot API token from `flask --app app create-token USER`",
            }
        }
        document["security"] = [{"bearerAuth": []}]
    return document


CREDENTIALS_PATH = "/api/provider-credentials/{provider}"
INSTANCES = "x-pilot-instances"  # top level: {concrete path: the url-map template it stands for}


def _per_provider_credentials(paths: dict[str, dict[str, Any]], registry: Any) -> dict[str, str]:
    """``/api/provider-credentials/<name>`` for each provider, its POST body with the provider's
    ``credentials_schema`` (which types and values it stores); ``{provider}`` is then any other name (404)."""
    template = paths.get(CREDENTIALS_PATH)
    if template is None:
        return {}
    names = registry.names()
    for name in names:
        item: dict[str, Any] = copy.deepcopy(template)
        for operation in item.values():
            operation["operationId"] += name.title().replace("_", "")
            operation["parameters"] = [p for p in operation["parameters"] if p.get("in") != "path"]
            body = operation.get("requestBody")
            if body is not None:
                credentials = {"properties": {"credentials": registry.get(name).credentials_schema()}}
                schema = body["content"]["application/json"]["schema"]
                body["content"]["application/json"]["schema"] = {"allOf": [schema, credentials]}
        paths[f"/api/provider-credentials/{name}"] = item
    every = {"properties": {"credentials": {"allOf": [registry.get(name).credentials_schema() for name in names]}}}
    for operation in template.values():
        body = operation.get("requestBody")
        if body is not None:  # through {provider}: what every provider takes; its own path says what it takes
            schema = body["content"]["application/json"]["schema"]
            body["content"]["application/json"]["schema"] = {"allOf": [schema, every]}
    return {f"/api/provider-credentials/{name}": CREDENTIALS_PATH for name in names}


def _time_zones() -> Schema:
    return {"type": "string", "enum": sorted(zone_names()), "description": "an IANA time zone name"}


def _takes_no_params(schema: Schema) -> bool:
    return Draft202012Validator(schema).is_valid({})


def provider_schemas(registry: Any) -> dict[str, Schema]:
    """``<provider>.<action>.params`` for every action, and ``ProviderStep``: one of those step shapes."""
    schemas: dict[str, Schema] = {}
    variants: list[Schema] = []
    for name in registry.names():
        described = registry.get(name).describe()
        for action, spec in described["actions"].items():
            key = f"{name}.{action}.params"
            # params may be left out (they are then {}) only where {} is valid for the action
            required = ["provider", "action", *([] if _takes_no_params(spec["params_schema"]) else ["params"])]
            schemas[key] = {**spec["params_schema"], "description": spec["description"]}
            variants.append(
                {
                    "type": "object",
                    "properties": {
                        "provider": {"const": name},
                        "action": {"const": action},
                        "params": {"$ref": REF_TEMPLATE.format(model=key)},
                    },
                    "required": required,
                    "title": f"{name}.{action}",
                }
            )
    schemas["ProviderStep"] = {
        "allOf": [{"$ref": REF_TEMPLATE.format(model="Step")}],
        "oneOf": variants,
        "description": "A step whose params match its provider action's schema. In saved plans a "
        "'{{ expression }}' string may stand for any param; it is checked after rendering.",
    }
    return schemas


bp = Blueprint("openapi", __name__)


@bp.get("/api/openapi.json")
@validate(
    summary="This document",
    tag="operations",
    responses={200: Answer("an OpenAPI 3.1 document", {"type": "object"})},
    auth=False,
    operation_id="openapi",
)
def document() -> Response:
    """Built on first use and kept: routes cannot change once the app serves."""
    if "pilot_openapi" not in current_app.extensions:
        current_app.extensions["pilot_openapi"] = build_document(current_pilot())
    return jsonify(current_app.extensions["pilot_openapi"])


def init_app(app: Flask) -> None:
    """Serve the document for ``app``."""
    app.register_blueprint(bp)
