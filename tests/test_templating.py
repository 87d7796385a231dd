from __future__ import annotations

import copy

import pytest

from pilot.http.errors import status_for
from pilot.steps import templating
from pilot.steps.templating import MissingReference, TemplateError, evaluate, references, render, truthy


@pytest.fixture
def context() -> dict:
    summary = {"success": True, "data": {"text": "hello", "count": 3, "tags": ["a", "b"], "upper": "FIELD"}}
    return {
        "steps": {
            "summary": summary,
            "echo": {"success": True, "data": {"text": "{{ steps.summary.data.text }}", "empty": ""}},
        },
        "step_results": {"0": summary},
        "input": {"name": "Zoë", "flag": False, "zero": 0},
    }


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ steps.summary.data }}", {"text": "hello", "count": 3, "tags": ["a", "b"], "upper": "FIELD"}),
        ("{{steps.summary.data.count}}", 3),
        ("  {{ steps.summary.data.tags }}\n", ["a", "b"]),
        ("{{ input.flag }}", False),
        ("{{ input.zero }}", 0),
        ("{{ steps.echo.data.empty }}", ""),
    ],
)
def test_single_expression_keeps_type(context: dict, template: str, expected: object) -> None:
    assert render({"value": template}, context) == {"value": expected}


def test_interpolation_of_str_int_dict_and_list(context: dict) -> None:
    template = "{{ input.name }} has {{ steps.summary.data.count }}: {{ steps.summary.data.tags }} {{ input }}"
    assert render(template, context) == (
        'Zoë has 3: ["a","b"] {"name":"Zoë","flag":false,"zero":0}'  # compact JSON, not ASCII-escaped
    )


def test_nested_params_and_untouched_values(context: dict) -> None:
    params = {
        "body": {"text": "Say {{ steps.summary.data.text }}", "items": [1, None, True, {"n": "{{ input.zero }}"}]},
        "{{ input.name }}": "keys are not rendered",
        "plain": "no braces { here }",
    }
    assert render(params, context) == {
        "body": {"text": "Say hello", "items": [1, None, True, {"n": 0}]},
        "{{ input.name }}": "keys are not rendered",
        "plain": "no braces { here }",
    }


def test_quoted_keys(context: dict) -> None:
    assert render('{{ step_results."0".data.text }}', context) == "hello"


def test_jmespath_braces_and_quotes_inside_an_expression(context: dict) -> None:
    assert render("{{ {t: steps.summary.data.text, n: {c: input.zero}} }}", context) == {"t": "hello", "n": {"c": 0}}
    assert render("a {{ '}}' }} b", context) == "a }} b"
    assert render("{{ '{{' }} x }}", context) == "{{ x }}"  # the documented way to write a literal '{{'


def test_missing_reference_names_path_and_expression(context: dict) -> None:
    with pytest.raises(MissingReference) as info:
        render({"body": {"text": "x {{ steps.nope.data }}"}}, context)
    error = info.value
    assert (status_for(error), error.code) == (400, "missing_reference")
    assert "params.body.text" in error.message
    assert "steps.nope.data" in error.message
    assert error.details == {"path": "params.body.text", "expression": "steps.nope.data"}


def test_path_of_list_items_and_odd_keys(context: dict) -> None:
    with pytest.raises(MissingReference, match=r'params\.items\[1\]\["x-y"\]'):
        render({"items": ["ok", {"x-y": "{{ missing }}"}]}, context)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",  # valid JMESPath: field '__class__' of the string '' -> null
        "{{ self.__init__ }}",
        "{{ config }}",
        "{{ steps.summary.data.text | upper }}",  # JMESPath pipe: field 'upper' of a string -> null
        "{{ `null` }}",
    ],
)
def test_python_like_expressions_are_inert(context: dict, template: str) -> None:
    with pytest.raises(MissingReference):
        render({"p": template}, context)


def test_pipe_is_only_a_jmespath_projection(context: dict) -> None:
    assert render("{{ steps.summary.data | upper }}", context) == "FIELD"


