"""Structural validation of plans and steps (pydantic), with 400s that name the field.

Checks here need no database: shapes, sizes, unique step ids, the schedule's
cron fields and timezone. Whether each step's provider, action and params fit
the provider's JSON Schema is checked by the registry (``validate_steps``).
"""

from __future__ import annotations

import zoneinfo
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from pilot.errors import ValidationError
from pilot.steps import cron

MAX_STEPS = 100


def _json_integer(value: Any) -> Any:
    """A JSON integer: 3 or 3.0 (JSON Schema's integer), never true or "3" (pydantic's lax mode takes both)."""
    if isinstance(value, bool | str):
        raise ValueError("Input should be a valid integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
# What the OpenAPI document promises for cron: forms every one of which runs (day of month at most 28, so
# no month lacks it). The server takes all of crontab(5) (lists, ranges, steps, names; see ``cron``); a
# pattern cannot say which of those never fire ("0 0 30 2 *"), so the document names the common subset.
WHEN_DOCUMENTED = r"^[A-Za-z_][A-Za-z0-9_]{0,30}(?:\.[A-Za-z_][A-Za-z0-9_]{0,30}){0,4}$"
CRON_DOCUMENTED = (
    r"^(?:@(?:yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|(?:\*|[0-5]?[0-9]) (?:\*|[01]?[0-9]|2[0-3]) (?:\*|[1-9]|1[0-9]|2[0-8]) (?:\*|[1-9]|1[0-2]) (?:\*|[0-7]))$"
)


def with_zone_names(schema: dict[str, Any]) -> None:
    """The OpenAPI document's ``TimeZone`` (the zone names; its string branch when the field may be null)."""
    branches = schema.get("anyOf", [schema])
    for index, branch in enumerate(branches):
        if branch.get("type") == "string":
            branches[index] = {"x-pilot-component": "TimeZone"}
    if "anyOf" not in schema and branches[0] is not schema:
        for key in ("type", "maxLength"):
            schema.pop(key, None)
        schema.update(branches[0])


def _with_cron_forms(schema: dict[str, Any]) -> None:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            branch["pattern"] = CRON_DOCUMENTED
            branch["description"] = "crontab(5); the pattern shows the common forms, the server takes all of it"


def _with_when_forms(schema: dict[str, Any]) -> None:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            branch["pattern"] = WHEN_DOCUMENTED
            branch["description"] = "a JMESPath expression; the pattern shows field paths, the server takes all of it"


def provider_steps(schema: dict[str, Any]) -> None:
    """The document's steps are ``ProviderStep``: a provider action and params its schema takes (the registry's,
    added by the OpenAPI generator)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "array":
            branch["items"] = {"x-pilot-component": "ProviderStep"}


def _one_kind_schema(schema: dict[str, Any]) -> None:
    """'exactly one of cron or interval_seconds', as JSON Schema can say it: two whole object shapes."""
    properties = schema.pop("properties")
    schema.pop("additionalProperties", None)

    def shape(kind: str, other: str) -> dict[str, Any]:
        chosen = next(b for b in properties[kind]["anyOf"] if b.get("type") != "null")
        return {
            "type": "object",
            "additionalProperties": False,
            "required": [kind],
            "properties": {**properties, kind: chosen, other: {"type": "null"}},
        }

    schema["type"] = "object"
    schema["oneOf"] = [shape("cron", "interval_seconds"), shape("interval_seconds", "cron")]


StepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_attempts: JsonInt = Field(3, ge=1, le=10)
    backoff_s: float = Field(1.0, ge=0, le=60, strict=True)


class Step(BaseModel):
    """One step: a provider action with params; ``when`` and templates are JMESPath."""

    model_config = ConfigDict(extra="forbid")
    id: StepId | None = None
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    provider: Name
    action: Name
    params: dict[str, Any] = Field(default_factory=dict)
    when: str | None = Field(None, min_length=1, max_length=1000, json_schema_extra=_with_when_forms)
    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(None, gt=0, le=600, strict=True)
    continue_on_error: bool = Field(False, strict=True)


class Schedule(BaseModel):
    """``{"cron": "m h dom mon dow", "timezone": "Area/City"}`` (crontab(5): day of week 0 and 7 are Sunday,
    1 is Monday; @daily and the other macros) or ``{"interval_seconds": N}``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_kind_schema)
    cron: str | None = Field(None, max_length=200, json_schema_extra=_with_cron_forms)
    timezone: str | None = Field(None, max_length=64, json_schema_extra=with_zone_names)
    interval_seconds: Annotated[JsonInt, Field(ge=1, le=366 * 86400)] | None = None
    pause_on_failure: Annotated[JsonInt, Field(ge=1, le=1000)] | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return value if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("a schedule needs exactly one of 'cron' or 'interval_seconds'")
        return self


