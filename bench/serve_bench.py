"""Pilot under gunicorn against a slow model: how many calls stay in flight, and what short steps cost.

    /tmp/venv/bin/python bench/serve_bench.py --rounds 3            # the default comparison, ~3 min
    /tmp/venv/bin/python bench/serve_bench.py --config gthread:2:256:10 --config gevent:2:1000:10

Everything is on this machine: a loopback OpenAI-compatible server that answers
after ``--delay`` s (1 s), a fresh database on the local PostgreSQL (dropped at the
end) and ``gunicorn -c deploy/gunicorn.conf.py APP_SPEC`` (``bench/common.py``) started once per config on
a free loopback port. Per config it measures

  a. ``--llm`` (200) concurrent ``POST /api/execute-step`` openai chat_completion calls:
     wall time, successes, p50/p99 (target: all succeed in under 3 s);
  b. ``--count`` (2,000) short ``logic/transform`` steps at concurrency ``--concurrency`` (10)
     on keep-alive connections: req/s, errors, worker CPU ms per request;
  c. the checklist's load test: ``--burst`` (200) concurrent logic/transform steps, each on a
     new connection: 0 errors and exactly one execution_logs row per request;
  d. ``pg_stat_database.sessions`` around b and c: sessions opened beyond a worker's first
     pool should be 0 (the pool keeps its connections instead of reopening them);
  e. SIGTERM to the master while 20 model calls are in flight: all are answered, exit code 0.

A config is ``CLASS:WORKERS:THREADS[:DB_POOL_SIZE]`` (for gevent THREADS is
worker_connections; gevent configs are skipped unless gevent and psycogreen are
installed). The first config is the baseline the ratios compare against; figures
are only compared within one run, because this machine is noisy. ``--rounds N``
repeats the configs (alternating their order) and reports medians.
Every wait is bounded and gunicorn's process group is killed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import APP_SPEC, free_port, fresh_database  # noqa: E402

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_CONFIGS = ["gthread:2:256:10", "gthread:2:128:10", "gthread:2:32:10", "gthread:4:64:10", "gevent:2:1000:10"]
CLIENT_TIMEOUT_S = 30.0
BOOT_TIMEOUT_S = 30.0
PHASE_DEADLINE_S = 90.0


# --- the slow upstream ------------------------------------------------------------------------


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    timeout = 30  # an idle kept-alive connection is closed after this
    server: SlowUpstream

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: 200 lines a second would only add noise."""

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1_000_000)) if length else b""
        if not self.path.endswith("/chat/completions"):
            self._reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found", "code": None}})
            return
        with self.server.counter_lock:
            self.server.in_flight += 1
            self.server.peak = max(self.server.peak, self.server.in_flight)
            self.server.calls += 1
        try:
            self.server.stopping.wait(self.server.delay)
        finally:
            with self.server.counter_lock:
                self.server.in_flight -= 1
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        self._reply(
            200,
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "model": payload.get("model", "gpt-4o-mini"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
            },
        )


class SlowUpstream(ThreadingHTTPServer):
    """An OpenAI-compatible chat-completions server on 127.0.0.1 that answers after ``delay`` s.

    One thread per connection and a listen backlog of 1024, so hundreds of calls
    wait at the same time; ``peak`` is the most that were ever waiting at once.
    """

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.delay = delay
        self.counter_lock = threading.Lock()
        self.in_flight = self.peak = self.calls = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reset_peak(self) -> None:
        with self.counter_lock:
            self.peak = self.in_flight

    def close(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


# --- the database -----------------------------------------------------------------------------


class Stats:
    """One long-lived superuser connection to the bench database (it bypasses RLS to count rows)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn, application_name="pilot-bench")
        self.conn.autocommit = True

    def one(self, query: str, params: Any = None) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
        return row[0] if row else None

    def sessions(self) -> int:
        # Backends report their counters when they go idle; give them a moment.
        time.sleep(1.2)
        return int(self.one("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"))

    def app_connections(self) -> tuple[int, float]:
        """How many connections the app holds now, and the age in seconds of the youngest."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), coalesce(extract(epoch FROM now() - max(backend_start)), 0)"
                " FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pilot'"
            )
            count, youngest = cur.fetchone()
        return int(count), float(youngest)

    def close(self) -> None:
        self.conn.close()


