"""Gunicorn settings for serving Pilot in production.

    gunicorn -c deploy/gunicorn.conf.py "app:create_app()"

Model calls take seconds and hold no database connection while they wait, so
one process serves many of them at once: ``gthread`` workers with many threads
each (measured against gevent in ``bench/serve_bench.py``; the figures and the
reasons are in ``docs/performance.md``). Every figure below can be changed
from the environment without editing this file:

    PILOT_BIND            where to listen (default 127.0.0.1:$FLASK_PORT, FLASK_PORT defaults to 5000)
    PILOT_WORKERS         worker processes (default: the number of CPUs)
    PILOT_THREADS         threads per gthread worker = requests in flight per worker (default 256)
    PILOT_WORKER_CLASS    gthread (default) or gevent (needs gevent and psycogreen installed)
    PILOT_WORKER_CONNECTIONS  open client connections per worker (default 1000)
    PILOT_TIMEOUT         seconds a silent worker lives before the master restarts it (default 120)
    PILOT_GRACEFUL_TIMEOUT    seconds SIGTERM gives in-flight requests and runs (default 60)
    PILOT_ACCESS_LOG      access log file, "-" for stdout (default), "" to turn it off
    DB_POOL_SIZE          database connections kept per worker (default 10, see below)
    PROMETHEUS_MULTIPROC_DIR  where workers write metric values (default: a directory of its own, see below)

Command-line flags still win over this file (``--workers 4``), as usual for gunicorn.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import stat
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from gunicorn.glogging import Logger


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, not {value}")
    return value


# --- where --------------------------------------------------------------------

bind = [os.environ.get("PILOT_BIND") or f"127.0.0.1:{os.environ.get('FLASK_PORT') or '5000'}"]

# --- how many -------------------------------------------------------------------

# A step waits on a model for seconds and holds no database connection meanwhile
# (execution_engine: credentials are read in one short transaction, the log row
# written in another). So a request in flight costs an idle thread, not a
# connection or a core. The kernel does not spread new connections evenly over
# the workers, and a gthread worker accepts more than it has threads: the excess
# waits a whole model call for a free thread (measured: of 200 simultaneous calls,
# 2 x 128 threads sometimes held only 184, 4 x 64 as few as 132). So each worker
# gets enough threads for a whole burst: 2 x 256. Threads are started on demand;
# worker memory was the same with 128 and 256.
worker_class = os.environ.get("PILOT_WORKER_CLASS") or "gthread"
workers = _env_int("PILOT_WORKERS", os.cpu_count() or 2)
threads = _env_int("PILOT_THREADS", 256)
worker_connections = _env_int("PILOT_WORKER_CONNECTIONS", 1000)

# Each worker keeps DB_POOL_SIZE connections open (database.BlockingPool, minconn ==
# maxconn) and its threads wait up to 10 s for a free one. A transaction lasts a
# millisecond or two, so 10 connections serve 256 threads: 200 simultaneous steps
# ran as fast with 10 as with 20. Budget: workers x DB_POOL_SIZE, twice that while
# a reload (HUP/USR2) overlaps old and new workers, plus the CLI, must stay under
# PostgreSQL's max_connections (100 by default): 2 x 10 x 2 = 40.
os.environ.setdefault("DB_POOL_SIZE", "10")

# The app must be built in each worker, after the fork (gunicorn calls create_app()
# there): the scheduler, the database pool and the engine's run threads belong to
# one process, and gevent must patch the standard library before the app imports it.
preload_app = False

# --- time -----------------------------------------------------------------------

# gthread and gevent workers tell the master they are alive from their own loop,
# so a long request does not trip this; it only restarts a worker that is stuck.
# It is kept above the slowest step anyway (30 s default timeout x 3 attempts plus
# backoff), so that switching to sync workers cannot kill a step mid-call.
timeout = _env_int("PILOT_TIMEOUT", 120)
# SIGTERM: stop accepting, let in-flight requests finish, then worker_exit stops the
# scheduler with what is left of this budget; the master SIGKILLs after it, and
# runs a killed worker leaves "running" are marked interrupted by the next process.
graceful_timeout = _env_int("PILOT_GRACEFUL_TIMEOUT", 60)
keepalive = 5  # behind a reverse proxy that reuses connections; 2 (the default) for direct clients
SCHEDULER_STOP_MARGIN_S = 5.0  # left for the worker to close its pools before the master's SIGKILL

if os.path.isdir("/dev/shm"):  # noqa: S108 - heartbeat files in RAM: a slow disk cannot stall workers
    worker_tmp_dir = "/dev/shm"  # noqa: S108

# --- logs -----------------------------------------------------------------------

_access = os.environ.get("PILOT_ACCESS_LOG", "-")
accesslog = _access or None
errorlog = "-"
loglevel = (os.environ.get("LOG_LEVEL") or "info").lower()
# Used only if logger_class is changed back to gunicorn's own; JsonAccessLogger ignores it.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'


class JsonAccessLogger(Logger):
    """Access lines as JSON objects, like the app's own logs, joined to them by request id."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        headers = dict((str(k).lower(), v) for k, v in (resp.headers or []))
        entry = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": "gunicorn.access",
            "remote": environ.get("REMOTE_ADDR", "-"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "request_id": headers.get("x-request-id"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),
        }
        try:
            self.access_log.info(json.dumps(entry, default=str))
        except Exception:  # a log line must never fail a request
            self.error("cannot write an access log line")


