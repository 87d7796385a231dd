"""JSON Schemas (OpenAPI 3.1 = JSON Schema 2020-12) of Pilot's request and response bodies.

Plan and step bodies come from the pydantic models that validate them
(``plan_schema``), so the document cannot drift from the validation; the rest
mirror what the routes serialize. Provider params come from the registry at
build time (``provider_schemas``).
"""

from __future__ import annotations

from typing import Any

from pilot.costs.schemas import BudgetBody
from pilot.http.routes.drafts import DraftBody
from pilot.steps.plan_schema import PlanBody, Step
from provider_registry import CREDENTIAL_TYPE

Schema = dict[str, Any]
REF_TEMPLATE = "#/components/schemas/{model}"
RUN_STATUSES = ["queued", "running", "success", "error", "interrupted", "skipped"]
RUN_TRIGGERS = ["manual", "schedule", "api", "replay"]


def ref(name: str) -> Schema:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
ID: Schema = {"type": "integer", "minimum": 1}
USER_ID: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "description": "AUTH_MODE=dev: the acting user. AUTH_MODE=token: optional; must equal the token's user (else 403)",
}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def _paged(key: str, item: str) -> Schema:
    return _obj(
        {key: {"type": "array", "items": ref(item)}, "limit": {"type": "integer"}, "offset": {"type": "integer"}},
        [key, "limit", "offset"],
    )


def model_schemas() -> dict[str, Schema]:
    """PlanBody, Step, Schedule and RetryPolicy as the pydantic models define them."""
    schemas: dict[str, Schema] = {}
    for model in (PlanBody, Step, BudgetBody):
        generated = model.model_json_schema(ref_template=REF_TEMPLATE)
        schemas.update(generated.pop("$defs", {}))
        schemas[model.__name__] = generated
    schemas["PlanBody"]["properties"]["user_id"] = USER_ID
    schemas["BudgetBody"]["properties"]["user_id"] = USER_ID
    patch = {key: value for key, value in schemas["PlanBody"].items() if key not in {"required", "title"}}
    patch["description"] = "Any subset of a plan's fields; the merged plan is validated as a whole."
    schemas["PlanPatch"] = patch
    return schemas


ERROR_SCHEMA: Schema = _obj(
    {
        "error": _obj(
            {
                "code": {"type": "string", "description": "machine-readable, e.g. invalid_request, not_found"},
                "message": {"type": "string", "description": "for humans; never contains secrets or SQL"},
                "details": {"description": "optional structure, e.g. [{field, message}] for validation errors"},
            },
            ["code", "message", "details"],
        )
    },
    ["error"],
    description="Every error response: {error: {code, message, details}}, never a traceback.",
)

PROVIDER_RESULT: Schema = _obj(
    {
        "success": {"type": "boolean"},
        "data": {"description": "the action's output (provider-specific)"},
        "error": nullable(
            _obj(
                {"code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"}},
                ["code", "message", "retryable"],
            )
        ),
        "latency_ms": {"type": "number", "description": "provider time, retries included"},
        "metadata": _obj(
            {
                "http_status": {"type": "integer"},
                "model": {"type": "string"},
                "usage": {"type": "object"},
                "attempts": {"type": "integer", "minimum": 1},
                "retry_after": {"type": "number"},
                "outcome_unknown": {"type": "boolean", "description": "the request may have taken effect"},
                "cost": _obj(
                    {
                        "model": {"type": "string"},
                        "input_tokens": nullable({"type": "integer", "minimum": 0}),
                        "output_tokens": nullable({"type": "integer", "minimum": 0}),
                        "cost_usd": nullable({"type": "number", "minimum": 0}),
                        "priced_as": nullable({"type": "string"}),
                        "price_checked": nullable({"type": "string", "format": "date"}),
                    },
                    ["model", "input_tokens", "output_tokens", "cost_usd"],
                    description="LLM steps: the model, its tokens and USD at the price table's rates (cost null "
                    "when the model has no price)",
                ),
                "budget_warning": {"type": "string", "description": "the step ran over a warn budget"},
            },
            additionalProperties=True,
        ),
    },
    ["success", "data", "error", "latency_ms", "metadata"],
    description="The outcome of one step; 200 whenever the step ran, successful or not.",
)

