"""Whether a scheduled firing may run under its owner's budget: the store's facts, ``budget.firing_allowed``'s rule."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from pilot.costs.budget import FiringDecision, budget_from, firing_allowed
from pilot.data import store

if TYPE_CHECKING:
    from database import Cursor


def check_firing(cur: Cursor, user_id: str) -> FiringDecision:
    """``firing_allowed`` for a plan of ``user_id`` now, read in the firing's own transaction (as that user)."""
    row = store.budget_for_firing(cur, user_id)
    return firing_allowed(budget_from(row), Decimal(row["month_spent"]) if row else Decimal(0))
