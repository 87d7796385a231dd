"""JMESPath evaluation is bounded: a short expression cannot make time or memory explode.

``[@,@]|[@,@]|…`` doubles the expanded size of its value per stage while jmespath itself
only builds two references per stage; anything that serialises or copies the result then
pays the exponential price. These tests check that such expressions are *refused* with the
``expression_too_large`` code wherever JMESPath is evaluated (templates, ``when``,
``logic.condition``/``extract``), that other failures inside jmespath are step errors and
never 500s, and that big but legitimate results still work. Timings are printed, never
asserted.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from pilot.steps.templating import TemplateError, evaluate, render
from tests.conftest import resp_json


def doubling(stages: int) -> str:
    return "|".join(["[@,@]"] * stages)


def expanded_leaves(value: Any) -> int:
    """Leaves of ``value`` as JSON would write them (a plain reference count, for small values only)."""
    if isinstance(value, list):
        return sum(expanded_leaves(v) for v in value)
    return 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stages", [20, 166])
def test_doubling_expression_is_refused(stages: int) -> None:
    expression = doubling(stages)
    assert len(expression) <= 1_000  # within the expression length limit: only the bound can stop it
    started = time.perf_counter()
    with pytest.raises(TemplateError) as caught:
        evaluate(expression, {"a": 1})
    print(f"\n{stages} stages refused in {time.perf_counter() - started:.4f} s: {caught.value.message}")
    assert caught.value.code == "expression_too_large"
    assert caught.value.details["reason"] == "size"


def test_a_few_doublings_are_fine_and_exact() -> None:
    value = evaluate(doubling(10), {"a": 1})
    assert expanded_leaves(value) == 2**10


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stages", [20, 166])
@pytest.mark.parametrize("template", ["{{ %s }}", "prefix {{ %s }} suffix"])
def test_doubling_through_a_template_is_refused(stages: int, template: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TemplateError) as caught:
        render({"x": template % doubling(stages)}, {"a": 1})
    print(f"\ntemplate, {stages} stages refused in {time.perf_counter() - started:.4f} s")
    assert caught.value.code == "expression_too_large"
    assert caught.value.details["path"] == "params.x"


@pytest.mark.parametrize("depth", [200, 490])
def test_deep_literals_are_refused(depth: int) -> None:
    literal = "`" + "[" * depth + "]" * depth + "`"
    with pytest.raises(TemplateError) as caught:
        evaluate(literal, {})
    assert caught.value.code == "expression_too_large", caught.value.message


@pytest.mark.parametrize("depth", [200, 400])
def test_deep_multi_selects_are_refused(depth: int) -> None:
    with pytest.raises(TemplateError) as caught:
        evaluate("[" * depth + "@" + "]" * depth, {})
    assert caught.value.code == "expression_too_large", caught.value.message


def test_moderate_nesting_still_works() -> None:
    assert evaluate("`" + "[" * 20 + "1" + "]" * 20 + "`", {}) == json.loads("[" * 20 + "1" + "]" * 20)
    assert evaluate("[[[[a]]]]", {"a": 1}) == [[[[1]]]]


def test_join_cannot_build_a_huge_string() -> None:
    data = {"sep": "x" * 20_000, "words": ["w"] * 10_000}  # would be 200 MB of text
    with pytest.raises(TemplateError) as caught:
        evaluate("join(sep, words)", data)
    assert caught.value.code == "expression_too_large"
    assert evaluate("join(', ', words[:3])", data) == "w, w, w"


def shared(levels: int) -> list[Any]:
    """A value of 2**levels leaves built from ``levels`` small lists (each holds the previous twice)."""
    value: list[Any] = ["leaf"]
    for _ in range(levels):
        value = [value, value]
    return value


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "expression",
    [
        "to_string(a)",
        "a[][][][][][]",
        "sort(a" + "[]" * 30 + ")",
        "{x: a}",
        "[a]",
        "a",
        "join(',', a" + "[]" * 30 + ")",
    ],
)
def test_functions_and_projections_over_shared_data_are_bounded(expression: str) -> None:
    with pytest.raises(TemplateError) as caught:
        evaluate(expression, {"a": shared(60)})
    assert caught.value.code == "expression_too_large"
    assert evaluate("length(a)", {"a": shared(60)}) == 2


def test_one_long_string_listed_many_times_is_bounded() -> None:
    data = {"s": "x" * 20_000}
    many = "[" + ",".join(["s"] * 100) + "]"  # 100 references to a 20 KB string: 2 MB as JSON
    with pytest.raises(TemplateError) as caught:
        evaluate(many, data)
    assert caught.value.code == "expression_too_large"
    assert evaluate("[s, s]", data) == ["x" * 20_000] * 2


def test_projection_work_is_bounded_even_when_results_are_small() -> None:
    # Every element runs ~200 comparisons; 20k elements would be ~4M node visits for a tiny result.
    condition = " || ".join(f"@ == `{n}`" for n in range(60))
    data = {"xs": list(range(20_000))}
    with pytest.raises(TemplateError) as caught:
        evaluate(f"xs[?{condition}]", data)
    assert caught.value.code == "expression_too_large"
    assert caught.value.details["reason"] == "steps"
    assert evaluate(f"xs[:100] | [?{condition}]", data) == list(range(60))


def test_big_but_legitimate_results_still_work() -> None:
    items: list[dict[str, Any]] = [
        {"name": f"item-{i}", "value": (i * 7919) % 10_007, "tags": ["a", "b"]} for i in range(20_000)
    ]
    data = {"steps": {"fetch": {"data": {"items": items}}}}
    started = time.perf_counter()
    assert evaluate("steps.fetch.data.items[*].name", data) == [item["name"] for item in items]
    assert evaluate("length(steps.fetch.data.items)", data) == 20_000
    assert evaluate("max_by(steps.fetch.data.items, &value).value", data) == max(item["value"] for item in items)
    assert evaluate("join(',', steps.fetch.data.items[*].name)", data) == ",".join(item["name"] for item in items)
    assert evaluate("{all: steps.fetch.data.items, n: `1`}", data) == {"all": items, "n": 1}
    assert evaluate("steps.fetch.data.items[*].tags[]", data) == ["a", "b"] * 20_000
    assert json.loads(evaluate("to_string(steps.fetch.data)", data)) == {"items": items}
    rendered = render({"names": "{{ steps.fetch.data.items[:1000].name }}"}, data, max_output_chars=100_000)
    assert rendered == {"names": [item["name"] for item in items[:1000]]}
    print(f"\nbig legitimate expressions took {time.perf_counter() - started:.3f} s")


def test_ordering_other_than_numbers_or_strings_is_null() -> None:
    # The JMESPath specification: an ordering comparison of anything but two numbers is null
    # (jmespath.py also orders two strings).
    assert evaluate('`"a"` < `1`', {}) is None
    assert evaluate("`[1]` < `[2]`", {}) is None
    assert evaluate("`1` < `2`", {}) is True
    assert evaluate("'a' < 'b'", {}) is True


@pytest.mark.parametrize(
    "expression",
    [
        "contains('abc', `1`)",
        "ceil(`1e999`)",
        "to_number('1e999')",
        "`1e999`",
        "sum([`1e308`, `1e308`])",
    ],
)
def test_failures_inside_jmespath_are_template_errors(expression: str) -> None:
    with pytest.raises(TemplateError):
        evaluate(expression, {})


# --- through the API: a failed step or run, never a 500 or a hang --------------------------


def execute(client: FlaskClient, user: str, step: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/execute-step", json={"user_id": user, "step": step})
    assert response.status_code == 200, response.json
    return resp_json(response)


def run_plan(client: FlaskClient, user: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    plan = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": steps})
    assert plan.status_code == 201, plan.json
    response = client.post(f"/api/plans/{resp_json(plan)['id']}/run?wait=true", json={"user_id": user})
    assert response.status_code == 200, response.json
    return resp_json(response)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stages", [20, 166])
def test_template_blow_up_is_a_failed_step(client: FlaskClient, user: str, stages: int) -> None:
    step = {"provider": "logic", "action": "transform", "params": {"template": f"{{{{ {doubling(stages)} }}}}"}}
    started = time.perf_counter()
    result = execute(client, user, step)
    print(f"\nexecute-step, {stages} stages answered in {time.perf_counter() - started:.3f} s")
    assert result["success"] is False and result["error"]["code"] == "expression_too_large", result
    logged = resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]
    assert [row["error_code"] for row in logged] == ["expression_too_large"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("action", "stages"), [("condition", 166), ("extract", 20), ("extract", 166)])
def test_logic_expressions_are_bounded(client: FlaskClient, user: str, action: str, stages: int) -> None:
    step = {"provider": "logic", "action": action, "params": {"expression": doubling(stages), "data": {"a": 1}}}
    result = execute(client, user, step)
    assert result["success"] is False and result["error"]["code"] == "expression_too_large", result


@pytest.mark.timeout(120)
def test_when_blow_up_fails_the_step_and_ends_the_run(client: FlaskClient, user: str) -> None:
    steps = [
        {"id": "a", "provider": "logic", "action": "transform", "params": {"template": "x"}},
        {"id": "b", "provider": "logic", "action": "transform", "params": {"template": "y"}, "when": doubling(166)},
    ]
    run = run_plan(client, user, steps)
    assert run["status"] == "error", run
    failed = run["step_results"][1]
    assert failed["status"] == "error" and failed["result"]["error"]["code"] == "expression_too_large", failed


def test_jmespath_type_errors_through_the_api_are_failed_steps(client: FlaskClient, user: str) -> None:
    for expression in ("contains('abc', `1`)", "ceil(to_number('1e999'))", "`1e999`"):
        step = {"provider": "logic", "action": "extract", "params": {"expression": expression, "data": {}}}
        result = execute(client, user, step)
        assert result["success"] is False, (expression, result)
        template = {"provider": "logic", "action": "transform", "params": {"template": f"{{{{ {expression} }}}}"}}
        assert execute(client, user, template)["success"] is False


def test_the_cpu_deadline_refuses_evaluation_once_passed() -> None:
    import jmespath

    from pilot.steps.bounded_jmespath import Budget, BudgetExceeded, search

    with pytest.raises(BudgetExceeded) as caught:
        search(jmespath.compile("[a, a]"), {"a": 1}, Budget(cpu_seconds=-1.0))  # a deadline already in the past
    assert caught.value.reason == "time"
    assert search(jmespath.compile("[a, a]"), {"a": 1}, Budget()) == [1, 1]