PLAN: Schema = _obj(
    {
        "id": ID,
        "user_id": {"type": "string"},
        "name": {"type": "string"},
        "original_prompt": nullable({"type": "string"}),
        "steps": {"type": "array", "items": ref("Step")},
        "schedule": nullable(ref("Schedule")),
        "timezone": {"type": "string"},
        "enabled": {"type": "boolean"},
        "max_cost_usd": nullable({"type": "number", "minimum": 0}),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "provenance": nullable(ref("Provenance")),
    },
    ["id", "user_id", "name", "steps", "schedule", "timezone", "enabled", "created_at", "updated_at"],
    additionalProperties=True,
)

STEP_OUTCOME: Schema = _obj(
    {
        "index": {"type": "integer"},
        "id": nullable({"type": "string"}),
        "provider": {"type": "string"},
        "action": {"type": "string"},
        "status": {"enum": ["success", "error", "skipped", "running"]},
        "result": ref("ProviderResult"),
        "reused_from_run": {**ID, "description": "a replay's reused step: the run whose recorded result it is"},
    },
    ["index", "status"],
    additionalProperties=True,
)

RUN: Schema = _obj(
    {
        "id": ID,
        "plan_id": ID,
        "user_id": {"type": "string"},
        "trigger": {"enum": RUN_TRIGGERS},
        "scheduled_for": nullable(TIMESTAMP),
        "status": {"enum": RUN_STATUSES},
        "created_at": TIMESTAMP,
        "started_at": nullable(TIMESTAMP),
        "finished_at": nullable(TIMESTAMP),
        "step_results": {"type": "array", "items": ref("StepOutcome")},
        "error": nullable({"type": "string"}),
        "input": {"type": "object", "description": "the input the run was accepted with ({{ input.… }})"},
        "plan_version_id": nullable({**ID, "description": "the immutable version of the plan's steps it executes"}),
        "replayed_from": nullable({**ID, "description": "trigger replay: the run it replays"}),
        "replay": nullable(
            _obj(
                {
                    "from_index": {"type": "integer", "minimum": 0},
                    "from_step": {"type": ["string", "integer"]},
                    "params": {"type": "object", "description": "param overrides by step index"},
                    "reused": {"type": "array", "items": ref("StepOutcome")},
                },
                description="trigger replay: where it starts, its overrides and the recorded results it reuses",
            )
        ),
    },
    ["id", "plan_id", "trigger", "status", "created_at", "step_results"],
    additionalProperties=True,
)

RUN_SUMMARY: Schema = _obj(
    {
        "id": ID,
        "plan_id": ID,
        "plan_name": nullable({"type": "string"}),
        "user_id": {"type": "string"},
        "trigger": {"enum": RUN_TRIGGERS},
        "scheduled_for": nullable(TIMESTAMP),
        "status": {"enum": RUN_STATUSES},
        "created_at": TIMESTAMP,
        "started_at": nullable(TIMESTAMP),
        "finished_at": nullable(TIMESTAMP),
        "error": nullable({"type": "string"}),
        "plan_version_id": nullable(ID),
        "replayed_from": nullable(ID),
    },
    ["id", "plan_id", "plan_name", "trigger", "status", "created_at"],
    description="A run as lists show it: no step results (GET /api/runs/{run_id} has them).",
)

