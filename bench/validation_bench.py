"""Request validation: Pilot's ``@validate`` url-map walker against flask-openapi3 and spectree.

One POST route that takes a plan body (``PlanBody`` with one step) and a paging query
(``Paging``), validated by each approach, answering a small JSON object; the same request
sent through Flask's test client (no socket: what is measured is Flask plus validation).
Baseline: the same view parsing the JSON as ``@validate`` does (``json_body``) with no model. Prints, per approach,
the median time per request over interleaved rounds and its overhead over the baseline
(absolute and as a ratio), and the lines of code each approach brings (ours: the two
modules in this repository; a library: its installed package).

flask-openapi3 and spectree are not dependencies of Pilot: install them anywhere on the
path to include them (e.g. ``pip install --target /tmp/benchlibs --no-deps flask-openapi3
spectree`` and ``PYTHONPATH=/tmp/benchlibs``); an absent one is skipped.

Usage: python bench/validation_bench.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.http.common import json_body  # noqa: E402
from pilot.http.models import Paging  # noqa: E402
from pilot.http.validation import Answer, validate  # noqa: E402
from pilot.steps.plan_schema import PlanBody  # noqa: E402

BODY = {
    "name": "bench",
    "steps": [{"id": "a", "provider": "logic", "action": "transform", "params": {"template": {"x": 1}}}],
    "timezone": "UTC",
}
URL = "/plans?limit=10&offset=0"


class Made(BaseModel):
    name: str
    limit: int | None


MAX_SECONDS_PER_ROUND = 60.0


def baseline_app() -> Flask:
    app = Flask("baseline")

    @app.post("/plans")
    def create() -> Any:
        body = json_body()  # the same JSON parsing (and guard checks) as @validate, no model
        return jsonify({"name": body["name"], "limit": request.args.get("limit")}), 201

    return app


def walker_app() -> Flask:
    app = Flask("walker")

    @app.post("/plans")
    @validate(summary="create", tag="plans", body=PlanBody, query=Paging, responses={201: Answer("made", Made)})
    def create(body: PlanBody, query: Paging) -> Any:
        return jsonify({"name": body.name, "limit": query.limit}), 201

    return app


def openapi3_app() -> Flask:
    from flask_openapi3 import OpenAPI

    app = OpenAPI("openapi3")

    @app.post("/plans", responses={201: Made})
    def create(query: Paging, body: PlanBody) -> Any:
        return jsonify({"name": body.name, "limit": query.limit}), 201

    return app


def spectree_app() -> Flask:
    from spectree import Response, SpecTree

    app = Flask("spectree")
    spec = SpecTree("flask", annotations=False)

    @app.post("/plans")
    @spec.validate(query=Paging, json=PlanBody, resp=Response(HTTP_201=Made))
    def create() -> Any:
        body = request.context.json  # type: ignore[attr-defined]
        query = request.context.query  # type: ignore[attr-defined]
        return jsonify({"name": body.name, "limit": query.limit}), 201

    spec.register(app)
    return app


APPROACHES: dict[str, tuple[Callable[[], Flask], str | None]] = {
    "baseline (no validation)": (baseline_app, None),
    "@validate walker (Pilot)": (walker_app, None),
    "flask-openapi3": (openapi3_app, "flask_openapi3"),
    "spectree": (spectree_app, "spectree"),
}


def lines_of(package: str | None) -> int | None:
    """Non-blank lines of Python in an installed package (ours: validation.py and openapi.py)."""
    if package is None:
        paths = [ROOT / "pilot/http/validation.py", ROOT / "pilot/http/openapi.py"]
    else:
        module = importlib.import_module(package)
        paths = sorted(Path(module.__file__ or "").parent.rglob("*.py"))
    return sum(1 for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def per_request(app: Flask, requests: int) -> float:
    """Seconds per request over ``requests`` requests (bounded by MAX_SECONDS_PER_ROUND)."""
    client = app.test_client()
    first = client.post(URL, json=BODY)
    assert first.status_code == 201, (app.name, first.get_data(as_text=True))
    deadline = time.perf_counter() + MAX_SECONDS_PER_ROUND
    start = time.perf_counter()
    done = 0
    for done in range(1, requests + 1):  # noqa: B007
        client.post(URL, json=BODY)
        if time.perf_counter() > deadline:
            break
    return (time.perf_counter() - start) / done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    apps: dict[str, Flask] = {}
    for name, (build, _package) in APPROACHES.items():
        try:
            apps[name] = build()
        except ImportError as exc:
            print(f"skipped {name}: {exc.name} is not installed")
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):  # interleaved, so a busy machine slows every approach alike
        for name, app in apps.items():
            samples[name].append(per_request(app, args.requests))
    base = statistics.median(samples["baseline (no validation)"])
    print(f"{args.requests} requests x {args.rounds} rounds, median per request (Flask test client):")
    print(f"{'approach':28} {'µs/request':>11} {'overhead µs':>12} {'ratio':>7} {'lines':>7}")
    for name, times in samples.items():
        median = statistics.median(times)
        package = APPROACHES[name][1]
        lines = "" if name.startswith("baseline") else str(lines_of(package))
        print(f"{name:28} {median * 1e6:11.1f} {(median - base) * 1e6:12.1f} {median / base:7.2f} {lines:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