class PlanBody(BaseModel):
    """A whole plan as POST and PUT take it (``user_id`` is read by auth, not stored from here)."""

    model_config = ConfigDict(extra="forbid")
    user_id: Any = None
    name: str = Field(min_length=1, max_length=200)
    original_prompt: str | None = Field(None, max_length=20_000)
    steps: list[Step] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        json_schema_extra=provider_steps,
        description="the plan's steps, run in order; a step's id, when given, must be unique in the plan (400)",
    )
    schedule: Schedule | None = None
    timezone: str = Field("UTC", max_length=64, json_schema_extra=with_zone_names)
    enabled: bool = Field(True, strict=True)
    max_cost_usd: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=1_000_000,
        description="most a run of this plan may spend in USD: an LLM step that would start once the run's "
        "recorded cost is at or over it fails with budget_exceeded (and a model without a known price is refused)",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("steps")
    @classmethod
    def _unique_ids(cls, steps: list[Step]) -> list[Step]:
        seen: set[str] = set()
        for index, step in enumerate(steps):
            if step.id is not None:
                if step.id in seen:
                    raise ValueError(f"step {index}: id {step.id!r} is used by an earlier step")
                seen.add(step.id)
        return steps


@cache
def zone_names() -> frozenset[str]:
    """Every IANA zone name this machine knows (system tzdata and the tzdata package).

    ``localtime`` is a Debian link to the machine's own zone, not an IANA name: a plan
    must mean the same wherever it runs.
    """
    return frozenset(zoneinfo.available_timezones()) - {"localtime"}


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA zone name, e.g. ``Europe/Berlin``.

    Membership is checked before anything is opened: ``ZoneInfo`` takes its key
    as a path under the zoneinfo tree, so ``Europe`` (a directory) raises
    IsADirectoryError and other keys raise other OSErrors rather than
    ZoneInfoNotFoundError.
    """
    if name not in zone_names():
        raise ValueError(f"unknown timezone {name!r}: use an IANA zone name such as 'Europe/Berlin' or 'UTC'")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"timezone {name!r} cannot be loaded on this server") from exc
    return name


def check_cron(expression: str) -> str:
    """``expression`` unchanged if crontab(5) would run it (see ``cron``), else a ValueError naming the bad field."""
    cron.parse(expression)  # CronError is a ValueError whose message starts with the field's name
    return expression


def _location(loc: tuple[int | str, ...] | list[int | str], where: str) -> str:
    out = where if where != "body" or not loc else ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or where


def error_details(exc: PydanticValidationError, where: str = "body") -> list[dict[str, Any]]:
    """pydantic's errors as a 400's ``details``: ``loc`` (led by where: body, query, ...), ``msg``, and ``field``
    (the same place as messages write it, e.g. ``steps[0].provider``)."""
    found = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = [part for part in error["loc"] if isinstance(part, str | int)]
        found.append({"loc": [where, *loc], "msg": error["msg"], "field": _location(loc, where)})
    return found


def parse(model: type[BaseModel], payload: Any, where: str = "body") -> Any:
    """Validate ``payload`` into ``model`` or raise a ValidationError whose message names the first bad field."""
    try:
        return model.model_validate(payload)
    except PydanticValidationError as exc:
        details = error_details(exc, where)
        raise ValidationError(f"{details[0]['field']}: {details[0]['msg']}", details=details) from None


def plan_to_record(body: PlanBody) -> dict[str, Any]:
    """The columns stored for a validated plan."""
    data = body.model_dump(exclude={"user_id"}, exclude_none=False)
    data["steps"] = [step.model_dump(exclude_none=True) for step in body.steps]
    data["schedule"] = body.schedule.model_dump(exclude_none=True) if body.schedule else None
    return data
