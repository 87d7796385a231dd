"""What the API shows of costs: a user's budget and month, cost reports, a run's totals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pilot.costs.schemas import BudgetBody, CostQuery
from pilot.data import store

if TYPE_CHECKING:
    from database import DatabaseManager

GROUP_FIELDS = {
    "provider": ("provider",),
    "model": ("provider", "model"),
    "plan": ("plan_id", "plan_name"),
    "day": ("day",),
}
TOTAL_FIELDS = ("input_tokens", "output_tokens", "cost_usd", "steps", "unpriced_steps")


def budget_view(db: DatabaseManager, user_id: str) -> dict[str, Any]:
    """The user's budget (None when unset) and the current UTC month's recorded spend."""
    with db.transaction(user_id) as cur:
        row = store.get_budget(cur, user_id)
        month = store.month_spend(cur, user_id)
    spent = float(month["spent_usd"])
    view: dict[str, Any] = {
        "budget": None,
        "month": month["month"],
        "spent_usd": spent,
        "priced_steps": month["priced_steps"],
        "remaining_usd": None,
        "exceeded": False,
    }
    if row is not None:
        monthly = float(row["monthly_usd"])
        view["budget"] = {
            "monthly_usd": monthly,
            "on_exceed": row["on_exceed"],
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(),
        }
        view["remaining_usd"] = max(0.0, round(monthly - spent, 10))
        view["exceeded"] = spent >= monthly
    return view


def set_budget(db: DatabaseManager, user_id: str, body: BudgetBody) -> dict[str, Any]:
    """Create or replace the user's budget; the budget view after it."""
    with db.transaction(user_id) as cur:
        store.put_budget(cur, user_id, body.monthly(), body.on_exceed)
    return budget_view(db, user_id)


def remove_budget(db: DatabaseManager, user_id: str) -> bool:
    """Delete the user's budget; False when there was none."""
    with db.transaction(user_id) as cur:
        return store.delete_budget(cur, user_id)


def cost_report(db: DatabaseManager, user_id: str, query: CostQuery) -> dict[str, Any]:
    """Tokens, cost and steps of the user's LLM steps in the window, per group and in total."""
    since = query.start()
    with db.transaction(user_id) as cur:
        rows = store.cost_report(cur, user_id, since, query.group_by)
    keys = GROUP_FIELDS[query.group_by]
    groups = [{**{key: row[key] for key in keys}, **{key: row[key] for key in TOTAL_FIELDS}} for row in rows]
    total = {key: sum(row[key] for row in rows) for key in TOTAL_FIELDS}
    total["cost_usd"] = round(float(total["cost_usd"]), 10)
    return {"since": since.isoformat(), "group_by": query.group_by, "groups": groups, "total": total}


def run_totals(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's LLM usage from its log rows: tokens, cost (priced steps only) and step counts."""
    llm = [row for row in logs if row.get("model") is not None]
    return {
        "input_tokens": sum(row.get("input_tokens") or 0 for row in llm),
        "output_tokens": sum(row.get("output_tokens") or 0 for row in llm),
        "cost_usd": round(sum(float(row.get("cost_usd") or 0) for row in llm), 10),
        "llm_steps": len(llm),
        "unpriced_steps": sum(1 for row in llm if row.get("cost_usd") is None),
    }
