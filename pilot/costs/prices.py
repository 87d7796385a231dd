"""Prices of LLM tokens and the cost of one call: ``PriceBook.cost(provider, model, usage)``.

The shipped table (``prices.json`` next to this module) gives, per provider and model,
USD per million input and output tokens and the date the figures were checked. An
operator's ``PRICE_TABLE`` file in the same format adds models or overrides entries
(a self-hosted model priced at 0, a negotiated rate). A model is looked up by its
exact name, then without a trailing snapshot date or ``-latest`` (``gpt-4o-mini-2024-07-18``
and ``claude-3-5-haiku-latest`` are priced as ``gpt-4o-mini`` and ``claude-3-5-haiku``),
so an entry for a dated snapshot whose price differs wins over its family's.

``PriceBook.cost`` is the one function every path that learns a call's usage calls (a
step's reply, a stream's final usage chunk): a model without a price gives the
tokens with ``cost_usd`` None, and a warning once per process and model.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from pilot.errors import ConfigurationError

log = logging.getLogger(__name__)

SHIPPED_TABLE = Path(__file__).resolve().with_name("prices.json")
PER_MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("1e-10")  # execution_logs.cost_usd is numeric(20, 10)
MAX_TOKENS_COUNTED = 2**31 - 1  # execution_logs.input_tokens/output_tokens are integer
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


class PriceEntry(BaseModel):
    """One model's rates in USD per million tokens, and the day they were checked."""

    model_config = ConfigDict(extra="forbid")
    input: Decimal = Field(ge=0, le=1_000_000)
    output: Decimal = Field(ge=0, le=1_000_000)
    checked: date
    note: str | None = None


class ProviderPrices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | None = None
    models: dict[str, PriceEntry]


class PriceFile(BaseModel):
    """The format of ``prices.json`` and of an operator's ``PRICE_TABLE``."""

    model_config = ConfigDict(extra="forbid")
    about: str | None = None
    providers: dict[str, ProviderPrices]


@dataclass(frozen=True)
class Price:
    """The rates a call is priced at: ``model`` is the table's name for it; ``operator`` when from PRICE_TABLE."""

    provider: str
    model: str
    input_per_million: Decimal
    output_per_million: Decimal
    checked: date
    operator: bool


@dataclass(frozen=True)
class Usage:
    """Tokens one call consumed, as the vendor reported them (None: not reported)."""

    input_tokens: int | None
    output_tokens: int | None

    @classmethod
    def from_vendor(cls, usage: Any) -> Usage | None:
        """OpenAI's ``prompt_tokens``/``completion_tokens`` or Anthropic's ``input_tokens``/``output_tokens``.

        None when the reply carried no usage at all; a count that is not a
        non-negative integer is treated as not reported.
        """
        if not isinstance(usage, dict):
            return None
        found = cls(
            _count(usage.get("input_tokens", usage.get("prompt_tokens"))),
            _count(usage.get("output_tokens", usage.get("completion_tokens"))),
        )
        return None if found.input_tokens is None and found.output_tokens is None else found


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_COUNTED:
        return None
    return value


@dataclass(frozen=True)
class StepCost:
    """What one call used and cost: ``cost_usd`` None when the model has no price or usage was not reported."""

    provider: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: Decimal | None
    price: Price | None

    def to_metadata(self) -> dict[str, Any]:
        """The step result's ``metadata.cost``: plain JSON (the cost as a number)."""
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": float(self.cost_usd) if self.cost_usd is not None else None,
            "priced_as": self.price.model if self.price else None,
            "price_checked": self.price.checked.isoformat() if self.price else None,
        }


def price_of(price: Price, usage: Usage) -> Decimal:
    """USD for ``usage`` at ``price`` (a count not reported counts as 0), to 10 decimal places."""
    spent = (
        Decimal(usage.input_tokens or 0) * price.input_per_million
        + Decimal(usage.output_tokens or 0) * price.output_per_million
    ) / PER_MILLION
    return spent.quantize(COST_QUANTUM)


def read_table(path: Path, what: str) -> PriceFile:
    """The price file at ``path``; ConfigurationError naming ``what`` (and the first problem) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return PriceFile.model_validate(data)
    except OSError as exc:
        raise ConfigurationError(f"{what} cannot be read: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError are ValueErrors
        raise ConfigurationError(f"{what} is not a valid price table: {_problem(exc)}") from None


def _problem(exc: ValueError) -> str:
    if isinstance(exc, PydanticValidationError):
        error = exc.errors(include_url=False)[0]
        return ".".join(str(part) for part in error["loc"]) + ": " + error["msg"]
    return str(exc)


class PriceBook:
    """Prices by (provider, model): the operator's entries over the shipped ones; safe to share between threads."""

    def __init__(self, shipped: PriceFile, operator: PriceFile | None = None) -> None:
        self._prices: dict[tuple[str, str], Price] = {}
        for table, from_operator in ((shipped, False), (operator, True)):
            for provider, block in table.providers.items() if table else ():
                for model, entry in block.models.items():
                    self._prices[(provider, model)] = Price(
                        provider, model, entry.input, entry.output, entry.checked, from_operator
                    )
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, operator_file: Path | None = None) -> PriceBook:
        """The shipped table, with ``operator_file`` (PRICE_TABLE) over it; ConfigurationError when unusable."""
        shipped = read_table(SHIPPED_TABLE, "the shipped price table")
        operator = read_table(operator_file, f"PRICE_TABLE ({operator_file})") if operator_file else None
        return cls(shipped, operator)

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of ``model`` at ``provider``: exact name, then without a snapshot date or ``-latest``."""
        name = model.strip()
        found = self._prices.get((provider, name))
        if found is None:
            base = _SNAPSHOT_SUFFIX.sub("", name)
            found = self._prices.get((provider, base)) if base != name else None
        return found

    def models(self, provider: str) -> list[Price]:
        """Every priced model of ``provider``, by name."""
        return sorted((p for (prov, _), p in self._prices.items() if prov == provider), key=lambda p: p.model)

    def cost(self, provider: str, model: str, usage: Usage | None) -> StepCost:
        """What a call of ``model`` at ``provider`` that used ``usage`` cost.

        Usage None (not reported): tokens and cost None. A model without a price:
        tokens as reported, cost None, and a warning the first time this process
        meets that model.
        """
        price = self.lookup(provider, model)
        if price is None:
            self.warn_once(provider, model, "has no price in the price table: its steps record tokens, cost null")
        if usage is None:
            return StepCost(provider, model, None, None, None, price)
        spent = price_of(price, usage) if price is not None else None
        return StepCost(provider, model, usage.input_tokens, usage.output_tokens, spent, price)

    def warn_once(self, provider: str, model: str, what: str) -> None:
        """Log ``provider`` model ``what`` once per process and (provider, model)."""
        key = (provider, model)
        with self._lock:
            if key in self._warned or len(self._warned) > 10_000:  # bounded: model names come from users
                return
            self._warned.add(key)
        log.warning("%s model %r %s; add it to PRICE_TABLE to price it", provider, model, what)
