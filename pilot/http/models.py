"""The HTTP API's request and query models (validated by ``@validate``) and its response models (documented).

Plans, steps and schedules reuse the domain models of ``pilot.steps.plan_schema``; budgets and
cost queries those of ``pilot.costs.schemas``; drafting's body is ``DraftBody`` here. Response
models are never used to build answers (the views serialize rows); they describe them, and
``tests/test_openapi.py`` checks real answers against them.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from pilot.steps.plan_schema import MAX_STEPS, Schedule, Step, provider_steps, with_zone_names
from provider_registry import CREDENTIAL_TYPE

MAX_DB_ID = 2**63 - 1
_ASCII_INT = re.compile(r"[0-9]{1,19}")
_WS = r"\s\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
USER_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    # no edge whitespace as Python's str.strip() sees it (pilot.security.auth.valid_user_id), spelled out: \x85 too
    "pattern": rf"^[^\x00-\x1f\x7f{_WS}](?:[^\x00-\x1f\x7f]{{0,253}}[^\x00-\x1f\x7f{_WS}])?$",
    "description": "AUTH_MODE=dev: the acting user. AUTH_MODE=token: optional; must equal the token's user (else 403)",
}
COMPONENT_KEY = "x-pilot-component"


def component(name: str) -> dict[str, Any]:
    """A reference to the document's schema ``name``, resolved by ``pilot.http.openapi`` (pydantic resolves a raw
    ``$ref`` itself and fails on one it did not make)."""
    return {COMPONENT_KEY: name}


RunStatus = Literal["queued", "running", "success", "error", "interrupted", "skipped"]
RunTrigger = Literal["manual", "schedule", "api", "replay"]
# user_id is read (and checked, with its own message) by pilot.http.auth; the models document it only.
UserId = Annotated[Any, WithJsonSchema(USER_ID_SCHEMA)]


def _ascii_int(value: Any) -> Any:
    """A query integer in ASCII digits (``int()`` also takes '٣', ' 1' and '1_0'); '' means absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and (not _ASCII_INT.fullmatch(value) or int(value) > MAX_DB_ID):
        raise ValueError("must be a non-negative integer (ASCII digits)")
    return value


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


BLANK = "x-pilot-blank"  # the OpenAPI generator adds "" as an allowed value (it means absent)
QueryInt = Annotated[int | None, BeforeValidator(_ascii_int), Field(json_schema_extra={BLANK: True})]
QueryText = Annotated[str | None, BeforeValidator(_blank_is_none)]


def _query_flag(value: Any) -> Any:
    """true/false (also 1/0, yes/no, any case; empty is false); anything else is refused."""
    if isinstance(value, str):
        word = value.lower()
        if word in {"1", "true", "yes"}:
            return True
        if word in {"", "0", "false", "no"}:
            return False
        raise ValueError("must be true or false")
    return value


QueryFlag = Annotated[bool, BeforeValidator(_query_flag), WithJsonSchema({"type": "boolean", "default": False})]


# --- request bodies ---------------------------------------------------------------------------


class OptionalBody(BaseModel):
    """A body these routes do not need: at most ``user_id`` (read in dev mode)."""

    model_config = ConfigDict(extra="forbid")
    user_id: UserId = None


CredentialType = Annotated[str, StringConstraints(pattern=f"^(?:{CREDENTIAL_TYPE.pattern})$")]
# Not blank: one character that is neither a control nor whitespace to Python's str.strip(), spelled out
# because pydantic's regex engine (Rust) and the document's readers disagree on what \S leaves out.
NOT_BLANK = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
Secret = Annotated[str, StringConstraints(min_length=1, max_length=10_000, pattern=NOT_BLANK)]


class CredentialsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId = None
    credentials: dict[CredentialType, Secret] = Field(
        min_length=1,
        description="{type: secret}, e.g. {api_key: sk-…}; stored encrypted",
        json_schema_extra={"propertyNames": {"pattern": f"^(?:{CREDENTIAL_TYPE.pattern})$"}},
    )


class ExecuteStepBody(BaseModel):
    """step.params must match the action's schema (see ProviderStep) after template rendering."""

    model_config = ConfigDict(extra="forbid")
    user_id: UserId = None
    step: Annotated[Any, WithJsonSchema(component("ProviderStep"))]
    step_results: dict[str, Any] | None = Field(
        None, description="earlier results, referenced as steps.<key> / step_results.<key>"
    )
    input: dict[str, Any] | None = Field(None, description="available to templates as input.*")


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId = None
    input: dict[str, Any] | None = Field(None, description="available to templates as input.*")
    trigger: Literal["manual", "api"] = "manual"


