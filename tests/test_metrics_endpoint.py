"""GET /metrics: request, step, scheduler and run metrics; multiprocess mode; alert rules and dashboard."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from pilot.application import PilotApp
from pilot.ops import cost_metrics, metrics
from tests.conftest import make_app, resp_json

ROOT = Path(__file__).resolve().parent.parent


def scrape(client: FlaskClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_is_prometheus_text(client: FlaskClient) -> None:
    client.get("/api/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    for name in ("pilot_http_requests", "pilot_scheduler_firings", "pilot_plan_runs_finished"):
        assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text
    assert "# TYPE pilot_http_request_duration_seconds histogram" in text
    # Alerts take rate() of these from the first scrape on: they exist at zero.
    assert 'pilot_scheduler_firings_total{outcome="error"}' in text
    assert 'pilot_budget_refusals_total{reason="monthly_budget"}' in text


def test_openmetrics_when_the_scraper_asks(client: FlaskClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_requests_are_counted_by_route_template_not_raw_path(client: FlaskClient, user: str) -> None:
    before = scrape(client)
    for plan_id in (101, 102, 103):
        assert client.get(f"/api/plans/{plan_id}?user_id={user}").status_code == 404
    client.get(f"/api/plans?user_id={user}")
    client.get("/api/no-such/thing-1")
    client.get("/api/no-such/thing-2")
    client.open("/api/plans", method="BREW")
    after = scrape(client)
    route = "/api/plans/<int:plan_id>"
    assert (
        value(after, "pilot_http_requests_total", method="GET", route=route, status="404")
        - value(before, "pilot_http_requests_total", method="GET", route=route, status="404")
        == 3
    )
    assert (
        value(after, "pilot_http_requests_total", method="GET", route="/api/plans", status="200")
        - value(before, "pilot_http_requests_total", method="GET", route="/api/plans", status="200")
        == 1
    )
    unmatched = dict(method="GET", route=metrics.UNMATCHED_ROUTE, status="404")
    assert (
        value(after, "pilot_http_requests_total", **unmatched) - value(before, "pilot_http_requests_total", **unmatched)
        == 2
    )
    assert value(after, "pilot_http_requests_total", method="OTHER", route=metrics.UNMATCHED_ROUTE, status="405") >= 1
    assert not any("101" in dict(labels).get("route", "") or "thing" in str(labels) for _, labels in after)
    latency = dict(method="GET", route=route)
    assert (
        value(after, "pilot_http_request_duration_seconds_count", **latency)
        - value(before, "pilot_http_request_duration_seconds_count", **latency)
        == 3
    )


def test_unhandled_errors_are_counted_as_500(app: PilotApp) -> None:
    def boom() -> str:
        return str(1 / 0)

    app.add_url_rule("/api/boom", "boom", boom)
    client = app.test_client()
    before = scrape(client)
    assert client.get("/api/boom").status_code == 500
    after = scrape(client)
    labels = dict(method="GET", route="/api/boom", status="500")
    assert (
        value(after, "pilot_http_requests_total", **labels) - value(before, "pilot_http_requests_total", **labels) == 1
    )


def test_record_step_counts_latency_and_retries(client: FlaskClient) -> None:
    before = scrape(client)
    metrics.record_step("webhook", "request", "error", 1500.0, 3)
    metrics.record_step("webhook", "request", "success", 20.0, 1)
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pilot_step_executions_total", provider="webhook", action="request", status="error") == 1
    assert delta("pilot_step_executions_total", provider="webhook", action="request", status="success") == 1
    assert delta("pilot_step_duration_seconds_count", provider="webhook", action="request") == 2
    assert delta("pilot_step_duration_seconds_sum", provider="webhook", action="request") == pytest.approx(1.52)
    assert delta("pilot_step_duration_seconds_bucket", provider="webhook", action="request", le="0.05") == 1
    assert delta("pilot_step_retries_total", provider="webhook", action="request") == 2
    with pytest.raises(ValueError, match="status"):
        metrics.record_step("webhook", "request", "ok", 1.0, 1)


def test_scheduler_and_run_counters(client: FlaskClient) -> None:
    before = scrape(client)
    for outcome in metrics.SCHEDULER_OUTCOMES:
        metrics.record_scheduler_firing(outcome)
    metrics.record_scheduler_firing("lost")
    metrics.record_run_finished("schedule", "error")
    metrics.set_scheduler_jobs(7)
    after = scrape(client)
    assert (
        value(after, "pilot_scheduler_firings_total", outcome="lost")
        - value(before, "pilot_scheduler_firings_total", outcome="lost")
        == 2
    )
    assert (
        value(after, "pilot_plan_runs_finished_total", trigger="schedule", status="error")
        - value(before, "pilot_plan_runs_finished_total", trigger="schedule", status="error")
        == 1
    )
    assert value(after, "pilot_scheduler_jobs") == 7
    with pytest.raises(ValueError, match="outcome"):
        metrics.record_scheduler_firing("won")
    with pytest.raises(ValueError, match="trigger"):
        metrics.record_run_finished("cron", "success")
    with pytest.raises(ValueError, match="status"):
        metrics.record_run_finished("manual", "queued")


def test_pool_gauges_follow_the_app(app: PilotApp, client: FlaskClient, user: str) -> None:
    client.get(f"/api/plans?user_id={user}")
    samples = scrape(client)
    assert value(samples, "pilot_db_pool_connections") == app.settings.db_pool_size
    assert value(samples, "pilot_db_pool_in_use") == 0


WORKER = """
from pilot.ops import cost_metrics, metrics
metrics.record_step("logic", "transform", "success", 5.0, 1)
metrics.record_scheduler_firing("claimed")
metrics.collectors().db_pool_size.set(3)
print(__import__("os").getpid())
"""


def test_multiprocess_mode_sums_every_worker(session_db: str, tmp_path: Path, fernet_key: str) -> None:
    directory = tmp_path / "prom"
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    assert directory.is_dir()  # created by the first worker
    # This test process writes to memory (the variable was unset when it imported prometheus_client);
    # an app whose setting names the directory scrapes what the two workers wrote there.
    app = make_app(session_db, tmp_path, (fernet_key,), prometheus_multiproc_dir=str(directory))
    client = app.test_client()
    samples = scrape(client)
    assert value(samples, "pilot_step_executions_total", provider="logic", action="transform", status="success") == 2
    assert value(samples, "pilot_scheduler_firings_total", outcome="claimed") == 2
    assert value(samples, "pilot_db_pool_connections") == 6  # livesum of both workers

    metrics.mark_worker_dead(pids[0], str(directory))  # what gunicorn's child_exit hook does
    assert value(scrape(client), "pilot_db_pool_connections") == 3
    (directory / "keep.txt").write_text("not a value file")
    assert metrics.reset_multiprocess_dir(str(directory)) > 0  # what on_starting does
    assert [p.name for p in directory.iterdir()] == ["keep.txt"]
    app.db.close()


def _exported_names() -> set[str]:
    names = set()
    for collector in (*metrics.collectors().all(), *cost_metrics.collectors().all()):
        for family in collector.describe():
            names.add(family.name)
            names.update(family.name + suffix for suffix in ("_total", "_bucket", "_count", "_sum"))
    return names


def test_alert_rules_use_only_exported_metrics() -> None:
    text = (ROOT / "deploy" / "prometheus-alerts.yml").read_text()
    used = set(re.findall(r"\bpilot_[a-z_]+", text))
    assert used and used <= _exported_names(), used - _exported_names()
    for alert in (
        "PilotStepErrorRateHigh",
        "PilotScheduledRunsFailing",
        "PilotTargetDown",
        "PilotHttpLatencyHigh",
        "PilotBudgetRefusals",
        "PilotCircuitOpen",
        "PilotSchedulerShedsLateSlots",
        "PilotRunQueueBacklog",
    ):
        assert f"alert: {alert}" in text
    assert re.search(r"> 0\.05", text)  # the checklist's 5 % error-rate threshold


def test_dashboard_is_valid_json_using_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bpilot_[a-z_]+", expr)}
    assert used and used <= _exported_names(), used - _exported_names()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in (
        "request rate",
        "error",
        "latency",
        "success rate",
        "scheduler",
        "cost",
        "budget",
        "circuit breaker",
        "run queue depth",
        "oldest queued run",
    ):
        assert topic in titles
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_executed_steps_and_finished_runs_are_counted(client: FlaskClient, user: str) -> None:
    before = scrape(client)
    step = {"provider": "logic", "action": "transform", "params": {"template": 1}}
    assert client.post("/api/execute-step", json={"user_id": user, "step": step}).status_code == 200
    labels = {"provider": "logic", "action": "transform", "status": "success"}
    after = scrape(client)
    assert (
        value(after, "pilot_step_executions_total", **labels) - value(before, "pilot_step_executions_total", **labels)
        == 1
    )
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "m", "steps": [step]}))
    assert client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": user}).status_code == 200
    runs = {"trigger": "manual", "status": "success"}
    assert (
        value(scrape(client), "pilot_plan_runs_finished_total", **runs)
        - value(after, "pilot_plan_runs_finished_total", **runs)
        == 1
    )
