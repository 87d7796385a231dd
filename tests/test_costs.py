"""Usage and cost per LLM step (issue 11 item 1): the price table, the cost function, the log
columns, a run's totals, GET /api/metrics/costs and the Prometheus counters, against loopback vendors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from pilot.application import PilotApp
from pilot.costs.prices import SHIPPED_TABLE, PriceBook, Usage, read_table
from pilot.errors import ConfigurationError
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import SERVER_ERROR, FakeAnthropic, FakeOpenAI, Reply
from tests.llm_support import (
    FAKE_INPUT_TOKENS,
    FAKE_OUTPUT_TOKENS,
    STEP_COST,
    TEST_MODEL,
    chat,
    execute,
    llm_app,
    store_key,
    write_price_table,
)
from tests.test_metrics_endpoint import scrape, value


def reference_cost(input_tokens: int, output_tokens: int, input_rate: str, output_rate: str) -> Decimal:
    """A plain implementation: tokens times USD per million, over a million."""
    return (input_tokens * Decimal(input_rate) + output_tokens * Decimal(output_rate)) / 1_000_000


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def llm(session_db: str, tmp_path: Path, fernet_key: str, openai: FakeOpenAI) -> Iterator[PilotApp]:
    app = llm_app(session_db, tmp_path, fernet_key, openai)
    yield app
    app.db.close()


# --- the price table ---------------------------------------------------------------------


def test_the_shipped_table_is_valid_and_dates_every_price() -> None:
    table = read_table(SHIPPED_TABLE, "shipped")
    assert {"openai", "anthropic", "groq"} <= set(table.providers)
    for provider in ("openai", "anthropic", "groq"):
        assert table.providers[provider].source and "http" in (table.providers[provider].source or "")
        for entry in table.providers[provider].models.values():
            assert entry.input >= 0 and entry.output >= 0 and entry.checked.year >= 2025
    # Every built-in provider's default model has a price: the default steps are never unpriced.
    book = PriceBook.load()
    for provider, model in (("openai", "gpt-4o-mini"), ("groq", "llama-3.1-8b-instant")):
        assert book.lookup(provider, model) is not None
    assert book.lookup("anthropic", "claude-3-5-haiku-latest") is not None


def test_snapshot_names_are_priced_as_their_family_unless_listed() -> None:
    book = PriceBook.load()
    family = book.lookup("openai", "gpt-4o")
    assert family is not None
    assert book.lookup("openai", "gpt-4o-2024-08-06") == family  # a dated snapshot: the family's rates
    first = book.lookup("openai", "gpt-4o-2024-05-13")  # listed itself, at its own (launch) rates
    assert (
        first is not None and first.model == "gpt-4o-2024-05-13" and first.input_per_million != family.input_per_million
    )
    assert book.lookup("anthropic", "claude-sonnet-4-5-20250929") == book.lookup("anthropic", "claude-sonnet-4-5")
    assert book.lookup("openai", "gpt-4o-mini-banana") is None
    assert book.lookup("groq", "gpt-4o") is None  # prices are per provider


def test_the_operator_table_adds_and_overrides(tmp_path: Path) -> None:
    path = write_price_table(tmp_path, {"gpt-4o-mini": ("1", "2"), "my-llama": ("0", "0")})
    book = PriceBook.load(path)
    mini = book.lookup("openai", "gpt-4o-mini")
    assert mini is not None and (mini.input_per_million, mini.output_per_million, mini.operator) == (1, 2, True)
    assert book.lookup("openai", "my-llama") is not None
    assert book.cost("openai", "my-llama", Usage(1000, 1000)).cost_usd == 0
    assert book.lookup("openai", "gpt-4o") is not None  # the rest of the shipped table stays


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not a valid price table"),
        ('{"providers": {"openai": {"models": {"m": {"input": -1, "output": 1, "checked": "2026-01-01"}}}}}', "input"),
        ('{"providers": {"openai": {"models": {"m": {"input": 1, "output": 1}}}}}', "checked"),
        ('{"providers": {}, "extra": 1}', "extra"),
    ],
)
def test_a_bad_price_table_stops_startup_naming_it(
    tmp_path: Path, session_db: str, fernet_key: str, content: str, needle: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as raised:
        make_app(session_db, tmp_path, (fernet_key,), price_table=path)
    assert "PRICE_TABLE" in raised.value.message and needle in raised.value.message
    with pytest.raises(ConfigurationError, match="cannot be read"):
        make_app(session_db, tmp_path, (fernet_key,), price_table=tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}, Usage(7, 3)),  # OpenAI, Groq
        ({"input_tokens": 11, "output_tokens": 5}, Usage(11, 5)),  # Anthropic
        ({"input_tokens": None, "output_tokens": None}, None),
        ({"prompt_tokens": "7", "completion_tokens": -1}, None),
        ({"prompt_tokens": True, "completion_tokens": 2}, Usage(None, 2)),
        (None, None),
    ],
)
def test_usage_is_read_from_either_vendor_shape(usage: object, expected: Usage | None) -> None:
    assert Usage.from_vendor(usage) == expected


@pytest.mark.parametrize(
    ("provider", "model", "tokens"),
    [
        ("openai", "gpt-4o-mini", (7, 3)),
        ("anthropic", "claude-haiku-4-5-20251001", (1234, 567)),
        ("groq", "qwen/qwen3-32b", (1, 0)),
    ],
)
def test_cost_is_tokens_times_the_listed_rates(provider: str, model: str, tokens: tuple[int, int]) -> None:
    book = PriceBook.load()
    listed = json.loads(SHIPPED_TABLE.read_text())["providers"][provider]["models"]
    family = model if model in listed else model.rsplit("-", 1)[0]
    rates = listed[family]
    cost = book.cost(provider, model, Usage(*tokens))
    assert cost.cost_usd == reference_cost(*tokens, rates["input"], rates["output"])
    assert (cost.input_tokens, cost.output_tokens) == tokens


def test_an_unpriced_model_gives_tokens_cost_null_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    book = PriceBook.load()
    with caplog.at_level(logging.WARNING, logger="pilot.costs.prices"):
        first = book.cost("openai", "mystery-model", Usage(5, 6))
        second = book.cost("openai", "mystery-model", Usage(1, 1))
    assert (first.input_tokens, first.output_tokens, first.cost_usd) == (5, 6, None)
    assert second.cost_usd is None
    warnings = [r for r in caplog.records if "mystery-model" in r.getMessage()]
    assert len(warnings) == 1 and "PRICE_TABLE" in warnings[0].getMessage()


# --- steps, logs, runs ---------------------------------------------------------------------


def test_an_llm_step_records_its_tokens_and_cost_on_its_log_row(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    result = resp_json(execute(client, user, chat()))
    assert result["success"] is True
    cost = result["metadata"]["cost"]
    assert cost["model"] == TEST_MODEL and cost["priced_as"] == TEST_MODEL
    assert (cost["input_tokens"], cost["output_tokens"]) == (FAKE_INPUT_TOKENS, FAKE_OUTPUT_TOKENS)
    assert Decimal(str(cost["cost_usd"])) == STEP_COST
    [row] = resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == (TEST_MODEL, 7, 3)
    assert Decimal(str(row["cost_usd"])) == STEP_COST


def test_the_default_model_of_a_vendor_is_priced_from_the_shipped_table(
    session_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    with FakeAnthropic() as fake:
        app = make_app(session_db, tmp_path, (fernet_key,), anthropic_base_url=fake.base_url)
        try:
            client = app.test_client()
            store_key(client, user, "anthropic")
            step = {"provider": "anthropic", "action": "messages", "params": {"prompt": "hi"}}
            cost = resp_json(execute(client, user, step))["metadata"]["cost"]
        finally:
            app.db.close()
    rates = json.loads(SHIPPED_TABLE.read_text())["providers"]["anthropic"]["models"]["claude-3-5-haiku"]
    assert cost["model"] == "claude-3-5-haiku-latest" and cost["priced_as"] == "claude-3-5-haiku"
    assert Decimal(str(cost["cost_usd"])) == reference_cost(11, 5, rates["input"], rates["output"])


def test_steps_that_are_not_llm_steps_have_no_cost(llm: PilotApp, user: str) -> None:
    client = llm.test_client()
    step = {"provider": "logic", "action": "transform", "params": {"template": 1}}
    assert "cost" not in resp_json(execute(client, user, step))["metadata"]
    [row] = resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]
    assert (row["model"], row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (None, None, None, None)


def test_an_unpriced_model_records_tokens_with_cost_null(llm: PilotApp, user: str) -> None:
    client = llm.test_client()
    store_key(client, user)
    result = resp_json(execute(client, user, chat(model="not-in-any-table")))
    assert result["success"] is True
    assert result["metadata"]["cost"]["cost_usd"] is None and result["metadata"]["cost"]["input_tokens"] == 7
    [row] = resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]
    assert row["input_tokens"] == 7 and row["cost_usd"] is None


def test_a_failed_call_costs_nothing_and_a_reply_without_usage_is_unknown(
    llm: PilotApp, user: str, openai: FakeOpenAI
) -> None:
    client = llm.test_client()
    store_key(client, user)
    openai.script(SERVER_ERROR)
    failed = resp_json(execute(client, user, chat(retry={"max_attempts": 1})))
    assert failed["success"] is False and failed["metadata"]["cost"]["cost_usd"] == 0
    no_usage = {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    openai.script(Reply(json=no_usage))
    unknown = resp_json(execute(client, user, chat()))
    assert unknown["success"] is True
    assert unknown["metadata"]["cost"]["input_tokens"] is None and unknown["metadata"]["cost"]["cost_usd"] is None


def test_a_run_shows_its_total_tokens_and_cost(llm: PilotApp, user: str) -> None:
    client = llm.test_client()
    store_key(client, user)
    steps = [
        {"id": "a", **chat()},
        {"id": "b", **chat(prompt="{{ steps.a.data.text }}")},
        {"id": "c", "provider": "logic", "action": "transform", "params": {"template": 1}},
        {"id": "d", **chat(model="unknown-llm")},
    ]
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "costly", "steps": steps}))
    run = resp_json(client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": user}))
    assert run["status"] == "success"
    assert run["usage"] == {
        "input_tokens": 3 * FAKE_INPUT_TOKENS,
        "output_tokens": 3 * FAKE_OUTPUT_TOKENS,
        "cost_usd": float(2 * STEP_COST),
        "llm_steps": 3,
        "unpriced_steps": 1,
    }
    # the answer's logs came back with the run's finish; a later read of the run gives the very same answer
    assert resp_json(client.get(f"/api/runs/{run['id']}?user_id={user}")) == run


# --- GET /api/metrics/costs -------------------------------------------------------------------


def test_cost_report_groups_by_provider_model_plan_and_day(llm: PilotApp, user: str, other_user: str) -> None:
    client = llm.test_client()
    store_key(client, user)
    store_key(client, other_user)
    execute(client, user, chat())
    execute(client, user, chat(model="unknown-llm"))
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [chat()]}))
    client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": user})
    execute(client, other_user, chat())  # another user's spend never shows

    by_provider = resp_json(client.get(f"/api/metrics/costs?user_id={user}"))
    assert by_provider["group_by"] == "provider"
    [group] = by_provider["groups"]
    assert group["provider"] == "openai" and group["steps"] == 3 and group["unpriced_steps"] == 1
    assert (group["input_tokens"], group["output_tokens"]) == (21, 9)
    assert Decimal(str(group["cost_usd"])) == 2 * STEP_COST
    assert by_provider["total"] == {k: group[k] for k in by_provider["total"]}

    by_model = resp_json(client.get(f"/api/metrics/costs?user_id={user}&group_by=model&hours=1"))["groups"]
    assert {(g["model"], g["steps"]) for g in by_model} == {(TEST_MODEL, 2), ("unknown-llm", 1)}
    by_plan = resp_json(client.get(f"/api/metrics/costs?user_id={user}&group_by=plan"))["groups"]
    assert {(g["plan_id"], g["plan_name"], g["steps"]) for g in by_plan} == {(None, None, 2), (plan["id"], "p", 1)}
    today = datetime.now(UTC).date().isoformat()
    by_day = resp_json(client.get(f"/api/metrics/costs?user_id={user}&group_by=day"))["groups"]
    assert [(g["day"], g["steps"]) for g in by_day] == [(today, 3)]
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    empty = resp_json(client.get("/api/metrics/costs", query_string={"user_id": user, "since": later}))
    assert empty["groups"] == [] and empty["total"]["steps"] == 0


def test_hours_and_since_together_start_at_the_later_of_the_two(client: object, user: str) -> None:
    """Issue 8 item 3: both filters apply (it was a 400, which the OpenAPI document could not express)."""
    before = datetime.now(UTC)
    both = client.get(f"/api/metrics/costs?user_id={user}&hours=1&since=2026-01-01T00:00:00Z")  # type: ignore[attr-defined]
    assert both.status_code == 200, both.get_data(as_text=True)
    start = datetime.fromisoformat(resp_json(both)["since"])
    assert before - timedelta(hours=1, minutes=1) <= start <= datetime.now(UTC) - timedelta(minutes=59)
    later = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
    recent = client.get(  # type: ignore[attr-defined]
        "/api/metrics/costs", query_string={"user_id": user, "hours": "24", "since": later.isoformat()}
    )
    assert datetime.fromisoformat(resp_json(recent)["since"]) == later


@pytest.mark.parametrize(
    "query",
    [
        "group_by=user",
        "hours=0",
        "hours=%D9%A3",
        "since=yesterday",
        "hours=99999",
    ],
)
def test_cost_report_refuses_bad_queries_with_400(client: object, user: str, query: str) -> None:
    response = client.get(f"/api/metrics/costs?user_id={user}&{query}")  # type: ignore[attr-defined]
    assert response.status_code == 400, response.get_data(as_text=True)
    assert resp_json(response)["error"]["code"] == "invalid_request"


def test_prometheus_counts_tokens_and_cost_by_provider_and_model(llm: PilotApp, user: str) -> None:
    client = llm.test_client()
    store_key(client, user)
    before = scrape(client)
    execute(client, user, chat())
    execute(client, user, chat(model="made-up-name-1"))
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pilot_llm_tokens_total", provider="openai", model=TEST_MODEL, kind="input") == FAKE_INPUT_TOKENS
    assert delta("pilot_llm_tokens_total", provider="openai", model=TEST_MODEL, kind="output") == FAKE_OUTPUT_TOKENS
    assert delta("pilot_llm_cost_usd_total", provider="openai", model=TEST_MODEL) == pytest.approx(float(STEP_COST))
    # A model without a price is counted under 'unpriced', never under its (user-chosen) name.
    assert delta("pilot_llm_tokens_total", provider="openai", model="unpriced", kind="input") == FAKE_INPUT_TOKENS
    assert not any(dict(labels).get("model") == "made-up-name-1" for _, labels in after)


def test_the_new_answers_match_their_documented_schemas(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    from tests.test_openapi import SPEC_ENDPOINTS, check

    client = llm.test_client()
    document = resp_json(client.get("/api/openapi.json"))
    paths = document["paths"]
    for endpoint in ("GET /api/budget", "PUT /api/budget", "DELETE /api/budget", "GET /api/metrics/costs"):
        method, path = endpoint.split()
        assert endpoint not in SPEC_ENDPOINTS and method.lower() in paths[path]
    for method, path in (("post", "/api/execute-step"), ("post", "/api/plans"), ("post", "/api/plans/{plan_id}/run")):
        operation = paths[path][method]
        assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation["parameters"]
        assert {"409", "422"} <= set(operation["responses"])
    store_key(client, user)
    check(document, "ProviderResult", resp_json(execute(client, user, chat())))
    check(document, "LogList", resp_json(client.get(f"/api/logs?user_id={user}")))
    check(document, "Budget", resp_json(client.get(f"/api/budget?user_id={user}")))
    budget = client.put("/api/budget", json={"user_id": user, "monthly_usd": 5})
    check(document, "Budget", resp_json(budget))
    for group_by in ("provider", "model", "plan", "day"):
        check(document, "CostReport", resp_json(client.get(f"/api/metrics/costs?user_id={user}&group_by={group_by}")))
    described = resp_json(client.get("/api/providers/openai"))
    check(document, "ProviderDescription", described)
    hosts = [host["host"] for host in described["circuit_breakers"]["hosts"]]
    assert hosts == sorted([openai.url.removeprefix("http://"), "api.openai.com"])  # the defaults, by name
    plan = resp_json(
        client.post("/api/plans", json={"user_id": user, "name": "d", "steps": [chat()], "max_cost_usd": 1})
    )
    check(document, "Plan", plan)
    check(
        document,
        "RunWithLogs",
        resp_json(client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": user})),
    )