def _step_ref(value: Any) -> Any:
    """A replay's from_step: a step id or a 0-based index (a bool is not an index)."""
    if value is None or (isinstance(value, str) and 0 < len(value) <= 255):
        return value
    if isinstance(value, float) and value.is_integer():  # JSON Schema's integer: 3.0 is 3
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_STEPS:
        return value
    raise ValueError(f"from_step must be a step id (a string) or an index (an integer from 0 to {MAX_STEPS - 1})")


class ReplayBody(BaseModel):
    """A replay: from which step (id or index; default the first failed or interrupted) and param overrides."""

    model_config = ConfigDict(extra="forbid")
    user_id: UserId = None
    # Checked by pilot.execution.replay, whose messages name the step (an unknown id, an index past the end).
    from_step: Annotated[
        Any,
        BeforeValidator(_step_ref),
        WithJsonSchema(
            {
                "oneOf": [
                    {"type": "string", "minLength": 1, "maxLength": 255},
                    {"type": "integer", "minimum": 0, "maximum": MAX_STEPS - 1},
                ],
                "description": "a step id or a 0-based index; default the first failed or interrupted step",
            }
        ),
    ] = None
    params: dict[str, dict[str, Any]] | None = Field(
        None, description="{<step id, or index for a step without one>: params merged into that step's}"
    )


# --- query strings ----------------------------------------------------------------------------


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")  # user_id (read by auth) and names we do not use


class Paging(_Query):
    limit: QueryInt = Field(None, ge=1, le=500, description="page size (default 100)")
    offset: QueryInt = Field(None, ge=0, le=10_000_000, description="rows to skip (default 0)")


class HoursQuery(_Query):
    hours: QueryInt = Field(None, ge=1, le=24 * 90, description="window in hours (default 24)")


def _since(value: Any) -> Any:
    from pilot.costs.schemas import CostQuery

    return CostQuery._iso(value)


class LogsQuery(Paging):
    provider: QueryText = Field(None, description="only this provider")
    status: Annotated[Literal["success", "error"] | None, BeforeValidator(_blank_is_none)] = Field(
        None, json_schema_extra={BLANK: True}
    )
    plan_id: QueryInt = Field(None, ge=1, description="only this plan")
    plan: QueryInt = Field(None, ge=1, description="the same as plan_id", json_schema_extra={"deprecated": True})
    run_id: QueryInt = Field(None, ge=1, description="only this run")
    since: Annotated[datetime | None, BeforeValidator(_since)] = Field(
        None, description="only logs at or after this time (ISO 8601; naive means UTC)", json_schema_extra={BLANK: True}
    )


class RunsQuery(_Query):
    plan_id: QueryInt = Field(None, ge=1, description="only this plan's runs")
    status: Annotated[RunStatus | None, BeforeValidator(_blank_is_none)] = Field(None, json_schema_extra={BLANK: True})
    trigger: Annotated[RunTrigger | None, BeforeValidator(_blank_is_none)] = Field(
        None, json_schema_extra={BLANK: True}
    )
    limit: QueryInt = Field(None, ge=1, le=500, description="page size (default 50)")
    before: QueryInt = Field(None, ge=1, description="only runs with a smaller id (the next_before cursor)")


class RunPlanQuery(_Query):
    wait: QueryFlag = Field(
        False, description="wait up to RUN_WAIT_SECONDS for the run to end: 200 with the finished run, else 202 to poll"
    )
    dry_run: QueryFlag = Field(
        False,
        description="execute logic steps only; render, validate and show (redacted) what the other steps would "
        "send; no network call, no run or log row",
    )


class WaitQuery(_Query):
    wait: QueryFlag = Field(
        False, description="wait up to RUN_WAIT_SECONDS for the run to end: 200 with the finished run, else 202 to poll"
    )


class StreamQuery(_Query):
    stream: QueryFlag = Field(False, description="answer text/event-stream (as Accept: text/event-stream would)")


