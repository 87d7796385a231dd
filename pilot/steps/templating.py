"""Render ``{{ <JMESPath> }}`` references in step params; nothing here can evaluate Python.

The only template syntax is ``{{ expression }}``, where the expression is JMESPath over the
run context ``{"steps": {...}, "step_results": {...}, "input": {...}}``. Jinja blocks
(``{% … %}``) and comments (``{# … #}``) are refused rather than passed through, so a plan
written for Jinja fails early instead of sending template text to a webhook. A literal
``{{``, ``{%`` or ``{#`` is written as a JMESPath raw string: ``{{ '{{' }}``. Rendered
values are never scanned again, so a result containing ``{{ x }}`` stays literal.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from pilot.errors import PilotError
from pilot.steps.bounded_jmespath import MAX_DEPTH, Budget, BudgetExceeded, NotFinite, search

MAX_EXPRESSION_CHARS = 1_000
MAX_TREE_DEPTH = 300  # syntax tree levels; evaluating one level takes ~3 Python frames of the 1,000 allowed
_MESSAGE_CHARS = 300  # jmespath type errors quote whole values; keep our messages short
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTES = "'\"`"


class TemplateError(PilotError):
    """A param template is malformed, too large, or its expression failed."""

    code = "template_error"


class MissingReference(TemplateError):
    """A reference resolved to nothing (null)."""

    code = "missing_reference"


class ExpressionTooLarge(TemplateError):
    """Evaluating the expression would take more steps, time, size or nesting than allowed.

    ``details["reason"]`` is ``size``, ``depth``, ``steps`` or ``time``.
    """

    code = "expression_too_large"


def _nested_too_deeply(expression: str) -> ExpressionTooLarge:
    return ExpressionTooLarge(
        f"expression {expression[:50]!r}… is nested too deeply", details={"reason": "depth", "limit": MAX_DEPTH}
    )


def _check_nesting(expression: str, parsed: Any) -> None:
    """Refuse literals nested deeper than MAX_DEPTH or not finite, and syntax trees too deep to evaluate.

    A pipe chain is as deep as it is long, so the tree may be deeper than a value may be.
    """
    budget = Budget()
    stack = [(parsed.parsed, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise _nested_too_deeply(expression)
        if node["type"] == "literal":
            try:
                budget.measure(node["value"])
            except BudgetExceeded:
                raise _nested_too_deeply(expression) from None
            except NotFinite as exc:
                raise TemplateError(f"invalid expression {expression[:60]!r}: {exc}") from None
        stack.extend((child, depth + 1) for child in node.get("children", []) if isinstance(child, dict))


@functools.lru_cache(maxsize=512)
def _compile(expression: str) -> Any:
    parsed = jmespath.compile(expression)
    _check_nesting(expression, parsed)
    return parsed


def compile_expression(expression: str) -> Any:
    """The compiled JMESPath ``expression``; TemplateError when it is empty, too long, too deep or invalid."""
    if not expression.strip():
        raise TemplateError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise TemplateError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return _compile(expression)
    except JMESPathError as exc:
        reason = str(exc).splitlines()[0][:_MESSAGE_CHARS]
        raise TemplateError(f"invalid expression {expression!r}: {reason}") from None
    except RecursionError:
        raise _nested_too_deeply(expression) from None


def evaluate(expression: str, data: Any, budget: Budget | None = None) -> Any:
    """Return the JMESPath ``expression`` searched over ``data`` (None when nothing matches).

    Evaluation is bounded (see ``bounded_jmespath``): ``budget`` is what it may spend, shared
    with the other evaluations of one render; by default a fresh one. Raises
    ExpressionTooLarge when the bound is reached, TemplateError for an empty, too long,
    invalid or failing expression; nothing else escapes.
    """
    compiled = compile_expression(expression)
    short = expression if len(expression) <= 60 else expression[:57] + "..."
    try:
        return search(compiled, data, budget or Budget())
    except BudgetExceeded as exc:
        details = {"reason": exc.reason, "limit": exc.limit}
        raise ExpressionTooLarge(f"expression {short!r} refused: {exc.message}", details=details) from None
    except JMESPathError as exc:
        reason = str(exc).splitlines()[0][:_MESSAGE_CHARS]
        raise TemplateError(f"invalid expression {expression!r}: {reason}") from None
    except RecursionError:
        raise _nested_too_deeply(expression) from None
    except (NotFinite, TypeError, ValueError, ArithmeticError) as exc:
        # A jmespath function given values it does not handle (e.g. ceil of infinity).
        reason = str(exc).splitlines()[0][:_MESSAGE_CHARS] if str(exc) else type(exc).__name__
        raise TemplateError(f"expression {short!r} failed: {reason}") from None


def truthy(value: Any) -> bool:
    """JMESPath truthiness: null, false, "", [] and {} are false; everything else (even 0) is true."""
    if value is None or value is False:
        return False
    return not (isinstance(value, (str, list, tuple, dict)) and not value)


def _split(text: str) -> list[tuple[bool, str]]:
    """Split ``text`` into ``(is_expression, part)`` pairs; expressions are stripped.

    The closing ``}}`` is searched outside JMESPath quotes and braces, so
    ``{{ {a: {b: c}} }}`` and ``{{ '}}' }}`` are one expression each.
    """
    parts: list[tuple[bool, str]] = []
    pos = 0
    while (start := text.find("{{", pos)) != -1:
        parts.append((False, text[pos:start]))
        i, depth, end = start + 2, 0, -1
        while i < len(text):
            char = text[i]
            if char in _QUOTES:
                i += 1
                while i < len(text) and text[i] != char:
                    i += 2 if text[i] == "\\" else 1
            elif char == "{":
                depth += 1
            elif char == "}" and depth:
                depth -= 1
            elif text.startswith("}}", i):
                end = i
                break
            i += 1
        if end == -1:
            raise TemplateError("unterminated '{{'")
        parts.append((True, text[start + 2 : end].strip()))
        pos = end + 2
    parts.append((False, text[pos:]))
    for is_expression, part in parts:
        if not is_expression and ("{%" in part or "{#" in part):
            raise TemplateError("'{%' and '{#' are not template syntax; only '{{ JMESPath }}' is")
    return parts


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class _Renderer:
    def __init__(self, context: dict, max_output_chars: int, max_expressions: int) -> None:
        self.context = context
        self.max_output_chars = max_output_chars
        self.max_expressions = max_expressions
        self.count = 0
        self.budget = Budget()  # one budget for all of a step's params, not one per expression

    def value(self, expression: str, path: str) -> Any:
        self.count += 1
        if self.count > self.max_expressions:
            raise TemplateError(f"{path}: more than {self.max_expressions} expressions in params")
        try:
            result = evaluate(expression, self.context, self.budget)
        except TemplateError as exc:
            details = {**(exc.details or {}), "path": path, "expression": expression[:100]}
            raise type(exc)(f"{path}: {exc.message}", code=exc.code, details=details) from None
        if result is None:
            raise MissingReference(
                f"{path}: {{{{ {expression} }}}} resolved to nothing",
                details={"path": path, "expression": expression},
            )
        return result

    def string(self, text: str, path: str) -> Any:
        try:
            parts = _split(text)
        except TemplateError as exc:
            raise TemplateError(f"{path}: {exc.message}", details={"path": path}) from None
        expressions = [part for is_expression, part in parts if is_expression]
        if not expressions:
            return text  # literal text is not output of rendering, so no size cap applies
        if len(expressions) == 1 and all(is_expression or not part.strip() for is_expression, part in parts):
            value = self.value(expressions[0], path)
            self.check_size(len(_to_text(value)), path)
            return copy.deepcopy(value)  # jmespath returns the context's own objects
        out: list[str] = []
        size = 0
        for is_expression, part in parts:
            piece = _to_text(self.value(part, path)) if is_expression else part
            size += len(piece)
            self.check_size(size, path)
            out.append(piece)
        return "".join(out)

    def check_size(self, size: int, path: str) -> None:
        if size > self.max_output_chars:
            raise TemplateError(f"{path}: rendered value longer than {self.max_output_chars} characters")

    def walk(self, node: Any, path: str) -> Any:
        if isinstance(node, str):
            return self.string(node, path) if "{" in node else node
        if isinstance(node, dict):
            return {key: self.walk(value, _child(path, key)) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [self.walk(value, f"{path}[{index}]") for index, value in enumerate(node)]
        return node


def _child(path: str, key: Any) -> str:
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False, default=str)}]"


def render(params: Any, context: dict, *, max_output_chars: int = 100_000, max_expressions: int = 100) -> Any:
    """Return a copy of ``params`` with every ``{{ expression }}`` in string values rendered.

    A string that is exactly one expression keeps the value's type; otherwise each value is
    interpolated (strings as is, others as compact JSON). Dict keys are never rendered and
    ``params`` is never mutated. Raises MissingReference for a null result and TemplateError
    for bad syntax or exceeded caps; every message starts with the param path.
    """
    renderer = _Renderer(context, max_output_chars, max_expressions)
    try:
        return renderer.walk(params, "params")
    except RecursionError:
        raise TemplateError("params are nested too deeply") from None


def references(params: Any) -> set[str]:
    """Return every expression referenced in ``params``' string values (TemplateError if malformed)."""
    found: set[str] = set()
    stack = [params]
    while stack:
        node = stack.pop()
        if isinstance(node, str) and "{" in node:
            found.update(part for is_expression, part in _split(node) if is_expression)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return found
