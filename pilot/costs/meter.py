"""The engine's hook for LLM steps: a budget check before the call, usage and cost after it.

``Meter.admit`` runs before a step's first attempt. For a step that is not billed per
token it does nothing (no query). For an LLM step it reads the user's standing in one
query (budget, this month's recorded spend, the plan's cap and the run's spend so far)
and decides (``budget.admission``): a refusal becomes the step's failed result, and no
request is made. ``Meter.settle`` then puts the step's ``metadata.cost`` (model, tokens,
USD) on its result, which the engine writes to the log row and adds to the month's
spend counter in the same transaction, and counts tokens and cost in Prometheus.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pilot.costs import budget
from pilot.costs.prices import PriceBook, StepCost, Usage
from pilot.data import store
from pilot.ops import cost_metrics
from provider_registry import Provider, ProviderResult

if TYPE_CHECKING:
    from database import DatabaseManager

log = logging.getLogger(__name__)
UNPRICED_LABEL = "unpriced"  # the metrics' model label of every model without a price (names come from users)


@dataclass(frozen=True)
class Gate:
    """One step's admission: ``model`` None when the step is not billed; ``refusal`` when it may not start."""

    provider: str
    model: str | None = None
    refusal: ProviderResult | None = None
    warning: str | None = None


class Meter:
    """Prices and budgets for the steps of one engine; safe to share between threads."""

    def __init__(self, db: DatabaseManager, prices: PriceBook) -> None:
        self.db = db
        self.prices = prices
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def admit(self, user_id: str, provider: Provider, action: str, params: Any, where: dict[str, Any]) -> Gate:
        """Whether this step may call its upstream now (see the module docstring)."""
        model = provider.billed_model(action, params) if isinstance(params, dict) else None
        if model is None:
            return Gate(provider.name)
        with self.db.transaction(user_id) as cur:
            standing = budget.standing_from(
                store.budget_standing(cur, user_id, where.get("plan_id"), where.get("run_id"))
            )
        priced = self.prices.lookup(provider.name, model) is not None
        decision = budget.admission(standing, provider=provider.name, model=model, priced=priced)
        if decision.refusal is not None:
            cost_metrics.record_budget_refusal(decision.refusal.reason)
            refused = ProviderResult.fail(decision.refusal.code, decision.refusal.message)
            return Gate(provider.name, model, refusal=refused)
        if decision.warning is not None:
            self._warn_once(user_id, decision.warning)
        return Gate(provider.name, model, warning=decision.warning)

    def settle(self, gate: Gate, result: ProviderResult, *, called: bool) -> None:
        """Put ``metadata.cost`` on an LLM step's ``result`` (and a warn budget's note); count it.

        A step that made no call cost nothing. A call whose reply reported no usage
        is counted as 0 tokens when it failed (vendors bill answered requests) and
        as unknown (null) when it succeeded.
        """
        if gate.model is None:
            return
        if not called:
            cost = StepCost(gate.provider, gate.model, 0, 0, Decimal(0), self.prices.lookup(gate.provider, gate.model))
        else:
            usage = Usage.from_vendor(result.metadata.get("usage"))
            if usage is None and not result.success:
                usage = Usage(0, 0)
            reported = result.metadata.get("model")
            model = reported if isinstance(reported, str) and reported.strip() else gate.model
            cost = self.prices.cost(gate.provider, model, usage)
            if usage is None:
                self.prices.warn_once(gate.provider, model, "answered without token usage: its cost is unknown")
            self._count(cost)
        result.metadata["cost"] = cost.to_metadata()
        if gate.warning:
            result.metadata["budget_warning"] = gate.warning

    @staticmethod
    def _count(cost: StepCost) -> None:
        label = cost.price.model if cost.price else UNPRICED_LABEL
        cost_metrics.record_usage(cost.provider, label, cost.input_tokens, cost.output_tokens, cost.cost_usd)

    def _warn_once(self, user_id: str, warning: str) -> None:
        """A warn budget's overrun, logged once per process, user and month (not once per step)."""
        key = (user_id, budget.month_of(datetime.now(UTC)).isoformat())
        with self._lock:
            if key in self._warned or len(self._warned) > 100_000:
                return
            self._warned.add(key)
        log.warning("user %s: %s", user_id, warning)


def logged_usage(result: ProviderResult) -> dict[str, Any]:
    """The execution_logs columns of a result's ``metadata.cost`` (all None for a step not billed per token)."""
    cost = result.metadata.get("cost")
    if not isinstance(cost, dict):
        return {"model": None, "input_tokens": None, "output_tokens": None, "cost_usd": None}
    spent = cost.get("cost_usd")
    return {
        "model": str(cost.get("model") or "")[:200] or None,
        "input_tokens": _tokens(cost.get("input_tokens")),
        "output_tokens": _tokens(cost.get("output_tokens")),
        # The metadata holds a float; its shortest repr gives back the 10 places it was rounded to.
        "cost_usd": Decimal(repr(float(spent))) if isinstance(spent, int | float) else None,
    }


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
