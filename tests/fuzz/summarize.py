"""Summarise a schemathesis pass from its NDJSON events and the server's log; exit 1 when it failed.

Prints the requests made, the answers by status class, the 5xx ones (method, path,
status), the failed checks of every other kind (counted once per test case) and
schemathesis's own errors. A pass fails on a 5xx, an unhandled error in the server
log or a request without an answer; a strict pass (``STRICT`` = 1, the conformance
pass) also on any other failed check and on any schemathesis error.

Usage: summarize.py EVENTS.ndjson SERVER.log SCHEMATHESIS_EXIT STRICT
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def scenarios(events: Path) -> list[dict[str, Any]]:
    found = []
    with events.open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            if "ScenarioFinished" in event:
                found.append(event["ScenarioFinished"].get("recorder") or {})
    return found


def engine_errors(events: Path) -> list[str]:
    """schemathesis's own errors (it could not generate or send a case): ``label: type: message``."""
    found = []
    with events.open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            if "NonFatalError" in event:
                error = event["NonFatalError"]
                found.append(f"{error.get('label')}: {error['value']['type']}: {error['value']['message'][:200]}")
    return found


def main(events: Path, server_log: Path, schemathesis_status: int, strict: bool) -> int:
    statuses: Counter[str] = Counter()
    server_errors: list[str] = []
    no_response = 0
    failed_checks: Counter[str] = Counter()
    for recorder in scenarios(events):
        for interaction in (recorder.get("interactions") or {}).values():
            response = interaction.get("response")
            if response is None:
                no_response += 1
                continue
            code = int(response["status_code"])
            statuses[f"{code // 100}xx"] += 1
            if code >= 500:
                request = interaction["request"]
                server_errors.append(f"{code} {request['method']} {request['uri']}")
        for checks in (recorder.get("checks") or {}).values():
            for name in {check["name"] for check in checks if check["status"] == "failure"}:
                failed_checks[name] += 1
    log_text = server_log.read_text(encoding="utf-8", errors="replace")
    unhandled = len(re.findall(r'"message": "unhandled error"', log_text))
    total = sum(statuses.values()) + no_response

    print(f"fuzz: {total} requests made; answers by class: {dict(sorted(statuses.items()))}", end="")
    print(f"; {no_response} without a response" if no_response else "")
    print(f"fuzz: 5xx answers: {len(server_errors)}; unhandled errors in the server log: {unhandled}")
    for line in sorted(set(server_errors))[:50]:
        print(f"  {line}")
    others = {name: count for name, count in failed_checks.items() if name != "not_a_server_error"}
    errors = engine_errors(events)
    print(f"fuzz: other failed checks (test cases, by kind): {dict(sorted(others.items()))}")
    print(f"fuzz: schemathesis errors: {len(errors)}")
    for line in errors[:20]:
        print(f"  {line}")
    if total == 0:
        print(f"fuzz: schemathesis made no request (exit {schemathesis_status}); see its output", file=sys.stderr)
        return 1
    if server_errors or unhandled or failed_checks["not_a_server_error"] or no_response:
        print("fuzz: FAILED: the server answered 5xx (or not at all)", file=sys.stderr)
        return 1
    if strict and (others or errors):
        print("fuzz: FAILED: checks failed (or schemathesis could not run some cases)", file=sys.stderr)
        return 1
    print(f"fuzz: passed: 0 failures of {'any kind' if strict else 'kind not_a_server_error'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["1"]))
