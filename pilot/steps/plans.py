"""Saving plans: their structure, then each step against its provider, then the row.

A plan is validated twice over: ``plan_schema`` checks its shape (no database, no
providers); ``validate_steps`` checks each step's provider, action, params (templates
allowed: they are checked again after rendering) and ``when`` against the registry.
``update_plan`` with ``partial=True`` is PATCH: the fields sent replace the stored
ones and the result is validated whole, as PUT would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pilot.data import store
from pilot.errors import NotFound, ValidationError
from pilot.steps.plan_schema import PlanBody, parse, plan_to_record
from pilot.steps.templating import TemplateError, compile_expression

if TYPE_CHECKING:
    from database import DatabaseManager
    from provider_registry import ProviderRegistry


def validate_steps(registry: ProviderRegistry, steps: list[dict[str, Any]]) -> None:
    """Each saved step's provider, action, params and ``when``; ValidationError naming the step and the field."""
    for index, step in enumerate(steps):
        validate_step(registry, step, f"steps[{index}]")


def validate_step(registry: ProviderRegistry, step: dict[str, Any], where: str) -> None:
    """One step (structure checked already) against its provider; ValidationError prefixed with ``where``."""
    try:
        registry.action(step["provider"], step["action"])
        registry.validate_params(step["provider"], step["action"], step.get("params", {}), allow_templates=True)
        if step.get("when"):
            compile_expression(step["when"])
    except NotFound as exc:
        raise ValidationError(f"{where}: {exc.message}", code=exc.code) from None
    except TemplateError as exc:
        raise ValidationError(f"{where}.when: {exc.message}", code=exc.code) from None
    except ValidationError as exc:
        raise ValidationError(f"{where}.{exc.message}", code=exc.code, details=exc.details) from None


def validated_record(registry: ProviderRegistry, payload: Any) -> dict[str, Any]:
    """The columns to store for ``payload``: its structure, then each step against its provider."""
    record = plan_to_record(parse(PlanBody, payload))
    validate_steps(registry, record["steps"])
    return record


def merged(current: store.Row, changes: dict[str, Any]) -> dict[str, Any]:
    """PATCH: the stored plan's fields with ``changes`` laid over them."""
    plan = {field: current[field] for field in store.PLAN_FIELDS}
    plan.update(changes)
    return plan


def create_plan(db: DatabaseManager, registry: ProviderRegistry, user_id: str, payload: Any) -> store.Row:
    """Validate and store a new plan for ``user_id``; the stored row."""
    record = validated_record(registry, payload)
    with db.transaction(user_id) as cur:
        return store.insert_plan(cur, user_id, record)


def update_plan(
    db: DatabaseManager, registry: ProviderRegistry, user_id: str, plan_id: int, payload: Any, *, partial: bool
) -> store.Row:
    """Replace (``partial=False``, PUT) or patch (PATCH) ``user_id``'s plan; NotFound when it is not theirs."""
    with db.transaction(user_id) as cur:
        current = store.get_plan(cur, user_id, plan_id, for_update=True)
        if current is None:
            raise NotFound(f"plan {plan_id} not found")
        plan = merged(current, payload) if partial else payload
        row = store.update_plan(cur, user_id, plan_id, validated_record(registry, plan))
    if row is None:
        raise NotFound(f"plan {plan_id} not found")
    return row