LOG_ENTRY: Schema = _obj(
    {
        "id": ID,
        "plan_id": nullable(ID),
        "run_id": nullable(ID),
        "step_index": nullable({"type": "integer"}),
        "step_id": nullable({"type": "string"}),
        "provider": {"type": "string"},
        "action": {"type": "string"},
        "status": {"enum": ["success", "error"]},
        "latency_ms": {"type": "number"},
        "error_code": nullable({"type": "string"}),
        "error": nullable({"type": "string"}),
        "attempt": {"type": "integer"},
        "input": {"description": "rendered params, secrets redacted"},
        "output": {"description": "data and metadata, truncated past 32,000 characters"},
        "timestamp": TIMESTAMP,
        "model": nullable({"type": "string", "description": "LLM steps: the model billed (null for other steps)"}),
        "input_tokens": nullable({"type": "integer", "minimum": 0}),
        "output_tokens": nullable({"type": "integer", "minimum": 0}),
        "cost_usd": nullable(
            {"type": "number", "minimum": 0, "description": "null when the model has no price or no usage was reported"}
        ),
    },
    ["id", "provider", "action", "status", "latency_ms", "timestamp"],
)

CREDENTIAL: Schema = _obj(
    {
        "provider": {"type": "string"},
        "type": {"type": "string"},
        "masked_value": {"type": "string", "description": "e.g. sk-…0001; the secret itself is never returned"},
        "readable": {"type": "boolean", "description": "false when no configured FERNET_KEY decrypts it"},
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    },
    ["provider", "type", "masked_value", "readable", "created_at", "updated_at"],
)

CIRCUIT_STATE: Schema = {"enum": ["closed", "half_open", "open"]}
CIRCUIT_BREAKERS: Schema = _obj(
    {
        "enabled": {"type": "boolean", "description": "false when BREAKER_FAILURES is 0"},
        "failures": {"type": "integer", "description": "BREAKER_FAILURES"},
        "window_seconds": {"type": "number"},
        "cooldown_seconds": {"type": "number"},
        "hosts": {
            "type": "array",
            "items": _obj(
                {
                    "host": {"type": "string"},
                    "state": CIRCUIT_STATE,
                    "consecutive_failures": {"type": "integer", "minimum": 0},
                    "opened_at": nullable(TIMESTAMP),
                    "retry_in_s": nullable({"type": "number"}),
                },
                ["host", "state", "consecutive_failures", "opened_at", "retry_in_s"],
            ),
            "description": "the provider's default endpoints, by name",
        },
        "other_hosts": _obj(
            {"tracked": {"type": "integer"}, "open": {"type": "integer"}, "half_open": {"type": "integer"}},
            ["tracked", "open", "half_open"],
            description="hosts users named (base_url credentials, webhook URLs): counted, never shown",
        ),
    },
    ["enabled", "failures", "window_seconds", "cooldown_seconds", "hosts", "other_hosts"],
    description="This process's circuit breakers for the provider (state is per process).",
)

BUDGET: Schema = _obj(
    {
        "budget": nullable(
            _obj(
                {
                    "monthly_usd": {"type": "number", "minimum": 0},
                    "on_exceed": {"enum": ["refuse", "warn"]},
                    "created_at": TIMESTAMP,
                    "updated_at": TIMESTAMP,
                },
                ["monthly_usd", "on_exceed", "created_at", "updated_at"],
            )
        ),
        "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$", "description": "the current UTC month"},
        "spent_usd": {"type": "number", "minimum": 0, "description": "recorded spend of the month so far"},
        "priced_steps": {"type": "integer", "minimum": 0},
        "remaining_usd": nullable({"type": "number", "minimum": 0}),
        "exceeded": {"type": "boolean", "description": "spend at or over the budget"},
    },
    ["budget", "month", "spent_usd", "priced_steps", "remaining_usd", "exceeded"],
)

_COST_TOTALS: dict[str, Schema] = {
    "input_tokens": {"type": "integer", "minimum": 0},
    "output_tokens": {"type": "integer", "minimum": 0},
    "cost_usd": {"type": "number", "minimum": 0},
    "steps": {"type": "integer", "minimum": 0, "description": "LLM steps (failed and refused ones included)"},
    "unpriced_steps": {"type": "integer", "minimum": 0, "description": "steps whose cost is unknown (null)"},
}
COST_REPORT: Schema = _obj(
    {
        "since": TIMESTAMP,
        "group_by": {"enum": ["provider", "model", "plan", "day"]},
        "groups": {
            "type": "array",
            "items": _obj(
                {
                    "provider": {"type": "string"},
                    "model": {"type": "string"},
                    "plan_id": nullable(ID),
                    "plan_name": nullable({"type": "string"}),
                    "day": {"type": "string", "format": "date"},
                    **_COST_TOTALS,
                },
                list(_COST_TOTALS),
                description="the group's key fields (provider; provider and model; plan_id and plan_name; day), "
                "then its totals",
            ),
        },
        "total": _obj(_COST_TOTALS, list(_COST_TOTALS)),
    },
    ["since", "group_by", "groups", "total"],
)

