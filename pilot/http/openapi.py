"""``GET /api/openapi.json``: an OpenAPI 3.1 document built from the app's own routes.

Paths come from ``app.url_map``, so every route appears; what each operation
means comes from ``OPERATIONS`` below, keyed by method and OpenAPI path. A
route with no entry still appears (marked ``x-undocumented``) and
``undocumented(app)`` names it, which the test suite asserts is empty: a new
endpoint cannot be forgotten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from pilot.application import PilotApp, current_pilot
from pilot.http.openapi_schemas import (
    DRAFT_SCHEMAS,
    RUN_STATUSES,
    RUN_TRIGGERS,
    STATIC_SCHEMAS,
    Schema,
    model_schemas,
    provider_schemas,
    ref,
)

API_VERSION = "0.1.0"
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
NOT_API = ("console.",)  # the web console's page and files: HTML for people, not API
_PARAM = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
PATH_PARAMS: dict[str, str] = {
    "plan_id": "the plan's id",
    "run_id": "the run's id",
    "provider": "a provider name, e.g. openai",
    "name": "a provider name, e.g. openai",
    "type_": "a credential type, e.g. api_key or header:X-Api-Key",
}
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "the request is not valid: the message names the field"),
    401: ("Unauthorized", "AUTH_MODE=token and no valid Bearer token was sent"),
    403: ("Forbidden", "a user_id differs from the token's user, or the Host is not allowed (host_not_allowed)"),
    404: ("NotFound", "no such resource for this user"),
    409: ("Conflict", "a record with the same key exists, or a stored credential is unreadable"),
    413: ("PayloadTooLarge", "the body is larger than MAX_REQUEST_BYTES"),
    415: ("UnsupportedMediaType", "the body must be application/json"),
    422: (
        "Unprocessable",
        "no valid plan came out of the model (details: attempts, errors), or the Idempotency-Key was used for "
        "a different request (idempotency_key_reused)",
    ),
    502: ("BadGateway", "the model's server failed, refused the key or could not be reached (details: error)"),
    503: ("ServiceUnavailable", "the database is unavailable or the run queue is full"),
}


@dataclass(frozen=True)
class Op:
    """What one operation does; turned into an OpenAPI Operation Object by ``_operation``."""

    operation_id: str
    summary: str
    tag: str
    ok: int
    ok_description: str
    response: Schema | None = None
    body: Schema | None = None
    body_required: bool = True
    query: tuple[tuple[str, Schema, str], ...] = ()
    errors: tuple[int, ...] = ()
    auth: bool = True
    content_type: str = "application/json"
    extra_responses: dict[int, tuple[str, Schema]] = field(default_factory=dict)
    alt_content: dict[str, Schema] = field(default_factory=dict)  # other media types of the ok answer
    idempotent: bool = False  # takes an Idempotency-Key header (pilot/http/idempotency.py)


PAGING = (
    ("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}, "page size"),
    ("offset", {"type": "integer", "minimum": 0, "default": 0}, "rows to skip"),
)
HOURS = (("hours", {"type": "integer", "minimum": 1, "maximum": 2160, "default": 24}, "window in hours"),)

# fmt: off
OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/api/health"): Op(
        "getHealth", "Liveness and readiness", "operations", 200, "healthy", ref("Health"), auth=False,
        extra_responses={503: ("unhealthy: the database is down", ref("Health"))},
    ),
    ("GET", "/api/providers"): Op(
        "listProviders", "Registered provider names", "providers", 200, "provider names", ref("ProviderList"),
        auth=False,
    ),
    ("GET", "/api/providers/{name}"): Op(
        "getProvider", "A provider's actions (with params JSON Schemas) and credential types", "providers", 200,
        "the provider", ref("ProviderDescription"), errors=(404,), auth=False,
    ),
    ("POST", "/api/provider-credentials/{provider}"): Op(
        "storeCredentials", "Store (encrypted) a provider's credentials", "credentials", 200,
        "stored; values shown masked", ref("CredentialList"), body=ref("CredentialsBody"), errors=(404,),
    ),
    ("GET", "/api/provider-credentials"): Op(
        "listCredentials", "All the caller's credentials, masked", "credentials", 200, "masked credentials",
        ref("CredentialList"),
    ),
    ("GET", "/api/provider-credentials/{provider}"): Op(
        "getCredentials", "The caller's credentials for one provider, masked", "credentials", 200,
        "masked credentials", ref("CredentialList"), errors=(404,),
    ),
    ("DELETE", "/api/provider-credentials/{provider}"): Op(
        "deleteCredentials", "Delete all of the caller's credentials for a provider", "credentials", 204, "deleted",
        errors=(404,),
    ),
    ("DELETE", "/api/provider-credentials/{provider}/{type_}"): Op(
        "deleteCredential", "Delete one credential type", "credentials", 204, "deleted", errors=(404,),
    ),
    ("POST", "/api/provider-credentials/{name}/test"): Op(
        "testCredentials", "Check the stored credentials against the provider", "credentials", 200,
        "the provider's answer (success or not)", ref("ProviderResult"), body={"type": "object"},
        body_required=False, errors=(404, 409),
    ),
    ("POST", "/api/plans"): Op(
        "createPlan", "Create a plan (steps validated against provider schemas)", "plans", 201, "the plan",
        ref("Plan"), body=ref("PlanBody"), idempotent=True,
    ),
    ("GET", "/api/plans"): Op("listPlans", "The caller's plans", "plans", 200, "plans", ref("PlanList"), query=PAGING),
    ("GET", "/api/plans/{plan_id}"): Op(
        "getPlan", "One plan", "plans", 200, "the plan", ref("Plan"), errors=(404,)
    ),
    ("PUT", "/api/plans/{plan_id}"): Op(
        "replacePlan", "Replace a plan", "plans", 200, "the plan", ref("Plan"), body=ref("PlanBody"), errors=(404,)
    ),
    ("PATCH", "/api/plans/{plan_id}"): Op(
        "updatePlan", "Change some of a plan's fields", "plans", 200, "the plan", ref("Plan"), body=ref("PlanPatch"),
        errors=(404,),
    ),
    ("DELETE", "/api/plans/{plan_id}"): Op("deletePlan", "Delete a plan", "plans", 204, "deleted", errors=(404,)),
    ("POST", "/api/plans/{plan_id}/run"): Op(
        "runPlan", "Run a plan now: queued (202), finished with ?wait=true (200), or dry with ?dry_run=true (200)",
        "runs", 202, "the queued run", ref("Run"), body=ref("RunRequest"), body_required=False, errors=(404,),
        idempotent=True,
        query=(
            ("wait", {"type": "boolean", "default": False}, "run inline and return the finished run"),
            ("dry_run", {"type": "boolean", "default": False}, "execute logic steps only; render, validate and "
             "show (redacted) what the other steps would send; no network call, no run or log row"),
        ),
        extra_responses={
            200: ("the finished run (?wait=true) or the dry run (?dry_run=true)",
                  {"oneOf": [ref("RunWithLogs"), ref("DryRun")]}),
        },
    ),
    ("POST", "/api/plans/draft"): Op(
        "draftPlan", "Draft a plan from a prompt with the caller's own model (validated, repaired, disabled)",
        "plans", 200, "a valid draft, not stored", ref("DraftAnswer"), body=ref("DraftRequest"),
        errors=(422, 502), extra_responses={201: ("saved (save: true): plan is the stored row", ref("DraftAnswer"))},
        idempotent=True,
    ),
    ("GET", "/api/plans/{plan_id}/runs"): Op(
        "listRuns", "A plan's run history, newest first", "runs", 200, "runs", ref("RunList"), query=PAGING,
        errors=(404,),
    ),
    ("GET", "/api/runs"): Op(
        "listAllRuns", "The caller's runs across all plans, newest first", "runs", 200,
        "runs; pass next_before as before for the next (older) page", ref("RunSummaryList"),
        query=(
            ("plan_id", {"type": "integer", "minimum": 1}, "only this plan's runs"),
            ("status", {"enum": RUN_STATUSES}, "only runs in this status"),
            ("trigger", {"enum": RUN_TRIGGERS}, "only runs started this way"),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
            ("before", {"type": "integer", "minimum": 1}, "only runs with a smaller id (the next_before cursor)"),
        ),
    ),
    ("POST", "/api/runs/{run_id}/replay"): Op(
        "replayRun", "Replay a finished run from a step, against the plan version it ran, reusing the recorded "
        "results of the steps before it: queued (202) or finished with ?wait=true (200)", "runs", 202,
        "the queued replay (trigger replay, replayed_from)", ref("Run"), body=ref("ReplayRequest"),
        body_required=False, errors=(400, 404, 409), idempotent=True,
        query=(("wait", {"type": "boolean", "default": False}, "run inline and return the finished run"),),
        extra_responses={200: ("the finished replay (?wait=true)", ref("RunWithLogs"))},
    ),
    ("GET", "/api/runs/{run_id}"): Op(
        "getRun", "One run with its per-step logs", "runs", 200, "the run", ref("RunWithLogs"), errors=(404,)
    ),
    ("POST", "/api/plans/{plan_id}/pause"): Op(
        "pausePlan", "Stop a plan's schedule from firing", "scheduler", 200, "the plan", ref("Plan"),
        body={"type": "object"}, body_required=False, errors=(404,),
    ),
    ("POST", "/api/plans/{plan_id}/resume"): Op(
        "resumePlan", "Let a paused schedule fire again", "scheduler", 200, "the plan", ref("Plan"),
        body={"type": "object"}, body_required=False, errors=(404,),
    ),
    ("GET", "/api/scheduler/jobs"): Op(
        "listSchedulerJobs", "The caller's scheduled plans and their next run times, and the scheduler's state "
        "(dev mode without a user: the state and no jobs)", "scheduler", 200, "jobs", ref("SchedulerJobs"),
    ),
    ("POST", "/api/execute-step"): Op(
        "executeStep", "Run one step now; streamed as Server-Sent Events with Accept: text/event-stream or "
        "?stream=true", "runs", 200, "the step ran (successfully or not)", ref("ProviderResult"),
        body=ref("ExecuteStepRequest"), idempotent=True,
        query=(("stream", {"type": "boolean", "default": False}, "answer text/event-stream (as Accept would)"),),
        alt_content={"text/event-stream": ref("StepEventStream")},
    ),
    ("GET", "/api/budget"): Op(
        "getBudget", "The caller's monthly budget (null when none) and this UTC month's recorded spend", "costs", 200,
        "budget and spend", ref("Budget"),
    ),
    ("PUT", "/api/budget"): Op(
        "putBudget", "Set the caller's monthly budget in USD and what happens once it is spent", "costs", 200,
        "budget and spend", ref("Budget"), body=ref("BudgetBody"),
    ),
    ("DELETE", "/api/budget"): Op("deleteBudget", "Remove the caller's budget", "costs", 204, "removed", errors=(404,)),
    ("GET", "/api/metrics/costs"): Op(
        "costMetrics", "The caller's LLM tokens, cost and steps, grouped", "costs", 200, "per group and in total",
        ref("CostReport"),
        query=(
            ("hours", {"type": "integer", "minimum": 1, "maximum": 9600, "default": 24}, "the last N hours"),
            ("since", {"type": "string", "format": "date-time"}, "from this time on (instead of hours)"),
            ("group_by", {"enum": ["provider", "model", "plan", "day"], "default": "provider"}, "grouping"),
        ),
    ),
    ("GET", "/api/logs"): Op(
        "listLogs", "The caller's execution logs, newest first", "logs", 200, "logs", ref("LogList"),
        query=(
            *PAGING,
            ("provider", {"type": "string"}, "only this provider"),
            ("status", {"enum": ["success", "error"]}, "only this status"),
            ("plan_id", {"type": "integer", "minimum": 1}, "only this plan"),
            ("run_id", {"type": "integer", "minimum": 1}, "only this run"),
            ("since", {"type": "string", "format": "date-time"}, "only logs at or after this time"),
        ),
    ),
    ("GET", "/api/metrics/providers"): Op(
        "providerMetrics", "Success rate and avg/max/p95 latency per provider", "logs", 200, "per provider",
        ref("ProviderMetrics"), query=HOURS,
    ),
    ("GET", "/api/metrics/errors"): Op(
        "errorTrends", "Hourly error counts and rates per provider", "logs", 200, "per hour and provider",
        ref("ErrorTrends"), query=HOURS,
    ),
    ("GET", "/metrics"): Op(
        "prometheusMetrics", "Prometheus exposition (text format; OpenMetrics when asked)", "operations", 200,
        "metrics", {"type": "string"}, auth=False, content_type="text/plain",
    ),
    ("GET", "/api/openapi.json"): Op(
        "openapi", "This document", "operations", 200, "an OpenAPI 3.1 document", {"type": "object"}, auth=False
    ),
}
# fmt: on


def openapi_path(rule: str) -> tuple[str, list[tuple[str, str]]]:
    """``/api/plans/<int:plan_id>`` → (``/api/plans/{plan_id}``, [("plan_id", "int")])."""
    params = [(m["name"], m["converter"] or "default") for m in _PARAM.finditer(rule)]
    return _PARAM.sub(lambda m: "{" + m["name"] + "}", rule), params


def _routes(app: Flask) -> list[tuple[str, str, list[tuple[str, str]]]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(NOT_API):
            continue
        path, params = openapi_path(rule.rule)
        found += [(method, path, params) for method in sorted((rule.methods or set()) - IGNORED_METHODS)]
    return sorted(found, key=lambda item: (item[1], item[0]))


def undocumented(app: Flask) -> list[str]:
    """``METHOD /path`` of every route that has no entry in ``OPERATIONS``."""
    return [f"{method} {path}" for method, path, _ in _routes(app) if (method, path) not in OPERATIONS]


def stale(app: Flask) -> list[str]:
    """``METHOD /path`` of every ``OPERATIONS`` entry that no route serves any more."""
    served = {(method, path) for method, path, _ in _routes(app)}
    return [f"{method} {path}" for method, path in OPERATIONS if (method, path) not in served]


def _json(schema: Schema, content_type: str = "application/json") -> dict[str, Any]:
    return {content_type: {"schema": schema}}


def _operation(method: str, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    op = OPERATIONS.get((method, path))
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMS.get(name, name),
            "schema": {"type": "integer", "minimum": 1} if converter == "int" else {"type": "string"},
        }
        for name, converter in params
    ]
    if op is None:
        return {"summary": "(not described yet)", "x-undocumented": True, "parameters": parameters, "responses": {}}
    parameters += [
        {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
        for name, schema, text in op.query
    ]
    ok: dict[str, Any] = {"description": op.ok_description}
    if op.response is not None:
        ok["content"] = _json(op.response, op.content_type)
    for media_type, schema in op.alt_content.items():
        ok.setdefault("content", {})[media_type] = {"schema": schema}
    responses: dict[str, Any] = {str(op.ok): ok}
    for status, (description, schema) in op.extra_responses.items():
        responses[str(status)] = {"description": description, "content": _json(schema)}
    errors = set(op.errors) | {400, 403}  # every request: query and Host checks (routes/guard.py)
    if op.idempotent:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
        errors |= {422}
        responses["409"] = {
            "description": "a request with this Idempotency-Key is still executing (idempotency_key_in_use); "
            "retry after Retry-After seconds. A repeat of a finished request answers as it did, with "
            "Idempotent-Replayed: true",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": _json(ref("Error")),
        }
    if op.auth:
        parameters.append({"$ref": "#/components/parameters/UserId"})
        errors |= {400, 401, 403, 503}
    if op.body is not None:
        errors |= {400, 413, 415}
    for status in sorted(errors):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters,
        "responses": responses,
    }
    if op.body is not None:
        operation["requestBody"] = {"required": op.body_required, "content": _json(op.body)}
    if not op.auth:
        operation["security"] = []
    return operation


def build_document(app: PilotApp) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``app`` as it is routed now."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, params in _routes(app):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, params)
    schemas = {**model_schemas(), **STATIC_SCHEMAS, **DRAFT_SCHEMAS, **provider_schemas(app.registry)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pilot",
            "version": API_VERSION,
            "description": "Self-hosted automation server: provider credentials, plans, runs, schedules, logs. "
            "Errors are always {error: {code, message, details}}. With AUTH_MODE=token send "
            "'Authorization: Bearer <JWT or pilot_ API token>'; with AUTH_MODE=dev send user_id instead.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A JWT (HS256 JWT_SECRET or RS256 from JWKS_URL; the user is its 'sub') or a "
                    "Pilot API token from `flask --app app create-token USER`",
                }
            },
            "parameters": {
                "UserId": {
                    "name": "user_id",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "AUTH_MODE=dev: the acting user (or in the JSON body). "
                    "AUTH_MODE=token: optional, must equal the token's user (else 403)",
                },
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "the same key with the same request within 24 hours returns the first answer "
                    "(status and body, with Idempotent-Replayed: true) without executing again; with another "
                    "request it is 422. Keys are per user",
                },
            },
            "responses": {
                name: {"description": description, "content": _json(ref("Error"))}
                for name, description in ERRORS.values()
            },
        },
        "security": [{"bearerAuth": []}],
        "tags": [{"name": tag} for tag in sorted({op.tag for op in OPERATIONS.values()})],
    }


bp = Blueprint("openapi", __name__)


@bp.get("/api/openapi.json")
def document() -> Response:
    """Built on first use and kept: routes cannot change once the app serves."""
    if "pilot_openapi" not in current_app.extensions:
        current_app.extensions["pilot_openapi"] = build_document(current_pilot())
    return jsonify(current_app.extensions["pilot_openapi"])


def init_app(app: Flask) -> None:
    """Serve the document for ``app``."""
    app.register_blueprint(bp)
