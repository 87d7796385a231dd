"""Prometheus metrics: ``GET /metrics`` and the counters the engine and scheduler feed.

HTTP requests are measured by ``init_app(app)`` hooks, labelled by the matched
route *template* (``/api/plans/<int:plan_id>``), never the raw path, so the
number of series stays bounded whatever clients send. The engine calls
``record_step`` once per executed step; the scheduler calls
``record_scheduler_firing`` and the engine ``record_run_finished``.

Under gunicorn every worker is its own process: when ``PROMETHEUS_MULTIPROC_DIR``
is set (in the environment before prometheus_client is imported: it reads it at
import, see ``pilot/settings.py``) each process writes its values to files
there and ``/metrics`` sums them. The directory must be emptied before the
workers start, and the master must call ``mark_worker_dead(pid)`` when a worker
exits (``docs/operations.md`` gives the gunicorn hooks).
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Blueprint, Response, g, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from pilot.application import current_pilot
from pilot.ops import cost_metrics
from pilot.settings import PROMETHEUS_MULTIPROC_ENV, process_metrics_dir

if TYPE_CHECKING:
    from pilot.application import PilotApp

log = logging.getLogger(__name__)
MULTIPROC_ENV = PROMETHEUS_MULTIPROC_ENV
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"  # 404s and 405s: one series, whatever path was asked for
STEP_STATUSES = frozenset({"success", "error"})
SCHEDULER_OUTCOMES = (
    "claimed",
    "lost",
    "skipped_overlap",
    "skipped_misfire",
    "skipped_budget",
    "skipped_late",
    "catch_up",
    "error",
)
RUN_TRIGGERS = ("manual", "schedule", "api", "replay")
RUN_STATUSES = ("success", "error", "interrupted", "skipped")
# Steps wait on models and webhooks: seconds to minutes, not milliseconds.
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Collectors:
    """Every collector Pilot exports, and the multiprocess directory this process writes them to (or None)."""

    http_requests: Counter
    http_latency: Histogram
    steps: Counter
    step_latency: Histogram
    step_retries: Counter
    scheduler_firings: Counter
    runs_finished: Counter
    scheduler_jobs: Gauge
    run_queue_depth: Gauge
    run_queue_oldest: Gauge
    db_pool_size: Gauge
    db_pool_in_use: Gauge
    multiprocess_dir: str | None

    def all(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return tuple(value for value in vars(self).values() if not isinstance(value, str | None))


_lock = threading.Lock()
_collectors: Collectors | None = None


def collectors() -> Collectors:
    """This process's collectors, built and registered with prometheus_client on first use (never at import).

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set when prometheus_client was
    imported) the directory is created first: every value file lands there.
    """
    global _collectors
    with _lock:
        if _collectors is None:
            _collectors = _build()
        return _collectors


def _build() -> Collectors:
    directory = process_metrics_dir()
    if directory:
        os.makedirs(directory, exist_ok=True)
    built = Collectors(
        http_requests=Counter(
            "pilot_http_requests_total",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
        ),
        http_latency=Histogram(
            "pilot_http_request_duration_seconds",
            "Time to produce an HTTP response, by method and route template",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
        ),
        steps=Counter(
            "pilot_step_executions_total",
            "Executed plan steps, by provider, action and status",
            ["provider", "action", "status"],
        ),
        step_latency=Histogram(
            "pilot_step_duration_seconds",
            "Provider time of one executed step, retries included, by provider and action",
            ["provider", "action"],
            buckets=STEP_BUCKETS,
        ),
        step_retries=Counter(
            "pilot_step_retries_total",
            "Extra attempts made after a retryable failure, by provider and action",
            ["provider", "action"],
        ),
        scheduler_firings=Counter(
            "pilot_scheduler_firings_total", "Scheduled firings seen by this process, by outcome", ["outcome"]
        ),
        runs_finished=Counter(
            "pilot_plan_runs_finished_total", "Plan runs finished, by trigger and status", ["trigger", "status"]
        ),
        scheduler_jobs=Gauge("pilot_scheduler_jobs", "Schedules loaded by the scheduler", multiprocess_mode="livemax"),
        run_queue_depth=Gauge(
            "pilot_run_queue_depth",
            "Runs queued and not yet started, across all processes (sampled by the scheduler)",
            multiprocess_mode="livemax",
        ),
        run_queue_oldest=Gauge(
            "pilot_run_queue_oldest_seconds",
            "Age of the oldest queued run in seconds, 0 when none (sampled by the scheduler)",
            multiprocess_mode="livemax",
        ),
        db_pool_size=Gauge(
            "pilot_db_pool_connections",
            "Database connections kept by the pools of live processes",
            multiprocess_mode="livesum",
        ),
        db_pool_in_use=Gauge(
            "pilot_db_pool_in_use",
            "Pooled database connections checked out when last sampled (after each request and at scrape)",
            multiprocess_mode="livesum",
        ),
        multiprocess_dir=directory,
    )
    # Series that alerts take rate() of exist from the start, at zero.
    for outcome in SCHEDULER_OUTCOMES:
        built.scheduler_firings.labels(outcome)
    for trigger in RUN_TRIGGERS:
        for status in RUN_STATUSES:
            built.runs_finished.labels(trigger, status)
    return built


def multiprocess_dir() -> str | None:
    """The shared directory this process writes its values to (multiprocess mode), else None."""
    return collectors().multiprocess_dir


# --- what the engine and the scheduler call ----------------------------------------


def record_step(provider: str, action: str, status: str, latency_ms: float, attempts: int) -> None:
    """Count one executed step (``status`` 'success' or 'error'), its provider time and its retries."""
    if status not in STEP_STATUSES:
        raise ValueError(f"step status must be one of {sorted(STEP_STATUSES)}, not {status!r}")
    metric = collectors()
    metric.steps.labels(provider, action, status).inc()
    metric.step_latency.labels(provider, action).observe(max(latency_ms, 0.0) / 1000.0)
    if attempts > 1:
        metric.step_retries.labels(provider, action).inc(attempts - 1)


def record_scheduler_firing(outcome: str, count: int = 1) -> None:
    """Count ``count`` firings: claimed, lost (another process won), skipped_overlap, skipped_misfire,
    skipped_budget (its owner's refuse budget is spent), skipped_late (could not start within
    SCHEDULER_MAX_LATENESS_SECONDS), catch_up or error."""
    if outcome not in SCHEDULER_OUTCOMES:
        raise ValueError(f"scheduler outcome must be one of {SCHEDULER_OUTCOMES}, not {outcome!r}")
    if count > 0:
        collectors().scheduler_firings.labels(outcome).inc(count)


def record_run_finished(trigger: str, status: str) -> None:
    """Count one finished run by its trigger (manual/schedule/api/replay) and final status."""
    if trigger not in RUN_TRIGGERS:
        raise ValueError(f"run trigger must be one of {RUN_TRIGGERS}, not {trigger!r}")
    if status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
    collectors().runs_finished.labels(trigger, status).inc()


def set_scheduler_jobs(count: int) -> None:
    """Report how many schedules this process has loaded (the max over live workers is shown)."""
    collectors().scheduler_jobs.set(count)


def set_run_queue(depth: int, oldest_seconds: float) -> None:
    """Report the queued runs and the age of the oldest (one indexed query, sampled by the scheduler)."""
    metric = collectors()
    metric.run_queue_depth.set(depth)
    metric.run_queue_oldest.set(max(oldest_seconds, 0.0))


def mark_worker_dead(pid: int, path: str | None = None) -> None:
    """Drop a dead worker's live gauges from ``path`` (default: this process's directory)."""
    directory = path or multiprocess_dir()
    if directory:
        mark_process_dead(pid, directory)


def reset_multiprocess_dir(path: str | None = None) -> int:
    """Delete the value files left by an earlier run (call before workers start); returns how many."""
    directory = path or multiprocess_dir()
    if not directory or not os.path.isdir(directory):
        return 0
    removed = 0
    for name in glob.glob(os.path.join(directory, "*.db")):
        os.remove(name)
        removed += 1
    return removed


# --- HTTP request metrics --------------------------------------------------------


def _labels() -> tuple[str, str]:
    method = request.method if request.method in HTTP_METHODS else "OTHER"
    rule = request.url_rule
    return method, rule.rule if rule is not None else UNMATCHED_ROUTE


def _observe(status: int) -> None:
    if g.get("_metrics_done"):
        return
    g._metrics_done = True
    method, route = _labels()
    metric = collectors()
    metric.http_requests.labels(method, route, str(status)).inc()
    started = g.get("_metrics_started")
    if started is not None:
        metric.http_latency.labels(method, route).observe(time.perf_counter() - started)


def sample_pool(app: PilotApp) -> None:
    """Copy the app's pool size and checked-out count into the pool gauges (zeros before the pool opens)."""
    stats = app.db.pool_stats()
    metric = collectors()
    metric.db_pool_size.set(stats.size if stats is not None else 0)
    metric.db_pool_in_use.set(stats.in_use if stats is not None else 0)