CREDENTIAL_TYPE_NAME: Schema = {"type": "string", "pattern": f"^(?:{CREDENTIAL_TYPE.pattern})$"}

STATIC_SCHEMAS: dict[str, Schema] = {
    "Error": ERROR_SCHEMA,
    "ProviderResult": PROVIDER_RESULT,
    "Health": _obj(
        {
            "status": {"enum": ["healthy", "unhealthy"]},
            "timestamp": TIMESTAMP,
            "database": _obj({"status": {"enum": ["ok", "down"]}}, ["status"], additionalProperties=True),
            "scheduler": _obj(
                {"status": {"enum": ["running", "stopped", "disabled"]}}, ["status"], additionalProperties=True
            ),
            # Dev mode only: token mode's unauthenticated health shows no more than the fields above.
            "providers": {"type": "array", "items": {"type": "string"}},
            "auth_mode": {"enum": ["dev", "token"], "description": "how callers identify themselves"},
        },
        ["status", "timestamp", "database", "scheduler", "auth_mode"],
    ),
    "ProviderList": _obj({"providers": {"type": "array", "items": {"type": "string"}}}, ["providers"]),
    "ProviderDescription": _obj(
        {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "actions": {
                "type": "object",
                "additionalProperties": _obj(
                    {"description": {"type": "string"}, "params_schema": {"type": "object"}},
                    ["description", "params_schema"],
                ),
            },
            "credential_types": {
                "type": "object",
                "additionalProperties": _obj(
                    {"description": {"type": "string"}, "required": {"type": "boolean"}, "secret": {"type": "boolean"}},
                    ["description", "required", "secret"],
                ),
            },
            "circuit_breakers": ref("CircuitBreakers"),
        },
        ["name", "description", "actions", "credential_types", "circuit_breakers"],
    ),
    "CircuitBreakers": CIRCUIT_BREAKERS,
    "Budget": BUDGET,
    "CostReport": COST_REPORT,
    "CredentialsBody": _obj(
        {
            "user_id": USER_ID,
            "credentials": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": CREDENTIAL_TYPE_NAME,
                "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 10_000},
                "description": "{type: secret}, e.g. {api_key: sk-…}; stored encrypted",
            },
        },
        ["credentials"],
    ),
    "Credential": CREDENTIAL,
    "CredentialList": _obj(
        {"provider": {"type": "string"}, "credentials": {"type": "array", "items": ref("Credential")}},
        ["credentials"],
    ),
    "Plan": PLAN,
    "PlanList": _paged("plans", "Plan"),
    "RunRequest": _obj(
        {
            "user_id": USER_ID,
            "input": {"type": "object", "description": "available to templates as input.*"},
            "trigger": {"enum": ["manual", "api"], "default": "manual"},
        }
    ),
    "ReplayRequest": _obj(
        {
            "user_id": USER_ID,
            "from_step": {
                "type": ["string", "integer"],
                "description": "a step id or index of the run's plan version; default: its first failed or "
                "interrupted step. The steps before it reuse their recorded results: no call, no cost, no log row",
            },
            "params": {
                "type": "object",
                "additionalProperties": {"type": "object"},
                "description": "{<step id, or index of a step without id>: params merged into that step's}; "
                "validated like a plan save; only for steps at or after from_step",
            },
        }
    ),
    "StepOutcome": STEP_OUTCOME,
    "Run": RUN,
    "RunWithLogs": {
        "allOf": [
            ref("Run"),
            _obj(
                {
                    "plan_version": nullable(
                        {"type": "integer", "minimum": 1, "description": "the number of the plan version it ran"}
                    ),
                    "usage": ref("RunUsage"),
                    "logs": {"type": "array", "items": ref("LogEntry")},
                },
                ["plan_version", "usage", "logs"],
            ),
        ]
    },
    "RunUsage": _obj(
        {
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
            "cost_usd": {"type": "number", "minimum": 0, "description": "of the steps with a known price"},
            "llm_steps": {"type": "integer", "minimum": 0},
            "unpriced_steps": {"type": "integer", "minimum": 0, "description": "LLM steps whose cost is unknown"},
        },
        ["input_tokens", "output_tokens", "cost_usd", "llm_steps", "unpriced_steps"],
        description="The run's LLM usage and cost, summed over its steps' log rows.",
    ),
    "RunList": _paged("runs", "Run"),
    "RunSummary": RUN_SUMMARY,
    "RunSummaryList": _obj(
        {
            "runs": {"type": "array", "items": ref("RunSummary")},
            "limit": {"type": "integer"},
            "next_before": nullable(ID),
        },
        ["runs", "limit", "next_before"],
    ),
    "LogEntry": LOG_ENTRY,
    "LogList": _paged("logs", "LogEntry"),
    "ExecuteStepRequest": _obj(
        {
            "user_id": USER_ID,
            "step": ref("Step"),
            "step_results": {
                "type": "object",
                "description": "earlier results, referenced as steps.<key> / step_results.<key>",
            },
            "input": {"type": "object"},
        },
        ["step"],
        description="step.params must match the action's schema (see ProviderStep) after template rendering.",
    ),
    "ProviderMetrics": _obj(
        {
            "window_hours": {"type": "integer"},
            "providers": {
                "type": "array",
                "items": _obj(
                    {
                        "provider": {"type": "string"},
                        "total_executions": {"type": "integer"},
                        "successful": {"type": "integer"},
                        "failed": {"type": "integer"},
                        "success_rate": {"type": "number"},
                        "avg_latency_ms": {"type": "number"},
                        "max_latency_ms": {"type": "number"},
                        "p95_latency_ms": {"type": "number"},
                    }
                ),
            },
        },
        ["window_hours", "providers"],
    ),
    "ErrorTrends": _obj(
        {
            "window_hours": {"type": "integer"},
            "trends": {
                "type": "array",
                "items": _obj(
                    {
                        "hour": TIMESTAMP,
                        "provider": {"type": "string"},
                        "total": {"type": "integer"},
                        "errors": {"type": "integer"},
                        "error_rate": {"type": "number"},
                    }
                ),
            },
        },
        ["window_hours", "trends"],
    ),
    "SchedulerJobs": _obj(
        {
            "jobs": {
                "type": "array",
                "items": _obj(
                    {
                        "id": {"type": "string"},
                        "plan_id": ID,
                        "name": {"type": "string"},
                        "next_run_time": nullable(TIMESTAMP),
                        "trigger": {"type": "string", "examples": ["cron[0 9 * * 1-5 Europe/Paris]", "interval[300s]"]},
                        "paused": {"type": "boolean"},
                    },
                    ["id", "plan_id", "next_run_time", "trigger"],
                ),
            },
            "scheduler": _obj(
                {
                    "status": {"enum": ["running", "stopped", "disabled", "not_started"]},
                    "jobs": {"type": "integer", "description": "schedules loaded in this process (every user's)"},
                },
                ["status", "jobs"],
            ),
        },
        ["jobs", "scheduler"],
    ),
}


