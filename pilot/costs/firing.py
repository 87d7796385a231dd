"""Whether a scheduled firing may run under its owner's budget: the store's facts, ``budget.firing_allowed``'s rule."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pilot.costs.budget import FiringDecision, budget_from, firing_allowed
from pilot.data import store

if TYPE_CHECKING:
    from database import Cursor
    from provider_registry import ProviderRegistry


def bills_tokens(registry: ProviderRegistry, steps: list[Any]) -> bool:
    """Whether any of ``steps`` is an LLM step (its provider bills its action per token)."""
    for step in steps:
        if not isinstance(step, dict) or step.get("provider") not in registry:
            continue
        params = step.get("params")
        params = params if isinstance(params, dict) else {}
        if registry.get(step["provider"]).billed_model(str(step.get("action")), params) is not None:
            return True
    return False


def check_firing(cur: Cursor, registry: ProviderRegistry, user_id: str, plan_id: int) -> FiringDecision:
    """``firing_allowed`` for ``plan_id`` of ``user_id`` now, read in the firing's own transaction (as that user).

    Reads the plan's steps only when the owner's ``refuse`` budget is spent.
    """
    row = store.budget_for_firing(cur, user_id)
    budget = budget_from(row)
    spent = Decimal(row["month_spent"]) if row else Decimal(0)
    if firing_allowed(budget, spent, bills_tokens=True).allowed:
        return FiringDecision(True)
    plan = store.get_plan(cur, user_id, plan_id)
    has_llm_steps = plan is not None and bills_tokens(registry, plan["steps"])
    return firing_allowed(budget, spent, bills_tokens=has_llm_steps)
