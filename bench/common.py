"""What every bench needs: a throwaway migrated database, Pilot under gunicorn, a loopback client.

Benches reach Pilot only through its public surfaces: the gunicorn command line
(``gunicorn -c deploy/gunicorn.conf.py APP_SPEC``), the operator CLI
(``flask --app APP_SPEC migrate``), environment variables, the HTTP API, and SQL
against the database. They never import Pilot's modules, so a restructuring of
the code (issue 8: modules moving into a package) leaves them working.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from cryptography.fernet import Fernet
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The one place that names Pilot's WSGI application. ``create_app`` exists today and after issue 8,
# and gunicorn and flask both accept the call form, so every bench serves and migrates through it.
APP_SPEC = os.environ.get("PILOT_BENCH_APP") or "app:create_app()"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
DEFAULT_ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres"
BOOT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 30.0
# Variables of the calling shell that must not leak into the Pilot processes a bench starts.
_PILOT_PREFIXES = ("PILOT_", "FLASK_", "DATABASE_URL", "DB_", "RUN_", "SCHEDULER_", "AUTH_", "FERNET_")


def migrate_database(dsn: str) -> None:
    """Apply Pilot's migrations with its operator command, ``flask --app APP_SPEC migrate``."""
    with tempfile.TemporaryDirectory(prefix="pilot-bench-migrate-") as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PILOT_PREFIXES)}
        env.update(DATABASE_URL=dsn, PILOT_DATA_DIR=data_dir, FERNET_KEY=Fernet.generate_key().decode())
        env.update(LOG_LEVEL="WARNING", SCHEDULER_ENABLED="false")
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", APP_SPEC, "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"migration failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new migrated database ``pilot_bench_<random>``, dropped afterwards whatever happens."""
    name = f"pilot_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn = psycopg2.extensions.make_dsn(admin_dsn, dbname=name)
        try:
            migrate_database(dsn)
            yield dsn
        finally:
            with admin.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loadavg() -> str:
    """The 1/5/15-minute load averages, as /proc/loadavg says."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- the database, as its owner -----------------------------------------------------------------


class Admin:
    """One autocommit connection as the connecting (owner) role: it bypasses RLS to count rows."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg2.connect(dsn, application_name="pilot-bench")
        self.conn.autocommit = True

    def rows(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(query, params)
            return [dict(row) for row in cur.fetchall()] if cur.description else []

    def one(self, query: str, params: Any = None) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
        return row[0] if row else None

    def execute(self, query: str, params: Any = None) -> None:
        with self.conn.cursor() as cur:
            cur.execute(query, params)

    def vacuum_analyze(self) -> None:
        """Autovacuum is off on these machines: settle visibility maps and statistics by hand."""
        self.execute("VACUUM ANALYZE")

    def xact_commit(self) -> int:
        """pg_stat_database.xact_commit of this database, after the backends have reported."""
        self.execute("SELECT pg_stat_clear_snapshot()")
        return int(self.one("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))

    def close(self) -> None:
        self.conn.close()


# --- processes ----------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (a gunicorn master's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def postgres_cpu_seconds() -> float:
    """CPU seconds of every postgres process on the machine (other databases' too: a rough figure)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    total += proc_cpu_seconds(int(entry.name))
    return total


def pilot_env(dsn: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a Pilot process: this shell's, less its Pilot settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PILOT_PREFIXES)}
    data_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        DATABASE_URL=dsn,
        FERNET_KEY=Fernet.generate_key().decode(),
        PILOT_DATA_DIR=str(data_dir),
        PROMETHEUS_MULTIPROC_DIR=str(data_dir / "prometheus"),
        LOG_LEVEL="WARNING",
        PILOT_ACCESS_LOG="",
        OUTBOUND_ALLOWLIST="127.0.0.1",
        SCHEDULER_ENABLED="false",
    )
    env.update(extra)
    return env


class Server:
    """``gunicorn -c <conf> --bind 127.0.0.1:<free port> <app>`` in its own process group."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        app: str = APP_SPEC,
        conf: Path = GUNICORN_CONF,
        workers: int = 2,
        threads: int | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind", f"127.0.0.1:{self.port}"]
        cmd += ["--workers", str(workers)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        self.command = [*cmd, app]
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, path: str = "/api/health", timeout: float = BOOT_TIMEOUT_S) -> None:
        """Until ``path`` answers 200 and every worker is up; raise with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        want = self.expected_workers()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = request(self.port, "GET", path, None, timeout=2)
                if status == 200 and len(self.workers()) >= want:
                    time.sleep(1.0)  # let every worker finish its post_worker_init
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f} s:\n{self.tail()}")

    def expected_workers(self) -> int:
        return int(self.command[self.command.index("--workers") + 1])

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def worker_cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.workers())

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill9(self) -> None:
        """SIGKILL to the whole group at once: master and workers die without any cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM to the group, SIGKILL after ``timeout`` s; returns the master's exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


# --- the client ---------------------------------------------------------------------------------


def send(conn: http.client.HTTPConnection, method: str, path: str, body: Any) -> tuple[int, Any]:
    """One request on ``conn``; the status and the parsed JSON body (or ``{"raw": …}``)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, {"raw": raw[:200].decode("utf-8", "replace")}


def request(port: int, method: str, path: str, body: Any, *, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, Any]:
    """One request on a new connection to 127.0.0.1:``port``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return send(conn, method, path, body)
    finally:
        conn.close()


def post_ok(port: int, path: str, body: Any, expect: tuple[int, ...] = (200, 201)) -> Any:
    """POST and return the body; raise when the status is not one of ``expect``."""
    status, answer = request(port, "POST", path, body)
    if status not in expect:
        raise RuntimeError(f"POST {path}: HTTP {status}: {json.dumps(answer)[:300]}")
    return answer


@dataclass
class Outcome:
    """What a load phase saw: per-request latencies (s), successes, error texts, wall time."""

    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def total(self) -> int:
        return self.ok + len(self.errors)

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall else float("nan")

    def ms(self, q: float) -> float:
        return 1000 * pct(self.latencies, q)

    def first_errors(self, n: int = 3) -> str:
        seen: dict[str, int] = {}
        for error in self.errors:
            seen[error] = seen.get(error, 0) + 1
        return "; ".join(f"{count}x {text}" for text, count in list(seen.items())[:n])


def steady(
    port: int,
    count: int,
    concurrency: int,
    call: Callable[[int], tuple[str, str, Any]],
    judge: Callable[[int, Any], str | None],
    *,
    deadline_s: float = 90.0,
) -> Outcome:
    """``count`` requests over ``concurrency`` keep-alive connections, as fast as they are answered.

    ``call(i)`` gives (method, path, body) of request i; ``judge(status, body)`` None for a success.
    Stops issuing at ``deadline_s``; the wall time is from the first start to the last answer.
    """
    outcome = Outcome()
    lock = threading.Lock()
    issued = [0]
    spans: list[float] = []
    deadline = time.monotonic() + deadline_s

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
                    method, path, body = call(i)
                    status, answer = send(conn, method, path, body)
                    error = judge(status, answer)
                except (OSError, http.client.HTTPException) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
                ended = time.monotonic()
                with lock:
                    spans.extend((started, ended))
                    outcome.latencies.append(ended - started)
                    if error is None:
                        outcome.ok += 1
                    else:
                        outcome.errors.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.1, deadline + CLIENT_TIMEOUT_S - time.monotonic()))
    with lock:
        outcome.wall = (max(spans) - min(spans)) if spans else 0.0
    return outcome


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