def _draft_request() -> Schema:
    """The request as ``DraftBody`` (the model that validates it) defines it."""
    schema = DraftBody.model_json_schema(ref_template=REF_TEMPLATE)
    schema["properties"]["user_id"] = USER_ID
    return schema


DRY_STEP: Schema = _obj(
    {
        "index": {"type": "integer"},
        "id": nullable({"type": "string"}),
        "provider": nullable({"type": "string"}),
        "action": nullable({"type": "string"}),
        "status": {
            "enum": ["success", "error", "would_run", "skipped", "unresolved"],
            "description": "success/error: a logic step, executed; would_run: a step with effects, not executed; "
            "skipped: its when was false; unresolved: it reads an output the dry run did not produce",
        },
        "params": {"description": "the rendered params, as they would be sent (secrets redacted)"},
        "result": ref("ProviderResult"),
        "error": {"type": "object"},
        "missing_credentials": {"type": "array", "items": {"type": "string"}},
    },
    ["index", "status"],
    additionalProperties=True,
)
DRY_RUN: Schema = _obj(
    {
        "dry_run": {"const": True},
        "plan_id": ID,
        "status": {"enum": ["success", "error"]},
        "error": nullable({"type": "string"}),
        "steps": {"type": "array", "items": ref("DryRunStep")},
    },
    ["dry_run", "status", "error", "steps"],
    description="Nothing was sent, spent or written; later steps saw {dry_run: true} for outputs not produced.",
)
DRAFT_ATTEMPT: Schema = _obj(
    {
        "attempt": {"type": "integer", "minimum": 1},
        "valid": {"type": "boolean"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "validation errors sent back"},
        "usage": {"type": "object", "description": "the vendor's token counts for this call"},
        "latency_ms": {"type": "number"},
    },
    ["attempt", "valid", "errors", "usage"],
)
DRAFT_SCHEMAS: dict[str, Schema] = {
    "DraftRequest": _draft_request(),
    "DraftAttempt": DRAFT_ATTEMPT,
    "Provenance": _obj(
        {
            "provider": {"type": "string"},
            "model": {"type": "string"},
            "attempts": {"type": "integer", "minimum": 1},
            "drafted_at": TIMESTAMP,
        },
        ["provider", "model", "attempts", "drafted_at"],
        description="Where a drafted plan came from (POST /api/plans/draft with save: true).",
    ),
    "DraftAnswer": _obj(
        {
            "plan": {
                "oneOf": [ref("Plan"), ref("PlanBody")],
                "description": "the stored plan (201) or the validated draft (200); always enabled: false",
            },
            "provider": {"type": "string"},
            "model": {"type": "string"},
            "attempts": {"type": "array", "items": ref("DraftAttempt")},
            "usage": {"type": "object", "description": "token counts summed over the attempts"},
            "saved": {"type": "boolean"},
            "dry_run": ref("DryRun"),
        },
        ["plan", "provider", "model", "attempts", "usage", "saved"],
    ),
    "DryRunStep": DRY_STEP,
    "DryRun": DRY_RUN,
    "StepEventStream": {
        "type": "string",
        "description": "text/event-stream: 'delta' events {text} (the model's text as the vendor streams it, "
        "secrets redacted, held back only while it could be the start of one), comment lines as keep-alives, "
        "then one 'result' event whose data is the ProviderResult the JSON answer would be. A step that does "
        "not stream text sends the result alone. The step's log row is written once, at the end; a client "
        "that disconnects cancels the upstream call (logged as error, code cancelled).",
    },
}


def provider_schemas(registry: Any) -> dict[str, Schema]:
    """``<provider>.<action>.params`` for every action, and ``ProviderStep``: one of those step shapes."""
    schemas: dict[str, Schema] = {}
    variants: list[Schema] = []
    for name in registry.names():
        described = registry.get(name).describe()
        for action, spec in described["actions"].items():
            key = f"{name}.{action}.params"
            schemas[key] = {**spec["params_schema"], "description": spec["description"]}
            variants.append(
                _obj(
                    {"provider": {"const": name}, "action": {"const": action}, "params": ref(key)},
                    ["provider", "action"],
                    title=f"{name}.{action}",
                )
            )
    schemas["ProviderStep"] = {
        "allOf": [ref("Step")],
        "oneOf": variants,
        "description": "A step whose params match its provider action's schema. In saved plans a "
        "'{{ expression }}' string may stand for any param; it is checked after rendering.",
    }
    return schemas
