"""Prometheus metrics of LLM usage and cost, budget refusals and circuit breakers (issue 11).

Kept apart from ``metrics.py`` but built the same way: on first use, never at import,
registered with prometheus_client's default registry, so ``GET /metrics`` (and the
multiprocess directory under gunicorn) shows them with the rest. Labels stay bounded
whatever users send: ``model`` is the price table's name of a model, or ``unpriced``;
``host`` is a provider's default endpoint, or ``other`` for hosts users named.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal

from prometheus_client import Counter, Gauge

from pilot.costs.budget import REASONS
from pilot.security.breaker import STATE_LEVELS

TOKEN_KINDS = ("input", "output")
BREAKER_STATES = tuple(STATE_LEVELS)


@dataclass(frozen=True)
class CostCollectors:
    llm_tokens: Counter
    llm_cost: Counter
    budget_refusals: Counter
    breaker_state: Gauge
    breaker_transitions: Counter
    breaker_rejections: Counter

    def all(self) -> tuple[Counter | Gauge, ...]:
        return tuple(vars(self).values())


_lock = threading.Lock()
_collectors: CostCollectors | None = None


def collectors() -> CostCollectors:
    """This process's cost and breaker collectors, built and registered on first use."""
    global _collectors
    with _lock:
        if _collectors is None:
            _collectors = _build()
        return _collectors


def _build() -> CostCollectors:
    built = CostCollectors(
        llm_tokens=Counter(
            "pilot_llm_tokens_total",
            "Tokens LLM steps used, by provider, model (price table name or 'unpriced') and kind (input/output)",
            ["provider", "model", "kind"],
        ),
        llm_cost=Counter(
            "pilot_llm_cost_usd_total",
            "Cost in USD of LLM steps at the price table's rates, by provider and model",
            ["provider", "model"],
        ),
        budget_refusals=Counter(
            "pilot_budget_refusals_total",
            "LLM steps refused before their call, by reason (monthly_budget, run_budget, unpriced_model)",
            ["reason"],
        ),
        breaker_state=Gauge(
            "pilot_circuit_breaker_state",
            "Worst circuit state per provider and host (0 closed, 1 half-open, 2 open; host 'other': user-named hosts)",
            ["provider", "host"],
            multiprocess_mode="livemax",
        ),
        breaker_transitions=Counter(
            "pilot_circuit_breaker_transitions_total",
            "Circuit state changes, by provider, host and the state entered",
            ["provider", "host", "state"],
        ),
        breaker_rejections=Counter(
            "pilot_circuit_breaker_rejections_total",
            "Calls failed fast with circuit_open (no request made), by provider and host",
            ["provider", "host"],
        ),
    )
    for reason in REASONS:  # alerts take increase() of these from the first scrape on
        built.budget_refusals.labels(reason)
    return built


def record_usage(
    provider: str, model: str, input_tokens: int | None, output_tokens: int | None, cost_usd: Decimal | None
) -> None:
    """Count one LLM call's tokens and (when priced) its cost."""
    metric = collectors()
    for kind, tokens in zip(TOKEN_KINDS, (input_tokens, output_tokens), strict=True):
        if tokens:
            metric.llm_tokens.labels(provider, model, kind).inc(tokens)
    if cost_usd:
        metric.llm_cost.labels(provider, model).inc(float(cost_usd))


def record_budget_refusal(reason: str) -> None:
    """Count one LLM step refused before its call."""
    if reason not in REASONS:
        raise ValueError(f"budget refusal reason must be one of {REASONS}, not {reason!r}")
    collectors().budget_refusals.labels(reason).inc()


def record_breaker_state(provider: str, host: str, entered: str, worst: str) -> None:
    """A circuit of (provider, host label) entered ``entered``; ``worst`` is the label's worst state now."""
    metric = collectors()
    metric.breaker_state.labels(provider, host).set(STATE_LEVELS[worst])
    metric.breaker_transitions.labels(provider, host, entered).inc()


def record_breaker_rejection(provider: str, host: str) -> None:
    """Count one call failed fast because its circuit was open."""
    collectors().breaker_rejections.labels(provider, host).inc()
