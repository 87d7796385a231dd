"""JMESPath evaluation under a cost bound that no expression can get around.

jmespath builds values by reference: ``[@,@]`` is one new list holding the same object
twice, so ``[@,@]|[@,@]|…`` costs nothing to evaluate while its *expanded* size (what
``json.dumps``, ``copy``, redaction or PostgreSQL will write) doubles per stage. A
``BoundedInterpreter`` therefore checks, as it goes:

- steps: every AST node visit counts against ``Budget.max_visits`` (shared by all the
  expressions of one render), so projections and ``map``/``sort_by`` cannot loop for long;
- size: every value the interpreter *builds* (multi-selects, projections, flatten, slices,
  function results, literals) and every final result is measured by its expanded JSON size,
  memoised by ``id`` so shared references cost nothing to measure; it may exceed the data it
  was evaluated over by at most ``max_chars``;
- depth: values nested deeper than ``max_depth`` are refused before anything recurses on them;
- time: a thread-CPU-time deadline, checked before costly visits and every few hundred others;
- functions whose output can outgrow their arguments (``join``, ``to_string``) are checked
  before they run.

Nothing here raises anything but ``BudgetExceeded`` (and what jmespath itself raises);
``templating`` turns both into ``TemplateError``s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jmespath.functions import Functions
from jmespath.visitor import TreeInterpreter

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode

MAX_VISITS = 250_000
MAX_CHARS = 1_000_000
MAX_DEPTH = 128
MAX_CPU_SECONDS = 1.0
_CLOCK_EVERY = 256  # visits between deadline checks for cheap nodes
_SHARED_STRING_CHARS = 64  # longer strings are tracked by id when measured, to see them repeated
# Nodes whose visit builds a new value (measured) or may do work proportional to its inputs (clocked).
_BUILDERS = frozenset(
    {
        "multi_select_list",
        "multi_select_dict",
        "projection",
        "value_projection",
        "filter_projection",
        "flatten",
        "slice",
        "function_expression",
        "literal",
    }
)
_COSTLY = _BUILDERS | {"comparator", "measure"}


class BudgetExceeded(Exception):
    """An evaluation went over its budget; ``reason`` is ``size``, ``depth``, ``steps`` or ``time``."""

    def __init__(self, reason: str, message: str, limit: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.limit = limit


class NotFinite(Exception):
    """An expression produced a number JSON cannot hold (infinity or NaN)."""


def _scalar_chars(value: Any) -> int:
    """JSON characters of a scalar, roughly (never less than its real size by more than a constant factor)."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return 2 + value.bit_length() * 30103 // 100000  # log10(2): no str() of a huge int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotFinite(f"the expression produced {value!r}, which JSON cannot hold")
        return 24
    return 8  # an expref or another opaque argument


class Budget:
    """What one render (or one condition) may spend; shared by the evaluations it makes.

    Sizes are memoised by ``id``; the memo keeps each measured object alive so an id is
    never reused for another object while the budget lives.
    """

    def __init__(
        self,
        *,
        max_visits: int = MAX_VISITS,
        max_chars: int = MAX_CHARS,
        max_depth: int = MAX_DEPTH,
        cpu_seconds: float = MAX_CPU_SECONDS,
    ) -> None:
        self.max_visits = max_visits
        self.max_chars = max_chars
        self.max_depth = max_depth
        self.cpu_seconds = cpu_seconds
        self.visits = 0
        self._walked = 0
        self._reused = False  # whether the current walk met a container (or long string) it had seen before
        self._strings: dict[int, str] = {}
        self._deadline = time.thread_time() + cpu_seconds
        self._sizes: dict[int, tuple[Any, int, int]] = {}
        self._allowances: dict[int, tuple[Any, int]] = {}

    # --- steps and time ---------------------------------------------------------------

    def visit(self, node_type: str) -> None:
        """Count one node visit; BudgetExceeded when the steps or the CPU time are used up."""
        self.visits += 1
        if self.visits > self.max_visits:
            raise BudgetExceeded(
                "steps", f"the expression needs more than {self.max_visits} evaluation steps", self.max_visits
            )
        if (node_type in _COSTLY or self.visits % _CLOCK_EVERY == 0) and time.thread_time() > self._deadline:
            raise BudgetExceeded(
                "time", f"the expression needs more than {self.cpu_seconds:g} s of CPU time", self.cpu_seconds
            )

    # --- sizes ----------------------------------------------------------------------------

    def measure(self, value: Any) -> tuple[int, int]:
        """``(expanded JSON chars, nesting depth)`` of ``value``.

        Each distinct container is walked once however often it is referenced. The walk
        recurses at most ``max_depth`` levels (so a value that contains itself ends there
        too): deeper values raise BudgetExceeded, as does running out of CPU time.
        """
        if not isinstance(value, (list, dict)):
            return _scalar_chars(value), 0
        hit = self._sizes.get(id(value))
        if hit is not None:
            return hit[1], hit[2]
        return self._walk(value, 0)

    def _too_deep(self) -> BudgetExceeded:
        return BudgetExceeded("depth", f"the value is nested deeper than {self.max_depth} levels", self.max_depth)

    def _walk(self, node: list[Any] | dict[str, Any], level: int) -> tuple[int, int]:
        if level > self.max_depth:
            raise self._too_deep()
        self._walked += 1
        if self._walked % 4096 == 0:
            self.visit("measure")  # a walk of a huge value counts against the CPU deadline too
        sizes = self._sizes
        chars, depth = 2, 0
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in pairs:
            if type(key) is str:
                chars += len(key) + 3
            kind = type(child)
            if kind is str:
                chars += len(child) + 3
                depth = depth or 1
                if len(child) > _SHARED_STRING_CHARS:  # one long string listed many times expands too
                    if id(child) in self._strings:
                        self._reused = True
                    else:
                        self._strings[id(child)] = child
            elif kind is dict or kind is list or isinstance(child, (dict, list)):
                hit = sizes.get(id(child))
                if hit is None:
                    child_chars, child_depth = self._walk(child, level + 1)
                else:
                    child_chars, child_depth = hit[1], hit[2]
                    self._reused = True
                chars += child_chars + 1
                if child_depth >= depth:
                    depth = child_depth + 1
            else:
                chars += _scalar_chars(child) + 1
                depth = depth or 1
        if depth > self.max_depth:  # reached through memoised children, which the level does not count
            raise self._too_deep()
        sizes[id(node)] = (node, chars, depth)
        return chars, depth

    def allowance(self, data: Any) -> int:
        """How large a value evaluated over ``data`` may be: ``max_chars`` beyond the data's own size."""
        hit = self._allowances.get(id(data))
        if hit is None:
            hit = (data, self.max_chars + _distinct_chars(data))
            self._allowances[id(data)] = hit
        return hit[1]

    def check(self, value: Any, data: Any) -> None:
        """BudgetExceeded when ``value`` is too large or too deep for an evaluation over ``data``.

        A scalar is refused only when it is not a finite number: a string is as large as the
        memory it holds, and the functions that build long strings are checked before they run.
        A container measured before passed then (as itself or inside a larger value). One
        whose walk met no container (nor long string) seen before is a plain tree, as large
        as the memory it really holds: it cannot expand when serialised, so only its depth is
        checked and the data's size need not be computed. Otherwise it may repeat shared
        parts and must stay within the allowance.
        """
        if not isinstance(value, (list, dict)):
            _scalar_chars(value)  # a string is as large as the memory it holds (builders are prechecked)
            return
        if id(value) in self._sizes:
            return
        self._reused = False
        chars, _ = self._walk(value, 0)
        if self._reused:
            self.check_chars(chars, data)

    def check_chars(self, chars: int, data: Any) -> None:
        """BudgetExceeded when a value of ``chars`` characters is too large for an evaluation over ``data``."""
        if chars > self.max_chars and chars > self.allowance(data):
            raise BudgetExceeded(
                "size",
                f"the expression builds a value of about {chars:,} characters; the limit is "
                f"{self.max_chars:,} more than the data it reads",
                self.max_chars,
            )