# --- gunicorn ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    worker_class: str
    workers: int
    threads: int
    pool: int = 20

    @classmethod
    def parse(cls, text: str) -> ServeConfig:
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] not in ("gthread", "gevent", "sync"):
            raise argparse.ArgumentTypeError(f"{text!r}: expected CLASS:WORKERS:THREADS[:DB_POOL_SIZE]")
        numbers = [int(p) for p in parts[1:]]
        return cls(parts[0], *numbers)

    @property
    def label(self) -> str:
        unit = "conns" if self.worker_class == "gevent" else "thr"
        return f"{self.worker_class} {self.workers}x{self.threads}{unit} pool{self.pool}"

    def available(self) -> str | None:
        if self.worker_class == "gevent":
            missing = [m for m in ("gevent", "psycogreen") if importlib.util.find_spec(m) is None]
            if missing:
                return f"not installed: {', '.join(missing)}"
        return None

    def flags(self) -> list[str]:
        flags = ["--worker-class", self.worker_class, "--workers", str(self.workers)]
        if self.worker_class == "gevent":
            return [*flags, "--worker-connections", str(self.threads)]
        return [*flags, "--threads", str(self.threads)]


def proc_cpu_seconds(entry: Path) -> float:
    """User + system CPU seconds of one process, from /proc/PID/stat (0 if it is gone)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def postgres_cpu_seconds() -> float:
    """CPU seconds of every process named postgres on this machine (other databases' too: a rough figure)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    total += proc_cpu_seconds(entry)
    return total


class Gunicorn:
    """``gunicorn -c deploy/gunicorn.conf.py APP_SPEC`` (``bench/common.py``) in its own process group."""

    def __init__(self, config: ServeConfig, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "deploy" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{self.port}",
            *config.flags(),
            APP_SPEC,
        ]
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = request("127.0.0.1", self.port, "GET", "/api/health", None, timeout=2)
                if status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not become healthy in {BOOT_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def workers(self) -> list[Path]:
        """/proc entries of the master's children (the workers)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        found.append(entry)
        return found

    def worker_cpu_seconds(self) -> float:
        """User + system CPU seconds of the workers so far."""
        return sum(proc_cpu_seconds(entry) for entry in self.workers())

    def worker_rss_mb(self) -> float:
        total = 0
        for entry in self.workers():
            with contextlib.suppress(OSError, ValueError):
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after 15 s; never waits longer than that."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers of the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


# --- the client -------------------------------------------------------------------------------


def request(
    host: str, port: int, method: str, path: str, body: Any, *, timeout: float = CLIENT_TIMEOUT_S
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        return send(conn, method, path, body)
    finally:
        conn.close()


def send(conn: http.client.HTTPConnection, method: str, path: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, {"raw": raw[:200].decode("utf-8", "replace")}


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def total(self) -> int:
        return self.ok + len(self.errors)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def first_errors(self, n: int = 3) -> str:
        seen: dict[str, int] = {}
        for error in self.errors:
            seen[error] = seen.get(error, 0) + 1
        return "; ".join(f"{count}x {text}" for text, count in list(seen.items())[:n])


def judged(status: int, body: Any) -> str | None:
    """None for a step that ran and succeeded, else a short reason."""
    if status != 200:
        return f"HTTP {status}: {json.dumps(body)[:160]}"
    if not isinstance(body, dict) or body.get("success") is not True:
        return f"step failed: {json.dumps((body or {}).get('error'))[:160]}"
    return None


def burst(port: int, n: int, body_for: Callable[[int], Any]) -> Outcome:
    """``n`` requests released at once, each on its own new connection (the checklist's shape)."""
    outcome = Outcome()
    lock = threading.Lock()
    barrier = threading.Barrier(n + 1, timeout=30)
    spans: list[tuple[float, float]] = []

    def one(i: int) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        started = time.monotonic()
        try:
            status, body = request("127.0.0.1", port, "POST", "/api/execute-step", body_for(i))
            error = judged(status, body)
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        ended = time.monotonic()
        with lock:
            spans.append((started, ended))
            outcome.latencies.append(ended - started)
            if error is None:
                outcome.ok += 1
            else:
                outcome.errors.append(error)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    deadline = time.monotonic() + PHASE_DEADLINE_S
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    with lock:
        if spans:
            outcome.wall = max(end for _, end in spans) - min(start for start, _ in spans)
        missing = n - outcome.total
        outcome.errors.extend(["no answer before the phase deadline"] * missing)
    return outcome


def steady(port: int, count: int, concurrency: int, body_for: Callable[[int], Any]) -> Outcome:
    """``count`` requests over ``concurrency`` keep-alive connections, as fast as they are answered."""
    outcome = Outcome()
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + PHASE_DEADLINE_S

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= count:
                        return
                    issued[0] += 1
                    i = issued[0]
                started = time.monotonic()
                try:
                    status, body = send(conn, "POST", "/api/execute-step", body_for(i))
                    error = judged(status, body)
                except (OSError, http.client.HTTPException) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
                elapsed = time.monotonic() - started
                with lock:
                    outcome.latencies.append(elapsed)
                    if error is None:
                        outcome.ok += 1
                    else:
                        outcome.errors.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.1, deadline + CLIENT_TIMEOUT_S - time.monotonic()))
    outcome.wall = time.monotonic() - started
    return outcome


def transform(user: str) -> Callable[[int], Any]:
    return lambda i: {
        "user_id": user,
        "step": {"provider": "logic", "action": "transform", "params": {"template": {"n": i, "ok": True}}},
    }


def chat(user: str) -> Callable[[int], Any]:
    return lambda i: {
        "user_id": user,
        "step": {
            "provider": "openai",
            "action": "chat_completion",
            "params": {"prompt": f"say ok #{i}", "max_tokens": 5},
            "retry": {"max_attempts": 1},
        },
    }


def sigterm_in_flight(
    server: Gunicorn, upstream: SlowUpstream, n: int, body_for: Callable[[int], Any]
) -> tuple[Outcome, int | None, float]:
    """SIGTERM to the master while ``n`` model calls wait upstream: all should still be answered."""
    result: list[Outcome] = []
    thread = threading.Thread(target=lambda: result.append(burst(server.port, n, body_for)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while upstream.in_flight < n and time.monotonic() < deadline:
        time.sleep(0.02)
    signalled = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    thread.join(timeout=PHASE_DEADLINE_S)
    try:
        code: int | None = server.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        code = None
    return (result[0] if result else Outcome(errors=["no result"] * n)), code, time.monotonic() - signalled


# --- one config -------------------------------------------------------------------------------


@dataclass
class Row:
    config: ServeConfig
    skipped: str | None = None
    llm: Outcome | None = None
    upstream_peak: int = 0
    short: Outcome | None = None
    cpu_ms_per_req: float = float("nan")
    pg_ms_per_req: float = float("nan")
    client_ms_per_req: float = float("nan")
    rss_mb: float = float("nan")
    load: Outcome | None = None
    rows_logged: int = -1
    new_sessions: int = -1
    app_conns: int = 0
    youngest_conn_s: float = 0.0
    shutdown: Outcome | None = None
    exit_code: int | None = None
    exit_s: float = float("nan")


def bench_config(config: ServeConfig, args: argparse.Namespace, dsn: str, upstream: SlowUpstream, tmp: Path) -> Row:
    row = Row(config)
    reason = config.available()
    if reason:
        row.skipped = reason
        return row
    tag = uuid.uuid4().hex[:6]
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "FERNET_KEY": Fernet.generate_key().decode(),
        "OUTBOUND_ALLOWLIST": "127.0.0.1",
        "SCHEDULER_ENABLED": "false",
        "DB_POOL_SIZE": str(config.pool),
        "PILOT_DATA_DIR": str(tmp / f"data-{tag}"),
        "PILOT_ACCESS_LOG": str(tmp / f"access-{tag}.log"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"prometheus-{tag}"),
        "LOG_LEVEL": "WARNING",
    }
    server = Gunicorn(config, env, tmp / f"gunicorn-{tag}.log")
    stats = Stats(dsn)
    try:
        server.wait_healthy()
        port = server.port
        llm_user, short_user, load_user = f"llm-{tag}", f"short-{tag}", f"load-{tag}"
        status, body = request(
            "127.0.0.1",
            port,
            "POST",
            "/api/provider-credentials/openai",
            {"user_id": llm_user, "credentials": {"api_key": "sk-bench-0000000000000", "base_url": upstream.base_url}},
        )
        if status != 200:
            raise RuntimeError(f"storing the credential failed: {status} {body}")
        # Warm up: every worker imports lazily, opens its pool, builds its first HTTP adapters.
        steady(port, 40, 8, transform(f"warm-{tag}"))
        burst(port, 100, transform(f"warm-{tag}"))  # a burst reaches every worker, so each opens its pool
        burst(port, 20, chat(llm_user))

        if "a" in args.phases:
            upstream.reset_peak()
            row.llm = burst(port, args.llm, chat(llm_user))
            row.upstream_peak = upstream.peak
        sessions_before = stats.sessions()
        conns_before, _ = stats.app_connections()
        if "b" in args.phases:
            cpu_before, pg_before, client_before = (
                server.worker_cpu_seconds(),
                postgres_cpu_seconds(),
                time.process_time(),
            )
            row.short = steady(port, args.count, args.concurrency, transform(short_user))
            n = max(1, row.short.total)
            row.cpu_ms_per_req = 1000 * (server.worker_cpu_seconds() - cpu_before) / n
            row.pg_ms_per_req = 1000 * (postgres_cpu_seconds() - pg_before) / n
            row.client_ms_per_req = 1000 * (time.process_time() - client_before) / n
        if "c" in args.phases:
            row.load = burst(port, args.burst, transform(load_user))
            row.rows_logged = int(stats.one("SELECT count(*) FROM execution_logs WHERE user_id = %s", (load_user,)))
        row.app_conns, row.youngest_conn_s = stats.app_connections()
        # Sessions opened during b and c, less those of a pool a worker opened for the first time.
        row.new_sessions = stats.sessions() - sessions_before - max(0, row.app_conns - conns_before)
        row.rss_mb = server.worker_rss_mb()
        if "e" in args.phases:
            row.shutdown, row.exit_code, row.exit_s = sigterm_in_flight(server, upstream, 20, chat(llm_user))
    except Exception as exc:
        row.skipped = f"failed: {exc}"
        print(server.tail(), file=sys.stderr)
    finally:
        stats.close()
        server.stop()
    return row


# --- report -----------------------------------------------------------------------------------


def figures(row: Row) -> dict[str, float]:
    """The row's numbers by name; NaN for a phase that did not run."""
    nan = float("nan")
    f: dict[str, float] = {"new_sessions": row.new_sessions, "conns": row.app_conns, "peak": row.upstream_peak}
    f["rss"] = row.rss_mb
    if row.llm:
        f.update(a_wall=row.llm.wall, a_ok=row.llm.ok, a_n=row.llm.total, a_p50=row.llm.pct(0.5))
        f.update(a_p99=row.llm.pct(0.99))
    if row.short:
        f.update(b_rps=row.short.total / row.short.wall if row.short.wall else nan, b_err=len(row.short.errors))
        f.update(b_p50=1000 * row.short.pct(0.5), b_p99=1000 * row.short.pct(0.99), cpu=row.cpu_ms_per_req)
        f.update(pg=row.pg_ms_per_req, client=row.client_ms_per_req)
    if row.load:
        f.update(c_wall=row.load.wall, c_ok=row.load.ok, c_n=row.load.total)
        f.update(rows_bad=float(row.rows_logged != row.load.total))
    return f


SUMMED = {"a_ok", "a_n", "b_err", "c_ok", "c_n", "rows_bad"}
MAXED = {"new_sessions", "conns"}


def combine(rows: list[Row]) -> dict[str, float]:
    """Rounds of one config: medians of times and rates, sums of counts, the worst session figure."""
    per_round = [figures(r) for r in rows]
    keys = {k for f in per_round for k in f}
    out: dict[str, float] = {}
    for key in keys:
        values = [f[key] for f in per_round if key in f]
        if key in SUMMED:
            out[key] = sum(values)
        elif key in MAXED:
            out[key] = max(values)
        elif key == "peak":
            out[key] = min(values)
        else:
            out[key] = statistics.median(values)
    return out


def ratio(value: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(value):
        return "-"
    return f"{value / base:4.2f}x"


def print_table(configs: list[ServeConfig], rows: list[Row], args: argparse.Namespace) -> None:
    print()
    print(
        f"a: {args.llm} concurrent openai calls, upstream {args.delay:.1f} s | "
        f"b: {args.count} logic steps at concurrency {args.concurrency} | "
        f"c: {args.burst} concurrent logic steps | d: PG sessions reopened during b+c"
        + (f" | median of {args.rounds} rounds, counts summed" if args.rounds > 1 else "")
    )
    header = (
        f"{'config':<28} {'a wall s':>8} {'a ok':>9} {'a p50':>6} {'a p99':>6} {'peak':>5} {'vs base':>7} |"
        f" {'b req/s':>7} {'b err':>5} {'p50 ms':>6} {'p99 ms':>6} {'cpu ms/req':>10} {'vs base':>7} |"
        f" {'c wall s':>8} {'c ok':>9} {'rows':>4} | {'d reop':>6} {'conns':>5} {'RSS MB':>6}"
    )
    print(header)
    print("-" * len(header))
    done = {c: [r for r in rows if r.config == c and r.skipped is None] for c in configs}
    combined = {c: combine(done[c]) for c in configs if done[c]}
    base = combined.get(configs[0], {})
    nan = float("nan")
    for config in configs:
        if config not in combined:
            reasons = {r.skipped for r in rows if r.config == config}
            print(f"{config.label:<28} skipped ({'; '.join(sorted(str(x) for x in reasons))})")
            continue
        f = combined[config]

        def g(key: str, f: dict[str, float] = f) -> float:
            return f.get(key, nan)

        line = f"{config.label:<28}"
        if "a_wall" in f:
            line += (
                f" {g('a_wall'):8.2f} {int(g('a_ok')):>4}/{int(g('a_n')):<4} {g('a_p50'):6.2f} {g('a_p99'):6.2f}"
                f" {int(g('peak')):>5} {ratio(g('a_wall'), base.get('a_wall', nan)):>7} |"
            )
        else:
            line += f" {'-':>48} |"
        if "b_rps" in f:
            line += (
                f" {g('b_rps'):7.0f} {int(g('b_err')):>5} {g('b_p50'):6.1f} {g('b_p99'):6.1f} {g('cpu'):10.2f}"
                f" {ratio(g('b_rps'), base.get('b_rps', nan)):>7} |"
            )
        else:
            line += f" {'-':>47} |"
        if "c_wall" in f:
            rows_ok = "ok" if g("rows_bad") == 0 else "BAD"
            line += f" {g('c_wall'):8.2f} {int(g('c_ok')):>4}/{int(g('c_n')):<4} {rows_ok:>4} |"
        else:
            line += f" {'-':>23} |"
        line += f" {int(g('new_sessions')):>6} {int(g('conns')):>5} {g('rss'):6.0f}"
        print(line)
    if any("cpu" in f for f in combined.values()):
        print("phase b CPU per request, ms (workers / PostgreSQL, all databases / this client):")
        for config, f in combined.items():
            if "cpu" in f:
                print(f"  {config.label:<28} {f['cpu']:5.2f} / {f['pg']:5.2f} / {f['client']:5.2f}")
    print()
    for r in rows:
        problems = []
        if r.llm and r.llm.errors:
            problems.append(f"a: {r.llm.first_errors()}")
        if r.short and r.short.errors:
            problems.append(f"b: {r.short.first_errors()}")
        if r.load and (r.load.errors or r.rows_logged != r.load.total):
            problems.append(f"c: {r.load.first_errors()} rows={r.rows_logged}")
        if problems:
            print(f"{r.config.label}: " + " | ".join(problems))
    for config in configs:
        runs = done[config]
        if len(runs) > 1 and any(r.llm for r in runs):
            walls = " ".join(f"{r.llm.wall:.2f}s/{r.upstream_peak}" for r in runs if r.llm)
            print(f"a per round (wall/peak): {config.label}: {walls}")
        if len(runs) > 1 and any(r.short for r in runs):
            rates = " ".join(f"{r.short.total / r.short.wall:.0f}" for r in runs if r.short and r.short.wall)
            print(f"b per round (req/s): {config.label}: {rates}")
    for config in configs:
        stops = [r for r in done[config] if r.shutdown is not None]
        if stops:
            answered = sum(r.shutdown.ok for r in stops if r.shutdown)
            total = sum(r.shutdown.total for r in stops if r.shutdown)
            codes = sorted({str(r.exit_code) for r in stops})
            slowest = max(r.exit_s for r in stops)
            print(
                f"e: {config.label}: SIGTERM with calls in flight: {answered}/{total} answered,"
                f" exit code {'/'.join(codes)}, exited within {slowest:.1f} s"
            )
    print("a ok: 200 responses whose step succeeded; peak: most calls the upstream held at once (lowest round);")
    print("rows: one execution_logs row per phase-c request; d reop: PostgreSQL sessions opened during b and c")
    print("beyond a worker's first pool (0 = connections are kept, not reopened per request);")
    print("conns: the app's connections at the end (workers x DB_POOL_SIZE); RSS: the workers' total.")
    print(f"Ratios are against the first config ({configs[0].label}), within this run.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", type=ServeConfig.parse, help="CLASS:WORKERS:THREADS[:POOL]")
    parser.add_argument("--admin-dsn", default=os.environ.get("BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--delay", type=float, default=1.0, help="upstream answer delay in seconds")
    parser.add_argument("--llm", type=int, default=200, help="phase a: concurrent model calls")
    parser.add_argument("--count", type=int, default=2000, help="phase b: short steps")
    parser.add_argument("--concurrency", type=int, default=10, help="phase b: concurrent clients")
    parser.add_argument("--burst", type=int, default=200, help="phase c: concurrent short steps")
    parser.add_argument("--phases", default="abcde", help="e: SIGTERM with 20 calls in flight (graceful stop)")
    parser.add_argument("--rounds", type=int, default=1, help="run the configs this many times, interleaved")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be 1..5")
    for name in ("llm", "count", "concurrency", "burst"):
        if not 1 <= getattr(args, name) <= 5000:
            parser.error(f"--{name} must be 1..5000")
    if not 0 <= args.delay <= 10:
        parser.error("--delay must be 0..10 s")
    configs: list[ServeConfig] = args.config or [ServeConfig.parse(c) for c in DEFAULT_CONFIGS]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, configs: {', '.join(c.label for c in configs)}")
    upstream = SlowUpstream(args.delay)
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pilot-serve-bench-") as tmpdir, fresh_database(args.admin_dsn) as dsn:
            for round_ in range(1, args.rounds + 1):
                # Every other round runs the configs backwards, so a drift in the machine's load
                # does not always favour the configs that run last.
                for config in configs if round_ % 2 else configs[::-1]:
                    started = time.monotonic()
                    rows.append(bench_config(config, args, dsn, upstream, Path(tmpdir)))
                    print(f"  round {round_} {config.label}: {time.monotonic() - started:.1f} s", flush=True)
    finally:
        upstream.close()
    print_table(configs, rows, args)
    return 0 if all(r.skipped is None or r.skipped.startswith("not installed") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