# --- responses --------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_request, not_found")
    message: str = Field(description="for humans; never contains secrets or SQL")
    details: Any = Field(
        description="optional structure; for invalid input a list of {loc, msg, field} (ValidationIssue)"
    )


class Error(BaseModel):
    """Every error response: {error: {code, message, details}}, never a traceback."""

    error: ErrorInfo


class ValidationIssue(BaseModel):
    """One item of an invalid_request error's details: pydantic's loc and msg, and field as the message names it."""

    loc: list[str | int] = Field(description="where: 'body', 'query', 'path' or 'header', then the keys and indexes")
    msg: str
    field: str = Field(description="the same place as the message writes it, e.g. steps[0].provider")


class CostInfo(BaseModel):
    """LLM steps: the model, its tokens and USD at the price table's rates (cost null when the model has no price)."""

    model: str
    input_tokens: int | None = Field(ge=0)
    output_tokens: int | None = Field(ge=0)
    cost_usd: float | None = Field(ge=0)
    priced_as: str | None = None
    price_checked: date | None = None


class ResultMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    http_status: int | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int | None = Field(None, ge=1)
    retry_after: float | None = None
    outcome_unknown: bool | None = Field(None, description="the request may have taken effect")
    cost: CostInfo | None = None
    budget_warning: str | None = Field(None, description="the step ran over a warn budget")