def init_app(app: PilotApp) -> None:
    """Measure every request of ``app`` and serve ``GET /metrics``."""
    writes_to = collectors().multiprocess_dir
    cost_metrics.collectors()  # costs, budgets, breakers: their alerted series exist from the first scrape
    if app.settings.prometheus_multiproc_dir != writes_to:
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR differs from what prometheus_client saw at import (%s): /metrics reads %s, "
            "but this process writes %s; set it in the environment before the process starts",
            writes_to or "unset",
            app.settings.prometheus_multiproc_dir or "this process's memory",
            writes_to or "to memory",
        )

    @app.before_request
    def start_timer() -> None:
        g._metrics_started = time.perf_counter()

    @app.after_request
    def count_response(response: Response) -> Response:
        _observe(response.status_code)
        return response

    @app.teardown_request
    def count_failure(exc: BaseException | None) -> None:
        # Reached without after_request only when building the response itself failed.
        if exc is not None:
            _observe(500)
        sample_pool(app)

    app.register_blueprint(bp)


bp = Blueprint("metrics", __name__)


def _registry() -> CollectorRegistry:
    directory = current_pilot().settings.prometheus_multiproc_dir
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


@bp.get("/metrics")
def exposition() -> Response:
    """The Prometheus text format (or OpenMetrics when the scraper asks for it)."""
    sample_pool(current_pilot())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(_registry()), status=200, headers={"Content-Type": content_type})
