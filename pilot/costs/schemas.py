"""Request models of the cost endpoints: ``PUT /api/budget`` and ``GET /api/metrics/costs``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MONTHLY_USD = 10_000_000  # budgets.monthly_usd is numeric(14, 6): below 10^8
BUDGET_QUANTUM = Decimal("0.000001")  # budgets.monthly_usd is numeric(14, 6)
MAX_HOURS = 24 * 400  # a little more than a year of history
DEFAULT_HOURS = 24
_ASCII_INT = re.compile(r"[0-9]{1,7}")
GroupBy = Literal["provider", "model", "plan", "day"]


class BudgetBody(BaseModel):
    """``PUT /api/budget``: the user's monthly budget in USD and what happens once it is spent."""

    model_config = ConfigDict(extra="forbid")
    user_id: Any = None
    monthly_usd: float = Field(
        strict=True,
        ge=0,
        le=MAX_MONTHLY_USD,
        allow_inf_nan=False,
        description="USD per UTC calendar month; 0 stops all LLM spend",
    )
    on_exceed: Literal["refuse", "warn"] = Field(
        "refuse",
        description="refuse: LLM steps that would start once the month's recorded spend is at or over the "
        "budget fail with budget_exceeded and make no call, and scheduled plans with LLM steps are skipped; "
        "warn: they run, and their result carries budget_warning",
    )

    def monthly(self) -> Decimal:
        """The budget as stored: USD to 6 decimal places."""
        return Decimal(repr(self.monthly_usd)).quantize(BUDGET_QUANTUM)


class CostQuery(BaseModel):
    """``GET /api/metrics/costs?hours=&since=&group_by=``: the window (default the last 24 hours) and the grouping."""

    model_config = ConfigDict(extra="ignore")  # user_id and any other query parameter are not ours
    hours: int | None = Field(
        None,
        ge=1,
        le=MAX_HOURS,
        description=f"the last N hours (default {DEFAULT_HOURS})",
        json_schema_extra={"x-pilot-blank": True},
    )
    since: datetime | None = Field(
        None, description="from this ISO 8601 time on (naive means UTC)", json_schema_extra={"x-pilot-blank": True}
    )
    group_by: GroupBy = "provider"

    @field_validator("hours", mode="before")
    @classmethod
    def _ascii_hours(cls, value: Any) -> Any:
        """ASCII digits only: int() would also take '٣', ' 1' and '1_0'."""
        if value in (None, ""):
            return None
        if isinstance(value, str) and not _ASCII_INT.fullmatch(value):
            raise ValueError("hours must be a positive integer (ASCII digits)")
        return value

    @field_validator("since", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
                return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
            except (ValueError, OverflowError):
                raise ValueError("since must be an ISO 8601 timestamp between years 1 and 9999") from None
        return value

    def start(self, now: datetime | None = None) -> datetime:
        """The first instant the report covers: ``since``, the last ``hours``, or with both the later of the two
        (both filters apply; a query string cannot document "not both")."""
        recent = (now or datetime.now(UTC)) - timedelta(hours=self.hours or DEFAULT_HOURS)
        if self.since is None:
            return recent
        return self.since if self.hours is None else max(self.since, recent)
