"""Drafting a plan from a prompt with the user's own model, validated and repaired before anyone sees it.

Each model call is a chat step run by the engine (``execute_step``), so the user's stored
key, the SSRF guard, retries, redaction and one ``execution_logs`` row per call apply as
to any step. The answer goes through exactly the validation ``POST /api/plans`` applies
(``plans.validated_record``); when it fails, the errors are sent back to the model, up to
``PLANNER_MAX_REPAIRS`` times. Nothing but the model is called: a draft's own steps run
only in a dry run (``dry_run.py``: logic evaluated, nothing sent) or, once saved (disabled)
and turned on by a person, as any plan does, under the SSRF guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pilot.data import store
from pilot.errors import Conflict, PilotError, ValidationError
from pilot.planner.prompt import plan_schema, repair_message, system_prompt
from pilot.planner.vendors import DEFAULT_ORDER, VENDORS, UnreadableAnswer, Vendor
from pilot.steps.plans import validated_record

if TYPE_CHECKING:
    from execution_engine import ExecutionEngine

DRAFT_STEP_ID = "plan_draft"  # the step id of the model calls in execution_logs
MODEL_TIMEOUT_S = 120.0
PLAN_FIELDS = ("name", "steps", "schedule", "timezone")  # what is taken from the model's answer
DEFAULT_NAME = "Drafted plan"


class ModelCallFailed(PilotError):
    """The model's server failed (after retries), refused the key, or could not be reached."""

    code = "model_failed"


class DraftInvalid(PilotError):
    """No answer of the model was a valid plan; ``details`` has the attempts and the last errors."""

    code = "draft_invalid"


@dataclass
class DraftRequest:
    """What the caller asked for (already checked for shape by the HTTP layer)."""

    prompt: str
    provider: str | None = None
    model: str | None = None
    name: str | None = None


@dataclass
class Draft:
    """A valid plan and how it was obtained."""

    plan: dict[str, Any]
    provider: str
    model: str
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usage(self) -> dict[str, int]:
        return total_usage(self.attempts)

    def provenance(self) -> dict[str, Any]:
        """What is stored with a saved draft."""
        return {
            "provider": self.provider,
            "model": self.model,
            "attempts": len(self.attempts),
            "drafted_at": datetime.now(UTC).isoformat(),
        }


