"""Budgets that act before spending (issue 11 item 2): PUT/GET /api/budget, refusal before any call,
the overshoot bound under concurrency, unpriced models, a plan's max_cost_usd, scheduled firings."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.costs.budget import Budget, Standing, admission, firing_allowed, month_of
from pilot.data import store
from scheduler import PilotScheduler
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import FakeOpenAI
from tests.llm_support import (
    STEP_COST,
    TEST_MODEL,
    GatedOpenAI,
    chat,
    completions,
    execute,
    llm_app,
    poll,
    store_key,
)
from tests.test_metrics_endpoint import scrape, value


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def llm(session_db: str, tmp_path: Path, fernet_key: str, openai: FakeOpenAI) -> Iterator[PilotApp]:
    app = llm_app(session_db, tmp_path, fernet_key, openai)
    yield app
    app.db.close()


def put_budget(client: FlaskClient, user: str, monthly: float, on_exceed: str = "refuse") -> dict[str, Any]:
    response = client.put("/api/budget", json={"user_id": user, "monthly_usd": monthly, "on_exceed": on_exceed})
    assert response.status_code == 200, response.get_data(as_text=True)
    return resp_json(response)


def spend(app: PilotApp, user: str, usd: str) -> None:
    """Record spend for this month the way a finished step does."""
    with app.db.transaction(user) as cur:
        store.add_month_spend(cur, user, Decimal(usd))


def spent(client: FlaskClient, user: str) -> Decimal:
    return Decimal(str(resp_json(client.get(f"/api/budget?user_id={user}"))["spent_usd"]))


# --- the rules, against a plain restatement of the issue --------------------------------------


@pytest.mark.parametrize("on_exceed", ["refuse", "warn"])
@pytest.mark.parametrize("month_spent", ["0", "9.99", "10", "10.01"])
@pytest.mark.parametrize("priced", [True, False])
def test_admission_follows_the_issue_rules(on_exceed: str, month_spent: str, priced: bool) -> None:
    standing = Standing(Budget(Decimal(10), on_exceed), Decimal(month_spent))
    decision = admission(standing, provider="openai", model="m", priced=priced)
    over = Decimal(month_spent) >= 10  # "at or over the budget"
    if on_exceed == "refuse" and not priced:
        expected = "price_unknown"
    elif on_exceed == "refuse" and over:
        expected = "budget_exceeded"
    else:
        expected = None
    assert (decision.refusal.code if decision.refusal else None) == expected
    assert (decision.warning is not None) == (on_exceed == "warn" and over)


def test_without_a_budget_only_a_plan_cap_refuses() -> None:
    assert admission(Standing(None, Decimal(10**6)), provider="p", model="m", priced=False).refusal is None
    capped = Standing(None, Decimal(0), plan_max=Decimal("0.5"), run_spent=Decimal("0.5"))
    refusal = admission(capped, provider="p", model="m", priced=True).refusal
    assert refusal is not None and (refusal.code, refusal.reason) == ("budget_exceeded", "run_budget")
    below = Standing(None, Decimal(0), plan_max=Decimal("0.5"), run_spent=Decimal("0.49"))
    assert admission(below, provider="p", model="m", priced=True).refusal is None
    unpriced = admission(below, provider="p", model="m", priced=False).refusal
    assert unpriced is not None and unpriced.code == "price_unknown"


@pytest.mark.parametrize(
    ("budget", "month_spent", "allowed"),
    [
        (None, "100", True),
        (Budget(Decimal(5), "refuse"), "4.99", True),
        (Budget(Decimal(5), "refuse"), "5", False),
        (Budget(Decimal(5), "warn"), "7", True),
        (Budget(Decimal(0), "refuse"), "0", False),  # a zero budget stops every scheduled plan
    ],
)
def test_firing_allowed(budget: Budget | None, month_spent: str, allowed: bool) -> None:
    decision = firing_allowed(budget, Decimal(month_spent))
    assert decision.allowed is allowed
    assert (decision.reason or "").startswith("skipped: budget") is (not allowed)


@pytest.mark.parametrize(
    ("moment", "month"),
    [
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), date(2026, 12, 1)),
        # 19:30 on Dec 31 in New York is already January in UTC.
        (datetime(2027, 1, 1, 0, 30, tzinfo=UTC).astimezone(ZoneInfo("America/New_York")), date(2027, 1, 1)),
        (datetime(2026, 3, 1), date(2026, 3, 1)),
    ],
)
def test_the_month_is_the_utc_calendar_month(moment: datetime, month: date) -> None:
    assert month_of(moment) == month


# --- the API ------------------------------------------------------------------------------------


def test_the_largest_budget_and_sub_cent_budgets_are_stored_as_given(client: FlaskClient, user: str) -> None:
    assert put_budget(client, user, 10_000_000)["budget"]["monthly_usd"] == 10_000_000
    assert put_budget(client, user, 0.000001)["budget"]["monthly_usd"] == 0.000001
    assert put_budget(client, user, 0.1)["budget"]["monthly_usd"] == 0.1


def test_budget_api_sets_shows_and_removes(client: FlaskClient, user: str, other_user: str) -> None:
    empty = resp_json(client.get(f"/api/budget?user_id={user}"))
    assert empty["budget"] is None and empty["spent_usd"] == 0 and empty["exceeded"] is False
    assert empty["month"] == datetime.now(UTC).strftime("%Y-%m")
    shown = put_budget(client, user, 12.5)
    assert shown["budget"]["monthly_usd"] == 12.5 and shown["budget"]["on_exceed"] == "refuse"
    assert shown["remaining_usd"] == 12.5
    replaced = put_budget(client, user, 3, "warn")["budget"]
    assert (replaced["monthly_usd"], replaced["on_exceed"]) == (3.0, "warn")
    assert replaced["created_at"] == shown["budget"]["created_at"]  # one budget per user, replaced
    assert resp_json(client.get(f"/api/budget?user_id={other_user}"))["budget"] is None  # per user
    assert client.delete(f"/api/budget?user_id={user}").status_code == 204
    assert client.delete(f"/api/budget?user_id={user}").status_code == 404
    assert resp_json(client.get(f"/api/budget?user_id={user}"))["budget"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"monthly_usd": -1},
        {"monthly_usd": "ten"},
        {"monthly_usd": 10, "on_exceed": "panic"},
        {"monthly_usd": 10, "extra": 1},
        {"monthly_usd": 10_000_001},
    ],
)
def test_bad_budgets_are_400_naming_the_field(client: FlaskClient, user: str, body: dict[str, Any]) -> None:
    response = client.put("/api/budget", json={"user_id": user, **body})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert resp_json(response)["error"]["code"] == "invalid_request"


# --- refusing before any call -----------------------------------------------------------------------


def test_a_spent_budget_refuses_the_step_before_any_request_reaches_the_upstream(
    llm: PilotApp, user: str, openai: FakeOpenAI
) -> None:
    client = llm.test_client()
    store_key(client, user)
    put_budget(client, user, 0.015)
    first = resp_json(execute(client, user, chat()))  # 0 < 0.015: runs, spends 0.01
    second = resp_json(execute(client, user, chat()))  # 0.01 < 0.015: runs, spends 0.01 (overshoot: in flight)
    assert first["success"] and second["success"] and len(completions(openai)) == 2
    assert spent(client, user) == 2 * STEP_COST
    refused = resp_json(execute(client, user, chat()))  # 0.02 >= 0.015: refused, no call
    assert refused["success"] is False and refused["error"]["code"] == "budget_exceeded"
    assert "monthly budget" in refused["error"]["message"] and refused["error"]["retryable"] is False
    assert len(completions(openai)) == 2  # nothing reached the upstream
    assert refused["metadata"]["cost"]["cost_usd"] == 0 and refused["metadata"]["attempts"] == 1
    row = resp_json(client.get(f"/api/logs?user_id={user}&limit=1"))["logs"][0]
    assert (row["status"], row["error_code"], row["model"], row["cost_usd"]) == (
        "error",
        "budget_exceeded",
        TEST_MODEL,
        0,
    )
    assert spent(client, user) == 2 * STEP_COST
    view = resp_json(client.get(f"/api/budget?user_id={user}"))
    assert view["exceeded"] is True and view["remaining_usd"] == 0
    # Non-LLM steps are never refused by a budget.
    logic = {"provider": "logic", "action": "transform", "params": {"template": 1}}
    assert resp_json(execute(client, user, logic))["success"] is True
    put_budget(client, user, 1)  # a raised budget lets steps through again
    assert resp_json(execute(client, user, chat()))["success"] is True and len(completions(openai)) == 3


def test_a_refused_step_ends_its_run_and_the_refusal_is_counted(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    put_budget(client, user, 0)
    before = scrape(client)
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [chat(), chat()]}))
    run = resp_json(client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": user}))
    assert run["status"] == "error" and "monthly budget" in run["error"]
    assert len(run["logs"]) == 1 and run["logs"][0]["error_code"] == "budget_exceeded"
    assert completions(openai) == []
    after = scrape(client)
    reason = {"reason": "monthly_budget"}
    assert (
        value(after, "pilot_budget_refusals_total", **reason) - value(before, "pilot_budget_refusals_total", **reason)
        == 1
    )


def test_last_months_spend_does_not_count(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    put_budget(client, user, 1)
    last_month = month_of(datetime.now(UTC)).replace(day=1) - timedelta(days=1)
    with llm.db.transaction(user) as cur:  # what a step recorded last month (the counter row of that month)
        cur.execute(
            "INSERT INTO budget_spend (user_id, month, spent_usd, steps) VALUES (%s, %s, 50, 1)",
            (user, last_month.replace(day=1)),
        )
    assert spent(client, user) == 0
    assert resp_json(execute(client, user, chat()))["success"] is True


def test_warn_budgets_run_the_step_and_say_so(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    put_budget(client, user, 0.001, "warn")
    spend(llm, user, "0.5")
    result = resp_json(execute(client, user, chat(model="not-priced")))  # warn: even an unpriced model runs
    assert result["success"] is True and "on_exceed=warn" in result["metadata"]["budget_warning"]
    assert len(completions(openai)) == 1


def test_an_unpriced_model_is_refused_under_refuse_unless_the_operator_prices_it(
    session_db: str, tmp_path: Path, fernet_key: str, openai: FakeOpenAI, user: str
) -> None:
    app = llm_app(session_db, tmp_path, fernet_key, openai)
    try:
        client = app.test_client()
        store_key(client, user)
        put_budget(client, user, 100)
        refused = resp_json(execute(client, user, chat(model="local-llama")))
        assert refused["error"]["code"] == "price_unknown" and "PRICE_TABLE" in refused["error"]["message"]
        assert completions(openai) == []
        client.delete(f"/api/budget?user_id={user}")
        assert resp_json(execute(client, user, chat(model="local-llama")))["success"] is True  # no budget: runs
    finally:
        app.db.close()
    from tests.llm_support import write_price_table

    operator = write_price_table(tmp_path, {"local-llama": ("0", "0")})
    app = make_app(session_db, tmp_path, (fernet_key,), openai_base_url=openai.base_url, price_table=operator)
    try:
        client = app.test_client()
        put_budget(client, user, 100)
        priced = resp_json(execute(client, user, chat(model="local-llama")))
        assert priced["success"] is True and priced["metadata"]["cost"]["cost_usd"] == 0
    finally:
        app.db.close()


def test_a_plans_max_cost_usd_caps_each_run(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    steps = [{"id": f"s{i}", **chat()} for i in range(4)]
    created = client.post("/api/plans", json={"user_id": user, "name": "capped", "steps": steps, "max_cost_usd": 0.015})
    assert created.status_code == 201 and resp_json(created)["max_cost_usd"] == 0.015
    plan = resp_json(created)
    run = resp_json(client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": user}))
    # Steps run one after another: s0 (0 < 0.015) and s1 (0.01 < 0.015) run, s2 is refused.
    assert run["status"] == "error" and "max_cost_usd" in run["error"]
    assert [log["error_code"] for log in run["logs"]] == [None, None, "budget_exceeded"]
    assert len(completions(openai)) == 2 and run["usage"]["cost_usd"] == float(2 * STEP_COST)
    # Each run has its own cap; PATCH keeps or changes it.
    assert (
        resp_json(client.patch(f"/api/plans/{plan['id']}", json={"user_id": user, "name": "n"}))["max_cost_usd"]
        == 0.015
    )
    assert (
        resp_json(client.patch(f"/api/plans/{plan['id']}", json={"user_id": user, "max_cost_usd": None}))[
            "max_cost_usd"
        ]
        is None
    )
    again = resp_json(client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": user}))
    assert again["status"] == "success" and len(completions(openai)) == 6
    bad = client.post("/api/plans", json={"user_id": user, "name": "x", "steps": steps, "max_cost_usd": -1})
    assert bad.status_code == 400 and "max_cost_usd" in resp_json(bad)["error"]["message"]


# --- the overshoot bound ------------------------------------------------------------------------


def test_twenty_concurrent_steps_overshoot_by_at_most_the_steps_in_flight(
    session_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    """All 20 start while the budget is nearly spent: each is admitted or refused, never more
    admitted than were in flight, and once their costs are recorded every further step is refused."""
    with GatedOpenAI() as gated:
        app = llm_app(session_db, tmp_path, fernet_key, gated)
        try:
            client = app.test_client()
            store_key(client, user)
            put_budget(client, user, 1)
            spend(app, user, "0.975")  # 2.5 steps of budget left

            def step(_: int) -> dict[str, Any]:
                return resp_json(execute(app.test_client(), user, chat()))

            with ThreadPoolExecutor(20) as pool:
                futures = [pool.submit(step, i) for i in range(20)]
                # In flight: admitted and held by the upstream. Wait until every step is either held or answered.
                assert poll(lambda: gated.held + sum(f.done() for f in futures) == 20), (gated.held, futures)
                in_flight = gated.held
                gated.release()
                results = [f.result(timeout=60) for f in futures]
            ran = [r for r in results if r["success"]]
            refused = [r for r in results if not r["success"]]
            assert all(r["error"]["code"] == "budget_exceeded" for r in refused)
            assert len(ran) == in_flight == len(completions(gated))  # every admitted step was in flight
            overshoot = spent(client, user) - 1
            assert overshoot <= in_flight * STEP_COST
            assert spent(client, user) == Decimal("0.975") + len(ran) * STEP_COST  # every cost recorded, once
            late = resp_json(execute(client, user, chat()))
            assert late["error"]["code"] == "budget_exceeded" and len(completions(gated)) == in_flight
        finally:
            app.db.close()


def test_twenty_steps_five_in_flight_stop_within_five_steps_of_the_budget(
    llm: PilotApp, user: str, openai: FakeOpenAI
) -> None:
    """With at most five steps in flight, spend passes the budget by at most five steps' cost,
    and the other steps are refused without a call (without the check all 20 would run)."""
    client = llm.test_client()
    store_key(client, user)
    put_budget(client, user, 1)
    spend(llm, user, "0.975")

    def step(_: int) -> dict[str, Any]:
        return resp_json(execute(llm.test_client(), user, chat()))

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(step, range(20), timeout=120))
    ran = sum(1 for r in results if r["success"])
    assert all(r["error"]["code"] == "budget_exceeded" for r in results if not r["success"])
    assert ran == len(completions(openai))
    assert spent(client, user) - 1 <= 5 * STEP_COST  # at most the in-flight steps past the budget
    assert ran >= 3  # the budget itself was used: 0.975 + 3 steps reaches 1.005
    assert ran <= 2 + 5  # two recorded below the budget, then at most five in flight when it was reached


# --- scheduled firings --------------------------------------------------------------------------


def test_scheduled_plans_of_an_over_budget_user_are_skipped_with_reason_budget(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str, openai: FakeOpenAI
) -> None:
    app = llm_app(fresh_db, tmp_path, fernet_key, openai)
    try:
        client = app.test_client()
        store_key(client, user)
        llm_plan = resp_json(
            client.post(
                "/api/plans",
                json={"user_id": user, "name": "llm", "steps": [chat()], "schedule": {"interval_seconds": 60}},
            )
        )
        logic = {"provider": "logic", "action": "transform", "params": {"template": 1}}
        logic_plan = resp_json(
            client.post(
                "/api/plans",
                json={"user_id": user, "name": "free", "steps": [logic], "schedule": {"interval_seconds": 60}},
            )
        )
        put_budget(client, user, 1)
        spend(app, user, "1")
        scheduler = PilotScheduler(app)
        now = datetime.now(UTC).replace(second=0, microsecond=0)  # a slot of every 60 s interval

        def due(plan_id: int, moment: datetime) -> None:  # as a tick before would have stored it
            with app.db.transaction(None, as_app=False) as cur:
                cur.execute("UPDATE plan_schedules SET next_due_at = %s WHERE plan_id = %s", (moment, plan_id))

        before = scrape(client)
        due(llm_plan["id"], now)
        assert scheduler.tick(now).handed_over == []
        with app.db.transaction(user) as cur:
            [skipped] = store.list_runs(cur, user, llm_plan["id"], limit=10, offset=0)
        assert skipped["status"] == "skipped" and skipped["trigger"] == "schedule"
        assert skipped["error"].startswith("skipped: budget") and skipped["scheduled_for"] == now
        assert skipped["reason"] == "budget"
        assert completions(openai) == []
        outcome = {"outcome": "skipped_budget"}
        assert (
            value(scrape(client), "pilot_scheduler_firings_total", **outcome)
            - value(before, "pilot_scheduler_firings_total", **outcome)
            == 1
        )
        # Issue 11: no scheduled plan of that user fires, an LLM-free one included.
        due(logic_plan["id"], now)
        assert scheduler.tick(now).handed_over == []
        with app.db.transaction(user) as cur:
            [held] = store.list_runs(cur, user, logic_plan["id"], limit=10, offset=0)
        assert held["status"] == "skipped" and held["error"].startswith("skipped: budget")
        # A raised budget lets the next firing run.
        put_budget(client, user, 5)
        later = now + timedelta(minutes=1)
        due(llm_plan["id"], later)
        run = next(r for r in scheduler.tick(later).handed_over if r["plan_id"] == llm_plan["id"])
        assert run["status"] == "queued" and run["scheduled_for"] == later
        app.engine.drain(30)
        assert poll(lambda: len(completions(openai)) == 1)
    finally:
        app.engine.shutdown(wait=True)
        app.db.close()


@pytest.mark.parametrize("monthly", [False, True, "5"])
def test_a_budget_that_is_not_a_json_number_is_400(client: FlaskClient, user: str, monthly: Any) -> None:
    """Issue 8 item 3: strict, as the document says (false was taken as 0)."""
    response = client.put("/api/budget", json={"user_id": user, "monthly_usd": monthly})
    assert response.status_code == 400
    assert resp_json(response)["error"]["details"][0]["loc"] == ["body", "monthly_usd"]