class ResultError(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str
    retryable: bool


class ProviderResult(BaseModel):
    """The outcome of one step; 200 whenever the step ran, successful or not."""

    success: bool
    data: Any = Field(description="the action's output (provider-specific)")
    error: ResultError | None
    latency_ms: float = Field(description="provider time, retries included")
    metadata: ResultMetadata


class DatabaseHealth(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["ok", "down"]


class SchedulerHealth(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["running", "stopped", "disabled"]


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    timestamp: datetime
    database: DatabaseHealth
    scheduler: SchedulerHealth
    providers: list[str] | None = Field(None, description="dev mode only")
    auth_mode: Literal["dev", "token"] = Field(description="how callers identify themselves")


class ProviderList(BaseModel):
    providers: list[str]


class ActionDescription(BaseModel):
    description: str
    params_schema: dict[str, Any]


class CredentialTypeDescription(BaseModel):
    description: str
    required: bool
    secret: bool


class HostBreaker(BaseModel):
    host: str
    state: Literal["closed", "half_open", "open"]
    consecutive_failures: int = Field(ge=0)
    opened_at: datetime | None
    retry_in_s: float | None


class OtherHosts(BaseModel):
    """Hosts users named (base_url credentials, webhook URLs): counted, never shown."""

    tracked: int
    open: int
    half_open: int


class CircuitBreakers(BaseModel):
    """This process's circuit breakers for the provider (state is per process)."""

    enabled: bool = Field(description="false when BREAKER_FAILURES is 0")
    failures: int = Field(description="BREAKER_FAILURES")
    window_seconds: float
    cooldown_seconds: float
    hosts: list[HostBreaker] = Field(description="the provider's default endpoints, by name")
    other_hosts: OtherHosts


class ProviderDescription(BaseModel):
    name: str
    description: str
    actions: dict[str, ActionDescription]
    credential_types: dict[str, CredentialTypeDescription]
    circuit_breakers: CircuitBreakers


class Credential(BaseModel):
    provider: str
    type: str
    masked_value: str = Field(description="e.g. sk-…0001; the secret itself is never returned")
    readable: bool = Field(description="false when no configured FERNET_KEY decrypts it")
    created_at: datetime
    updated_at: datetime


class CredentialList(BaseModel):
    provider: str | None = None
    credentials: list[Credential]


class Provenance(BaseModel):
    """Where a drafted plan came from (POST /api/plans/draft with save: true)."""

    provider: str
    model: str
    attempts: int = Field(ge=1)
    drafted_at: datetime


class Plan(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int = Field(ge=1)
    user_id: str
    name: str
    original_prompt: str | None = None
    steps: list[Step]
    schedule: Annotated[Any, WithJsonSchema({"anyOf": [component("Schedule"), {"type": "null"}]})]
    timezone: str
    enabled: bool
    max_cost_usd: float | None = Field(None, ge=0)
    created_at: datetime
    updated_at: datetime
    provenance: Provenance | None = None


class PlanList(BaseModel):
    plans: list[Plan]
    limit: int
    offset: int


class StepOutcome(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    id: str | None = None
    provider: str | None = None
    action: str | None = None
    status: Literal["success", "error", "skipped", "running"]
    result: ProviderResult | None = None


class Run(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int = Field(ge=1)
    plan_id: int = Field(ge=1)
    user_id: str | None = None
    trigger: RunTrigger
    scheduled_for: datetime | None = None
    status: RunStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    step_results: list[StepOutcome]
    error: str | None = None
    input: dict[str, Any] | None = Field(None, description="the input the run was accepted with ({{ input.… }})")
    plan_version_id: int | None = Field(None, description="the immutable plan version the run executes")
    plan_version: int | None = Field(None, description="that version's number (GET /api/runs/{run_id})")
    replayed_from: int | None = Field(None, description="the run this one replays (trigger replay)")


class RunUsage(BaseModel):
    """The run's LLM usage and cost, summed over its steps' log rows."""

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cost_usd: float = Field(ge=0, description="of the steps with a known price")
    llm_steps: int = Field(ge=0)
    unpriced_steps: int = Field(ge=0, description="LLM steps whose cost is unknown")


class LogEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int = Field(ge=1)
    plan_id: int | None = Field(None, ge=1)
    run_id: int | None = Field(None, ge=1)
    step_index: int | None = None
    step_id: str | None = None
    provider: str
    action: str
    status: Literal["success", "error"]
    latency_ms: float
    error_code: str | None = None
    error: str | None = None
    attempt: int | None = None
    input: Any = Field(None, description="rendered params, secrets redacted")
    output: Any = Field(None, description="data and metadata, truncated past 32,000 characters")
    timestamp: datetime
    model: str | None = Field(None, description="LLM steps: the model billed (null for other steps)")
    input_tokens: int | None = Field(None, ge=0)
    output_tokens: int | None = Field(None, ge=0)
    cost_usd: float | None = Field(None, ge=0, description="null when the model has no price or no usage was reported")


class RunWithLogs(Run):
    usage: RunUsage
    logs: list[LogEntry]


class RunList(BaseModel):
    runs: list[Run]
    limit: int
    offset: int


class RunSummary(BaseModel):
    """A run as lists show it: no step results (GET /api/runs/{run_id} has them)."""

    model_config = ConfigDict(extra="allow")
    id: int = Field(ge=1)
    plan_id: int = Field(ge=1)
    plan_name: str | None
    user_id: str | None = None
    trigger: RunTrigger
    scheduled_for: datetime | None = None
    status: RunStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class RunSummaryList(BaseModel):
    runs: list[RunSummary]
    limit: int
    next_before: int | None = Field(ge=1)


class LogList(BaseModel):
    logs: list[LogEntry]
    limit: int
    offset: int


class ProviderFigures(BaseModel):
    provider: str
    total_executions: int
    successful: int
    failed: int
    success_rate: float
    avg_latency_ms: float
    max_latency_ms: float
    p95_latency_ms: float


class ProviderMetrics(BaseModel):
    window_hours: int
    providers: list[ProviderFigures]


class ErrorTrend(BaseModel):
    hour: datetime
    provider: str
    total: int
    errors: int
    error_rate: float


class ErrorTrends(BaseModel):
    window_hours: int
    trends: list[ErrorTrend]


class ScheduledJob(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    plan_id: int = Field(ge=1)
    name: str | None = None
    next_run_time: datetime | None
    trigger: str = Field(examples=["cron[0 9 * * 1-5 Europe/Paris]", "interval[300s]"])
    paused: bool | None = None


class SchedulerState(BaseModel):
    status: Literal["running", "stopped", "disabled", "not_started"]
    jobs: int = Field(description="schedules loaded in this process (every user's)")


class SchedulerJobs(BaseModel):
    jobs: list[ScheduledJob]
    scheduler: SchedulerState


class BudgetRow(BaseModel):
    monthly_usd: float = Field(ge=0)
    on_exceed: Literal["refuse", "warn"]
    created_at: datetime
    updated_at: datetime


class Budget(BaseModel):
    budget: BudgetRow | None
    month: str = Field(pattern="^[0-9]{4}-[0-9]{2}$", description="the current UTC month")
    spent_usd: float = Field(ge=0, description="recorded spend of the month so far")
    priced_steps: int = Field(ge=0)
    remaining_usd: float | None = Field(ge=0)
    exceeded: bool = Field(description="spend at or over the budget")


class CostTotals(BaseModel):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cost_usd: float = Field(ge=0)
    steps: int = Field(ge=0, description="LLM steps (failed and refused ones included)")
    unpriced_steps: int = Field(ge=0, description="steps whose cost is unknown (null)")


class CostGroup(CostTotals):
    """The group's key fields (provider; provider and model; plan_id and plan_name; day), then its totals."""

    provider: str | None = None
    model: str | None = None
    plan_id: int | None = Field(None, ge=1)
    plan_name: str | None = None
    day: date | None = None


class CostReport(BaseModel):
    since: datetime
    group_by: Literal["provider", "model", "plan", "day"]
    groups: list[CostGroup]
    total: CostTotals


class DryRunStep(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    id: str | None = None
    provider: str | None = None
    action: str | None = None
    status: Literal["success", "error", "would_run", "skipped", "unresolved"] = Field(
        description="success/error: a logic step, executed; would_run: a step with effects, not executed; "
        "skipped: its when was false; unresolved: it reads an output the dry run did not produce"
    )
    params: Any = Field(None, description="the rendered params, as they would be sent (secrets redacted)")
    result: ProviderResult | None = None
    error: dict[str, Any] | None = None
    missing_credentials: list[str] | None = None


class DryRun(BaseModel):
    """Nothing was sent, spent or written; later steps saw {dry_run: true} for outputs not produced."""

    dry_run: Literal[True]
    plan_id: int | None = Field(None, ge=1)
    status: Literal["success", "error"]
    error: str | None
    steps: list[DryRunStep]


class DraftAttempt(BaseModel):
    model_config = ConfigDict(extra="allow")
    attempt: int = Field(ge=1)
    valid: bool
    errors: list[dict[str, Any]] = Field(description="validation errors sent back")
    usage: dict[str, Any] | None = Field(description="the vendor's token counts for this call")
    latency_ms: float | None = None


class DraftAnswer(BaseModel):
    plan: Annotated[
        Any,
        WithJsonSchema(
            {
                "anyOf": [component("Plan"), component("PlanBody")],
                "description": "the stored plan (201) or the validated draft (200); always enabled: false",
            }
        ),
    ]
    provider: str
    model: str
    attempts: list[DraftAttempt]
    usage: dict[str, Any] = Field(description="token counts summed over the attempts")
    saved: bool
    dry_run: DryRun | None = None


STEP_EVENT_STREAM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"enum": ["delta", "result"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["data"],
    "description": "text/event-stream: 'delta' events {text} (the model's text as the vendor streams it, "
    "secrets redacted, held back only while it could be the start of one), comment lines as keep-alives, "
    "then one 'result' event whose data is the ProviderResult the JSON answer would be. A step that does "
    "not stream text sends the result alone. The step's log row is written once, at the end; a client "
    "that disconnects cancels the upstream call (logged as error, code cancelled).",
}


RUN_EVENT_STREAM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"enum": ["step_started", "step_finished", "error", "run_finished"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["data"],
    "description": "text/event-stream: step_started (steps with side effects), step_finished (the step's "
    "result as GET /api/runs/{run_id} shows it), error, run_finished (the final status); each with an id "
    "(2i+1 and 2i+2 for step i) so Last-Event-ID resumes exactly; comment lines are heartbeats.",
}


class PlanPatch(BaseModel):
    """Any subset of a plan's fields; the merged plan is validated as a whole."""

    model_config = ConfigDict(extra="forbid")
    user_id: UserId = None
    name: str = Field(None, min_length=1, max_length=200)  # type: ignore[assignment]
    original_prompt: str | None = Field(None, max_length=20_000)
    steps: list[Step] = Field(None, max_length=MAX_STEPS, json_schema_extra=provider_steps)  # type: ignore[arg-type]
    schedule: Schedule | None = None
    timezone: str = Field(None, max_length=64, json_schema_extra=with_zone_names)  # type: ignore[assignment]
    enabled: bool = Field(None, strict=True)  # type: ignore[assignment]
    max_cost_usd: float | None = Field(None, ge=0, le=1_000_000, strict=True)

    def changes(self) -> dict[str, Any]:
        """The fields the request sent (``user_id`` aside), as the stored plan's JSON columns hold them."""
        return self.model_dump(mode="json", exclude_unset=True, exclude={"user_id"})