def _distinct_chars(data: Any) -> int:
    """JSON characters of ``data`` counting each distinct container once (what it really holds)."""
    total, seen, stack = 0, set(), [data]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, dict)):
            if id(node) in seen:
                continue
            seen.add(id(node))
            total += 2 + len(node)
            if isinstance(node, dict):
                total += sum(len(key) + 3 for key in node if isinstance(key, str))
                stack.extend(node.values())
            else:
                stack.extend(node)
        else:
            total += _scalar_chars(node)
    return total


class BoundedInterpreter(TreeInterpreter):
    """jmespath's interpreter, with every visit counted and every built value measured."""

    def __init__(self, budget: Budget, data: Any) -> None:
        super().__init__()
        self.budget = budget
        self.data = data
        self._calls = Functions()
        self._dispatch: dict[str, Callable[..., Any]] = {}

    def visit(self, node: _TreeNode, *args: Any, **kwargs: Any) -> Any:
        node_type = node["type"]
        self.budget.visit(node_type)
        method = self._dispatch.get(node_type)
        if method is None:  # as jmespath's Visitor.visit does
            method = self._dispatch[node_type] = getattr(self, f"visit_{node_type}", self.default_visit)
        result = method(node, *args, **kwargs)
        if node_type in _BUILDERS:
            self.budget.check(result, self.data)
        return result

    def visit_function_expression(self, node: _TreeNode, value: Any) -> Any:
        args = [self.visit(child, value) for child in node["children"]]
        self._precheck(node["value"], args)
        return self._calls.call_function(node["value"], args)

    def visit_comparator(self, node: _TreeNode, value: Any) -> Any:
        # jmespath only promises ordering between two numbers or two strings; anything else is null.
        if node["value"] in ("eq", "ne"):
            return super().visit_comparator(node, value)
        left = self.visit(node["children"][0], value)
        right = self.visit(node["children"][1], value)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
        if not (numbers or (isinstance(left, str) and isinstance(right, str))):
            return None
        return self.COMPARATOR_FUNC[node["value"]](left, right)

    def _precheck(self, name: str, args: list[Any]) -> None:
        """Refuse a function call whose output would outgrow the budget before it is built."""
        if name == "join" and len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], list):
            joined = len(args[0]) * max(len(args[1]) - 1, 0)
            joined += sum(len(item) for item in args[1] if isinstance(item, str))
            self.budget.check_chars(joined, self.data)
        elif name == "to_string" and len(args) == 1:
            self.budget.check(args[0], self.data)


def search(parsed: Any, data: Any, budget: Budget) -> Any:
    """``parsed`` (a jmespath ``ParsedResult``) evaluated over ``data`` within ``budget``.

    The result (even one that is just a part of ``data``) is checked too, so nothing
    returned can expand beyond the budget when it is serialised or copied.
    """
    result = BoundedInterpreter(budget, data).visit(parsed.parsed, data)
    budget.check(result, data)
    return result
