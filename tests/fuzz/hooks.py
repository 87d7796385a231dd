"""Schemathesis hooks for tests/fuzz/run_fuzz.sh: put hostile values where the schema allows any.

Schemathesis draws strings from the whole of Unicode but seldom puts a NUL, a lone
surrogate, a directory of the zoneinfo tree or an overflowing timestamp exactly
where a route stores or parses it, and never nests JSON more than 100 deep. The outside
audit of issue 7 found its 500s with such values, so about one generated body or
query in three gets one of them in a random place (a string leaf or a query value),
or a random value replaced by deeply nested arrays. Loaded through
``SCHEMATHESIS_HOOKS=hooks`` with this directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from typing import Any

import schemathesis

VALID_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")  # pilot/http/idempotency.py
HOSTILE = os.environ.get("FUZZ_HOSTILE") == "1"  # the hostile pass (run_fuzz.sh); off for the conformance one

HOSTILE_TEXT = (
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "Europe",
    "Etc",
    "../etc/passwd",
    "/usr/share/zoneinfo/UTC",
    "\u00b9",  # '¹': str.isdigit() but not int()
    "\u0663",  # an Arabic-Indic 3
    "9" * 30,
    "-1",
    "1e999",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+14:00",
    '{{ `"\\u0000"` }}',
    "alice\n",
    " ",
)
QUERY_TEXT = tuple(text for text in HOSTILE_TEXT if not any("\ud800" <= char <= "\udfff" for char in text))
DEPTH = 102  # past the server's bound of 100; deeper trips schemathesis's own recursion limits
_random = random.Random(int(os.environ.get("FUZZ_SEED", "7")))


def _deep() -> Any:
    value: Any = 1
    for _ in range(DEPTH):
        value = [value]
    return value


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in ``value`` whose item could be replaced, found without recursion."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack and len(found) < 500:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, child in pairs:
            found.append((item, key))
            stack.append(child)
    return found


def _unique_step_ids(body: Any) -> None:
    """Drop a step id that an earlier step of the same plan uses: ids must be unique (400), which the
    document says in words but JSON Schema cannot (uniqueItems compares whole steps). ids are optional."""
    steps = body.get("steps") if isinstance(body, dict) else None
    if not isinstance(steps, list):
        return
    seen: set[Any] = set()
    for step in steps:
        if isinstance(step, dict) and isinstance(step.get("id"), str):
            if step["id"] in seen:
                del step["id"]
            else:
                seen.add(step["id"])


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """No step id used twice in a plan body (``_unique_step_ids``), and a fresh Idempotency-Key on every
    request of every phase: one key sent again with another body is a 422 by design (idempotency_key_reused),
    which no schema can say of generated keys. An invalid key stays: it must be refused."""
    _unique_step_ids(case.body)  # here, not in map_body: the stateful phase builds bodies from links too
    headers = case.headers  # a mapping, not always a dict
    key = headers.get("Idempotency-Key") if headers is not None else None
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}"  # not the seeded Random: each worker has one


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not HOSTILE or _random.random() > 1 / 3 or not isinstance(body, dict | list):
        return body
    slots = _slots(body)
    if not slots:
        return body
    container, key = _random.choice(slots)
    container[key] = _deep() if _random.random() < 0.2 else _random.choice(HOSTILE_TEXT)
    return body


@schemathesis.hook
def map_query(context: Any, query: Any) -> Any:
    if not HOSTILE or _random.random() > 1 / 3 or not isinstance(query, dict) or not query:
        return query
    names = sorted(name for name in query if name != "user_id") or sorted(query)
    # A lone surrogate cannot be sent in a URL (it has no UTF-8 form), so queries get the rest.
    query[_random.choice(names)] = _random.choice(QUERY_TEXT)
    return query