@pytest.mark.parametrize(
    "template",
    [
        "{% for x in y %}{{ x }}{% endfor %}",
        "{# comment #}",
        "before {{ input.name }} {% if %}",
        "{{ foo( }}",
        "{{ steps.summary.data.text.upper() }}",
        "{{ __import__('os').system('id') }}",
        "{{ }}",
        "{{ steps.summary",
        "{{ length(`5`) }}",  # a runtime JMESPath type error
        "{{ " + "[" * 400 + " }}",  # deep nesting that would overflow the parser's recursion
    ],
)
def test_refused_templates_raise_template_error(context: dict, template: str) -> None:
    with pytest.raises(TemplateError) as info:
        render({"p": template}, context)
    assert not isinstance(info.value, MissingReference)
    # Nesting too deep to evaluate is refused as too large (see test_expression_bounds).
    expected = "expression_too_large" if "[" * 400 in template else "template_error"
    assert (status_for(info.value), info.value.code) == (400, expected)
    assert info.value.message.startswith("params.p: ")


def test_invalid_syntax_message_names_expression(context: dict) -> None:
    with pytest.raises(TemplateError, match=r"invalid expression 'foo\('"):
        render("{{ foo( }}", context)


def test_rendered_values_are_not_rendered_again(context: dict) -> None:
    assert render("{{ steps.echo.data.text }}", context) == "{{ steps.summary.data.text }}"
    assert render("say {{ steps.echo.data.text }}", context) == "say {{ steps.summary.data.text }}"
    assert render("{{ steps.echo.data }}", context)["text"] == "{{ steps.summary.data.text }}"


def test_output_size_cap(context: dict) -> None:
    context["input"]["big"] = "x" * 60
    assert render("{{ input.big }}{{ input.big }}", context, max_output_chars=120) == "x" * 120
    with pytest.raises(TemplateError, match="longer than 100 characters"):
        render({"p": "{{ input.big }}{{ input.big }}"}, context, max_output_chars=100)
    with pytest.raises(TemplateError, match="longer than 50 characters"):
        render({"p": "{{ input }}"}, context, max_output_chars=50)  # type-kept values count too
    plain = "{ literal braces } " * 20
    assert render(plain, context, max_output_chars=50) == plain  # text without expressions is not capped


def test_expression_count_cap(context: dict) -> None:
    params = ["{{ input.zero }}"] * 3
    assert render(params, context, max_expressions=3) == [0, 0, 0]
    with pytest.raises(TemplateError, match="more than 2 expressions"):
        render(params, context, max_expressions=2)


def test_expression_length_cap(context: dict) -> None:
    long_expression = "input." + "a" * templating.MAX_EXPRESSION_CHARS
    with pytest.raises(TemplateError, match="longer than 1000 characters"):
        render("{{ " + long_expression + " }}", context)


def test_input_is_not_mutated(context: dict) -> None:
    params = {"a": ["{{ steps.summary.data }}", {"b": "{{ input.name }}"}], "c": 1}
    before = copy.deepcopy(params)
    context_before = copy.deepcopy(context)
    rendered = render(params, context)
    rendered["a"][0]["text"] = "changed"
    assert params == before
    assert context == context_before  # a type-kept value is a copy, not the earlier result itself


def test_deeply_nested_params_are_refused(context: dict) -> None:
    params: list = []
    for _ in range(5_000):
        params = [params]
    with pytest.raises(TemplateError, match="nested too deeply"):
        render(params, context)


def test_evaluate(context: dict) -> None:
    assert evaluate("steps.summary.data.count > `2`", context) is True
    assert evaluate("steps.missing", context) is None
    with pytest.raises(TemplateError):
        evaluate("steps.[", context)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), (False, False), ("", False), ([], False), ({}, False), (0, True), ("a", True), ([0], True)],
)
def test_truthy(value: object, expected: bool) -> None:
    assert truthy(value) is expected


def test_references() -> None:
    params = {"a": "{{ steps.x.data }} and {{input.y}}", "b": [{"c": "{{ steps.x.data }}"}], "d": 1}
    assert references(params) == {"steps.x.data", "input.y"}
    with pytest.raises(TemplateError):
        references({"a": "{% raw %}"})