def total_usage(attempts: list[dict[str, Any]]) -> dict[str, int]:
    """Token counts summed over the attempts, key by key as the vendor names them."""
    total: dict[str, int] = {}
    for attempt in attempts:
        for key, value in (attempt.get("usage") or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def choose_provider(
    engine: ExecutionEngine, user_id: str, requested: str | None
) -> tuple[Vendor, dict[str, list[str]]]:
    """The vendor to ask and the user's stored credential types by provider (names only, never values).

    The requested provider, else the first of openai, groq, anthropic the user has an
    api_key for; Conflict (code ``missing_credentials``: the request is fine, the user's stored state
    lacks a key) naming what is missing.
    """
    with engine.db.transaction(user_id) as cur:
        rows = store.list_credentials(cur, user_id)
    types: dict[str, list[str]] = {}
    for row in rows:
        types.setdefault(str(row["provider"]), []).append(str(row["type"]))
    if requested is not None:
        if "api_key" not in types.get(requested, []):
            raise Conflict(
                f"no api_key stored for provider {requested!r}: POST /api/provider-credentials/{requested} first",
                code="missing_credentials",
                details={"provider": requested, "missing": ["api_key"]},
            )
        return VENDORS[requested], types
    for name in DEFAULT_ORDER:
        if "api_key" in types.get(name, []):
            return VENDORS[name], types
    raise Conflict(
        "no model credential stored: store an api_key for openai, groq or anthropic "
        "(POST /api/provider-credentials/<provider>) or name a provider you have one for",
        code="missing_credentials",
        details={"providers": list(DEFAULT_ORDER), "missing": ["api_key"]},
    )


class Planner:
    """Drafts plans for one engine (its registry, database and settings)."""

    def __init__(self, engine: ExecutionEngine) -> None:
        self.engine = engine
        self.settings = engine.settings

    def default_model(self, provider: str) -> str:
        return str(getattr(self.settings, f"planner_model_{provider}"))

    def draft(self, user_id: str, request: DraftRequest) -> Draft:
        """A valid plan for ``request.prompt``, drafted disabled, with every attempt reported.

        Raises ValidationError (400) for a missing credential, ModelCallFailed when a model
        call failed, DraftInvalid when no answer validated after the allowed repairs.
        """
        vendor, stored = choose_provider(self.engine, user_id, request.provider)
        model = request.model or self.default_model(vendor.provider)
        registry = self.engine.registry
        system, schema = system_prompt(registry, stored), plan_schema(registry)
        messages: list[dict[str, Any]] = [{"role": "user", "content": request.prompt}]
        attempts: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for number in range(1, self.settings.planner_max_repairs + 2):
            params = vendor.params(model, system, messages, schema)
            step = {"id": DRAFT_STEP_ID, "provider": vendor.provider, "action": vendor.action, "params": params}
            # literal: the instructions explain {{ }} and the answers use it; nothing here is a template
            result = self.engine.execute_step(user_id, {**step, "timeout_s": MODEL_TIMEOUT_S}, {}, literal=True)
            attempt: dict[str, Any] = {"attempt": number, "usage": result.metadata.get("usage") or {}}
            attempt["latency_ms"] = result.latency_ms
            if not result.success:
                attempts.append({**attempt, "valid": False, "errors": [result.error]})
                raise ModelCallFailed(
                    f"the {vendor.provider} model call failed: {(result.error or {}).get('message', '')}",
                    details={"provider": vendor.provider, "model": model, "error": result.error, "attempts": attempts},
                )
            model = str(result.metadata.get("model") or model)
            plan, errors, text = self._check(vendor, result.data, request)
            attempts.append({**attempt, "valid": not errors, "errors": errors})
            if not errors:
                return Draft(plan, vendor.provider, model, attempts)
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": repair_message(errors)}]
        raise DraftInvalid(
            f"the model gave no valid plan in {len(attempts)} attempts: {errors[0]['message']}",
            details={"errors": errors, "attempts": attempts, "usage": total_usage(attempts), "model": model},
        )

    def _check(
        self, vendor: Vendor, data: Any, request: DraftRequest
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        """``(plan, errors, answer text)``: the answer validated as ``POST /api/plans`` validates a plan."""
        try:
            answer, text = vendor.answer(data)
        except UnreadableAnswer as exc:
            text = data.get("text", "") if isinstance(data, dict) else ""
            return {}, [{"code": exc.code, "message": exc.message, "details": None}], text or "(no answer)"
        if not isinstance(answer, dict):
            return {}, [{"code": "not_an_object", "message": "the plan must be a JSON object", "details": None}], text
        payload = {key: answer[key] for key in PLAN_FIELDS if key in answer}
        payload.update(name=request.name or payload.get("name") or DEFAULT_NAME, enabled=False)
        payload["original_prompt"] = request.prompt
        try:
            record = validated_record(self.engine.registry, payload)
        except ValidationError as exc:
            return {}, [{"code": exc.code, "message": exc.message, "details": exc.details}], text
        if not record["steps"]:
            return {}, [{"code": "no_steps", "message": "steps: a plan needs at least one step", "details": None}], text
        return record, [], text


def save_draft(engine: ExecutionEngine, user_id: str, draft: Draft) -> dict[str, Any]:
    """Store ``draft`` for ``user_id``, disabled, with its provenance; the stored row."""
    with engine.db.transaction(user_id) as cur:
        return store.insert_drafted_plan(cur, user_id, {**draft.plan, "enabled": False}, draft.provenance())
