"""What a run's step loop keeps between steps: its entries, and what it still owes the database.

A run writes as little as its guarantees need (README "Run path"): a step with side
effects (any provider that is not ``pure``) gets its ``running`` marker on the run row
before it starts, together with the log rows of the pure steps before it; the log rows
of pure steps wait here until then, or until the run's finish, which writes them in
its own transaction. So every executed step has exactly one ``execution_logs`` row by
the time its run ends, and a process that dies leaves no row for a step that did not
happen (the pure steps it had run are lost with it, and may safely run again).
"""

from __future__ import annotations

import json
from typing import Any


class RunProgress(list[dict[str, Any]]):
    """A run's step entries (its ``step_results``, in order) with the step loop's own state.

    ``logs``: log entries of pure steps not written yet; ``written``: how many entries
    the run row already holds (the marker writes only those after them);
    ``credentials``: each provider's decrypted credentials, read once per run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[dict[str, Any]] = []
        self.written = 0
        self.credentials: dict[str, dict[str, str]] = {}


def pending_logs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log entries ``results`` still owes the database (none for a plain list)."""
    return results.logs if isinstance(results, RunProgress) else []


def storable(entry: dict[str, Any]) -> bool:
    """Whether PostgreSQL will take the entry's JSON (no NaN or infinity, no lone surrogate, JSON at all).

    A log row that waits must not fail later: one that might is written at once instead,
    where a refusal still turns into the step's ``result_unstorable`` failure.
    """
    try:
        json.dumps([entry.get("input"), entry.get("output")], allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError):
        return False
    return True
