"""Budgets: whether an LLM step may start, and whether a schedule may fire (pure rules, no I/O).

A user's budget is ``{monthly_usd, on_exceed}``. The month is the UTC calendar month
and its spend is what the ``budget_spend`` counter recorded: the costs of the steps
that finished and were logged. A step's cost is known only after it ran, so the
rule acts before the call: under ``refuse`` an LLM step that would start while the
recorded spend is at or over the budget is refused (``budget_exceeded``) and no
request is made. Steps already admitted finish and are recorded, so the spend can
pass the budget by at most what the steps in flight at that moment cost (README:
"Costs and budgets"). Under ``warn`` nothing is refused; the step's result says so.

A model with no known price would slip past any budget, so under ``refuse`` it is
refused while a budget is set (``price_unknown``) unless the price table names it.
A plan's ``max_cost_usd`` caps each of its runs the same way, always refusing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

REFUSE, WARN = "refuse", "warn"
BUDGET_EXCEEDED = "budget_exceeded"
PRICE_UNKNOWN = "price_unknown"
# The reasons a step is refused, as the metrics count them.
REASONS = ("monthly_budget", "run_budget", "unpriced_model")


@dataclass(frozen=True)
class Budget:
    monthly_usd: Decimal
    on_exceed: str


@dataclass(frozen=True)
class Standing:
    """What an admission reads, in one query: the budget (None: none set), this month's recorded
    spend, the plan's cap per run (None: none, or not a run) and what the run spent so far."""

    budget: Budget | None
    month_spent: Decimal
    plan_max: Decimal | None = None
    run_spent: Decimal = Decimal(0)


@dataclass(frozen=True)
class Refusal:
    """Why a step may not start: its error ``code``, the metric ``reason`` and the message."""

    code: str
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """``refusal`` when the step may not start; ``warning`` when it may, over a ``warn`` budget."""

    refusal: Refusal | None = None
    warning: str | None = None


def standing_from(row: Mapping[str, Any]) -> Standing:
    """A ``Standing`` from the store's ``budget_standing`` row."""
    found = Budget(row["monthly_usd"], row["on_exceed"]) if row.get("monthly_usd") is not None else None
    return Standing(found, row["month_spent"], row["plan_max"], row["run_spent"])


def budget_from(row: Mapping[str, Any] | None) -> Budget | None:
    """A ``Budget`` from a row with monthly_usd and on_exceed; None for no row."""
    return Budget(row["monthly_usd"], row["on_exceed"]) if row else None


def month_of(moment: datetime) -> date:
    """The first day of ``moment``'s UTC calendar month (naive means UTC)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date().replace(day=1)


def usd(value: Decimal) -> str:
    """``$1.23`` (cents), or more places for amounts below a cent."""
    return f"${value:.2f}" if value >= 1 or value == 0 else f"${value.normalize():f}"


def admission(standing: Standing, *, provider: str, model: str, priced: bool) -> Decision:
    """May an LLM step of ``provider``/``model`` start now? (``priced``: the price table knows the model).

    Refused: under a ``refuse`` budget, a model without a price, or a month whose
    recorded spend is at or over the budget; in a run of a plan with ``max_cost_usd``,
    a model without a price or a run that spent that much already.
    """
    budget = standing.budget
    if budget is not None and budget.on_exceed == REFUSE:
        if not priced:
            return Decision(refusal=_unpriced(provider, model, "while a monthly budget with on_exceed=refuse is set"))
        if standing.month_spent >= budget.monthly_usd:
            return Decision(
                refusal=Refusal(
                    BUDGET_EXCEEDED,
                    "monthly_budget",
                    f"this month's recorded spend {usd(standing.month_spent)} is at or over the monthly budget "
                    f"{usd(budget.monthly_usd)} (on_exceed=refuse): the step was not started; raise the budget "
                    "with PUT /api/budget or wait for the next month (UTC)",
                )
            )
    if standing.plan_max is not None:
        if not priced:
            return Decision(refusal=_unpriced(provider, model, "in a run of a plan with max_cost_usd"))
        if standing.run_spent >= standing.plan_max:
            return Decision(
                refusal=Refusal(
                    BUDGET_EXCEEDED,
                    "run_budget",
                    f"this run spent {usd(standing.run_spent)}, at or over its plan's max_cost_usd "
                    f"{usd(standing.plan_max)}: the step was not started",
                )
            )
    if budget is not None and budget.on_exceed == WARN and standing.month_spent >= budget.monthly_usd:
        return Decision(
            warning=f"this month's recorded spend {usd(standing.month_spent)} is at or over the monthly budget "
            f"{usd(budget.monthly_usd)} (on_exceed=warn: the step ran anyway)"
        )
    return Decision()


def _unpriced(provider: str, model: str, when: str) -> Refusal:
    return Refusal(
        PRICE_UNKNOWN,
        "unpriced_model",
        f"no price is known for {provider} model {model!r}, so its cost cannot be held to a budget; it is refused "
        f"{when}. The operator can price it in PRICE_TABLE",
    )


@dataclass(frozen=True)
class FiringDecision:
    """Whether a scheduled firing may run; when not, ``reason`` is the skipped run's error text."""

    allowed: bool
    reason: str | None = None


def firing_allowed(budget: Budget | None, month_spent: Decimal) -> FiringDecision:
    """May a scheduled firing of a plan run, given its owner's budget and this month's recorded spend?

    Not when its owner's ``refuse`` budget is spent: as issue 11 states the rule, no
    scheduled plan of that user is fired (whether or not it has an LLM step); the
    firing is recorded as a ``skipped`` run with this reason, and firings run again
    once a new month starts or the budget is raised. A ``warn`` budget never stops one.
    """
    if budget is None or budget.on_exceed != REFUSE or month_spent < budget.monthly_usd:
        return FiringDecision(True)
    return FiringDecision(
        False,
        f"skipped: budget: this month's recorded spend {usd(month_spent)} is at or over the monthly budget "
        f"{usd(budget.monthly_usd)} (on_exceed=refuse); scheduled runs resume next month (UTC) or once the "
        "budget is raised",
    )
