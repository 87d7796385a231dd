"""Prometheus metrics: ``GET /metrics`` and the counters the engine and scheduler feed.

HTTP requests are measured by ``init_app(app)`` hooks, labelled by the matched
route *template* (``/api/plans/<int:plan_id>``), never the raw path, so the
number of series stays bounded whatever clients send. The engine calls
``record_step`` once per executed step; the scheduler calls
``record_scheduler_firing`` and the engine ``record_run_finished``.

Under gunicorn every worker is its own process: when ``PROMETHEUS_MULTIPROC_DIR``
is set (in the environment before this module is imported: prometheus_client
reads it at import, see ``config.py``) each process writes its values to files
there and ``/metrics`` sums them. The directory must be emptied before the
workers start, and the master must call ``mark_worker_dead(pid)`` when a worker
exits (``docs/operations.md`` gives the gunicorn hooks).
"""

from __future__ import annotations

import glob
import logging
import os
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from pilot.settings import PROMETHEUS_MULTIPROC_ENV, Settings, prometheus_multiproc_dir

log = logging.getLogger(__name__)
MULTIPROC_ENV = PROMETHEUS_MULTIPROC_ENV
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"  # 404s and 405s: one series, whatever path was asked for
STEP_STATUSES = frozenset({"success", "error"})
SCHEDULER_OUTCOMES = ("claimed", "lost", "skipped_overlap", "skipped_misfire", "catch_up", "error")
RUN_TRIGGERS = ("manual", "schedule", "api")
RUN_STATUSES = ("success", "error", "interrupted", "skipped")
# Steps wait on models and webhooks: seconds to minutes, not milliseconds.
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# What prometheus_client saw when the import above ran: where this process writes its values.
IMPORTED_MULTIPROC_DIR = prometheus_multiproc_dir()
if IMPORTED_MULTIPROC_DIR:
    # Every value file lands here; a missing directory would fail the first metric write.
    os.makedirs(IMPORTED_MULTIPROC_DIR, exist_ok=True)

HTTP_REQUESTS = Counter(
    "pilot_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "pilot_http_request_duration_seconds",
    "Time to produce an HTTP response, by method and route template",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)
STEPS = Counter(
    "pilot_step_executions_total",
    "Executed plan steps, by provider, action and status",
    ["provider", "action", "status"],
)
STEP_LATENCY = Histogram(
    "pilot_step_duration_seconds",
    "Provider time of one executed step, retries included, by provider and action",
    ["provider", "action"],
    buckets=STEP_BUCKETS,
)
STEP_RETRIES = Counter(
    "pilot_step_retries_total",
    "Extra attempts made after a retryable failure, by provider and action",
    ["provider", "action"],
)
SCHEDULER_FIRINGS = Counter(
    "pilot_scheduler_firings_total", "Scheduled firings seen by this process, by outcome", ["outcome"]
)
RUNS_FINISHED = Counter(
    "pilot_plan_runs_finished_total", "Plan runs finished, by trigger and status", ["trigger", "status"]
)
SCHEDULER_JOBS = Gauge("pilot_scheduler_jobs", "Schedules loaded by the scheduler", multiprocess_mode="livemax")
DB_POOL_SIZE = Gauge(
    "pilot_db_pool_connections", "Database connections kept by the pools of live processes", multiprocess_mode="livesum"
)
DB_POOL_IN_USE = Gauge(
    "pilot_db_pool_in_use",
    "Pooled database connections checked out when last sampled (after each request and at scrape)",
    multiprocess_mode="livesum",
)

# Series that alerts take rate() of exist from the start, at zero.
for _outcome in SCHEDULER_OUTCOMES:
    SCHEDULER_FIRINGS.labels(_outcome)
for _trigger in RUN_TRIGGERS:
    for _status in RUN_STATUSES:
        RUNS_FINISHED.labels(_trigger, _status)


def multiprocess_dir() -> str | None:
    """The shared directory this process writes its values to (multiprocess mode), else None."""
    return IMPORTED_MULTIPROC_DIR


# --- what the engine and the scheduler call ----------------------------------------


def record_step(provider: str, action: str, status: str, latency_ms: float, attempts: int) -> None:
    """Count one executed step (``status`` 'success' or 'error'), its provider time and its retries."""
    if status not in STEP_STATUSES:
        raise ValueError(f"step status must be one of {sorted(STEP_STATUSES)}, not {status!r}")
    STEPS.labels(provider, action, status).inc()
    STEP_LATENCY.labels(provider, action).observe(max(latency_ms, 0.0) / 1000.0)
    if attempts > 1:
        STEP_RETRIES.labels(provider, action).inc(attempts - 1)


def record_scheduler_firing(outcome: str) -> None:
    """Count one firing: claimed, lost (another process won), skipped_overlap, skipped_misfire, catch_up or error."""
    if outcome not in SCHEDULER_OUTCOMES:
        raise ValueError(f"scheduler outcome must be one of {SCHEDULER_OUTCOMES}, not {outcome!r}")
    SCHEDULER_FIRINGS.labels(outcome).inc()


def record_run_finished(trigger: str, status: str) -> None:
    """Count one finished run by its trigger (manual/schedule/api) and final status."""
    if trigger not in RUN_TRIGGERS:
        raise ValueError(f"run trigger must be one of {RUN_TRIGGERS}, not {trigger!r}")
    if status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
    RUNS_FINISHED.labels(trigger, status).inc()


def set_scheduler_jobs(count: int) -> None:
    """Report how many schedules this process has loaded (the max over live workers is shown)."""
    SCHEDULER_JOBS.set(count)


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
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    started = g.get("_metrics_started")
    if started is not None:
        HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)


def sample_pool(app: Flask) -> None:
    """Copy the app's pool size and checked-out count into the pool gauges.

    Reads the pool's internals tolerantly: metrics must never fail a request.
    """
    pool = getattr(app.extensions["pilot"].db, "_pool", None)
    slots = getattr(pool, "_slots", None)
    size = app.extensions["pilot"].settings.db_pool_size
    free = getattr(slots, "_value", None)
    DB_POOL_SIZE.set(size if pool is not None else 0)
    DB_POOL_IN_USE.set(size - free if isinstance(free, int) else 0)


def init_app(app: Flask) -> None:
    """Measure every request of ``app`` and serve ``GET /metrics``."""
    settings: Settings = app.config["PILOT_SETTINGS"]
    if settings.prometheus_multiproc_dir != IMPORTED_MULTIPROC_DIR:
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR differs from what prometheus_client saw at import (%s): /metrics reads %s, "
            "but this process writes %s; set it in the environment before the process starts",
            IMPORTED_MULTIPROC_DIR or "unset",
            settings.prometheus_multiproc_dir or "this process's memory",
            IMPORTED_MULTIPROC_DIR or "to memory",
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


def _registry() -> Any:
    directory = current_app.extensions["pilot"].settings.prometheus_multiproc_dir
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


@bp.get("/metrics")
def exposition() -> Response:
    """The Prometheus text format (or OpenMetrics when the scraper asks for it)."""
    sample_pool(current_app)
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(_registry()), status=200, headers={"Content-Type": content_type})