logger_class = JsonAccessLogger

# --- metrics --------------------------------------------------------------------

# pilot/ops/metrics.py (prometheus_client) keeps its values per process. Under gunicorn every
# worker must write them to one shared directory, set before the app is imported,
# or each scrape would see a different worker's counters. The operator sets
# PROMETHEUS_MULTIPROC_DIR (docs/operations.md: /run/pilot/prometheus under systemd);
# otherwise a directory of this server's own, in the temp dir (private to the service
# under systemd's PrivateTmp), named by user and bind address so a restart reuses it.
# on_starting settles it, in the master, before any worker is forked.
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _own_directory(path: str, uid: int, gid: int) -> None:
    """Create ``path`` (0700, owned by the workers' user) or accept it only if it is a real directory
    of that user or of this one."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise SystemExit(
            f"cannot create {PROMETHEUS_DIR_ENV}={path}: {exc.strerror}"
            " (under systemd, RuntimeDirectory=pilot makes /run/pilot writable for the service user)"
        ) from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (uid, os.getuid()):
        raise SystemExit(f"{PROMETHEUS_DIR_ENV}={path} is not a directory owned by the server's user")
    if os.getuid() == 0 and info.st_uid != uid:  # a root master whose workers run as `user`
        os.chown(path, uid, gid)


# --- hooks ----------------------------------------------------------------------


def on_starting(server: Any) -> None:
    """Choose and empty the metrics directory, then check the configuration.

    Values of an earlier run must not be summed again. A bad setting stops the master
    here with one line, before any worker is forked. The check imports settings and
    the vault only: the master must not import the app, whose metrics module would
    load prometheus_client here, before or without PROMETHEUS_MULTIPROC_DIR, and every
    forked worker would inherit that choice.
    """
    if not os.environ.get(PROMETHEUS_DIR_ENV):
        where = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(server.cfg.bind))  # the final bind, flags included
        os.environ[PROMETHEUS_DIR_ENV] = os.path.join(tempfile.gettempdir(), f"pilot-prometheus-{os.getuid()}-{where}")
    directory = os.environ[PROMETHEUS_DIR_ENV]
    _own_directory(directory, server.cfg.uid, server.cfg.gid)
    for name in glob.glob(os.path.join(directory, "*.db")):
        os.remove(name)
    _check_configuration()


def _check_configuration() -> None:
    """What create_app() would refuse: the settings and the Fernet keys (a development key may be written)."""
    from pilot.errors import ConfigurationError
    from pilot.security.vault import Vault, load_keys
    from pilot.settings import load_settings

    try:
        Vault(load_keys(load_settings()))
    except ConfigurationError as exc:
        raise SystemExit(f"pilot: configuration error: {exc.message}") from None


def child_exit(server: Any, worker: Any) -> None:
    """In the master: drop a dead worker's live gauges from /metrics (its counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ[PROMETHEUS_DIR_ENV])


def post_fork(server: Any, worker: Any) -> None:
    """Make psycopg2 cooperative under gevent before the app opens any connection."""
    if "gevent" in str(server.cfg.worker_class_str).lower():
        try:
            from psycogreen.gevent import patch_psycopg
        except ImportError:
            server.log.error("the gevent worker needs psycogreen: pip install psycogreen")
            raise SystemExit(1) from None
        patch_psycopg()


def _flask_app(worker: Any) -> Any:
    """The Pilot app this worker serves: what gunicorn loaded (``app:create_app()`` calls the factory),
    or None before it is loaded or when gunicorn serves something else."""
    from pilot.application import PilotApp

    wsgi = getattr(worker, "wsgi", None)
    return wsgi if isinstance(wsgi, PilotApp) else None


def post_worker_init(worker: Any) -> None:
    """Start the run claimer and the scheduler in this worker (never in the master); note when SIGTERM arrives."""
    import scheduler

    worker.pilot_term_at = None
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        if worker.pilot_term_at is None:
            worker.pilot_term_at = time.monotonic()
            app = _flask_app(worker)
            if app is not None:
                scheduler.pause_for_shutdown(app)  # no new firings or claims while requests drain
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    app = _flask_app(worker)
    if app is not None:
        app.engine.start_claiming()  # every worker executes queued runs, whatever SCHEDULER_ENABLED says
        scheduler.start_for_serving(app)
        from pilot.ops import rollup

        rollup.start_for_serving(app)  # hourly provider metrics (one process rolls each hour up)


def worker_int(worker: Any) -> None:
    """SIGINT/SIGQUIT (quick shutdown): runs get only a moment before they are marked interrupted."""
    worker.pilot_quick_exit = True


def worker_exit(server: Any, worker: Any) -> None:
    """Stop the scheduler within what is left of the grace period.

    Gunicorn also calls this hook in the master for a worker that is already gone;
    only the worker process itself has a scheduler to stop.
    """
    app = _flask_app(worker)
    if app is None or worker.pid != os.getpid():
        return
    import scheduler

    started = getattr(worker, "pilot_term_at", None)
    spent = time.monotonic() - started if started is not None else 0.0
    budget = max(1.0, server.cfg.graceful_timeout - spent - SCHEDULER_STOP_MARGIN_S)
    if getattr(worker, "pilot_quick_exit", False):
        budget = 1.0
    scheduler.stop_for_serving(app, timeout=budget)
    from pilot.ops import rollup

    rollup.stop_for_serving(app)
