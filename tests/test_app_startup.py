"""``python app.py`` before its database is up (issue 7, item 9): a real process, a real PostgreSQL.

The database "comes up" when a TCP forwarder starts listening on the port that
DATABASE_URL names and relays to the test PostgreSQL; until then nothing listens
there and every connection is refused, as with a server that is still booting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
import requests

from tests.conftest import create_database, drop_database
from tests.test_crash_recovery import ROOT, free_port


class Forwarder:
    """Relays every TCP connection on 127.0.0.1:``port`` to PostgreSQL (TCP or its Unix socket)."""

    def __init__(self, port: int, target: tuple[int, Any]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.socket(self.target[0], socket.SOCK_STREAM)
            upstream.connect(self.target[1])
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped.set()
        for sock in self.sockets:
            sock.close()


def postgres_address(dsn: str) -> tuple[int, Any]:
    parts = psycopg2.extensions.parse_dsn(dsn)
    host, port = parts.get("host") or "/var/run/postgresql", int(parts.get("port") or 5432)
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


@pytest.fixture
def empty_database(admin_dsn: str) -> Iterator[str]:
    """A database with no tables at all: the app has to migrate it."""
    name = f"pilot_test_startup_{uuid.uuid4().hex[:8]}"
    create_database(admin_dsn, name)
    yield name
    drop_database(admin_dsn, name)


def poll(check: Callable[[], bool], seconds: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"python app.py exited ({process.returncode}): {log.read_text()[-3000:]}"
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {seconds} s: {log.read_text()[-3000:]}")


def health_status(url: str) -> int | None:
    try:
        return requests.get(f"{url}/api/health", timeout=5).status_code
    except requests.RequestException:
        return None


def test_python_app_py_waits_for_the_database_then_migrates_and_serves(
    admin_dsn: str, empty_database: str, tmp_path: Path, fernet_key: str
) -> None:
    db_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FLASK_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{db_port}/{empty_database}?connect_timeout=3",
        FERNET_KEY=fernet_key,
        PILOT_DATA_DIR=str(tmp_path),
        FLASK_PORT=str(http_port),
        SCHEDULER_ENABLED="true",
        DB_POOL_SIZE="2",
    )
    log = tmp_path / "app.log"
    url = f"http://127.0.0.1:{http_port}"
    forwarder: Forwarder | None = None
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        poll(lambda: health_status(url) == 503, 30, "no 503 from /api/health while the database is down", process, log)
        body = requests.get(f"{url}/api/health", timeout=5).json()
        assert body["status"] == "unhealthy" and body["database"]["status"] == "down"
        assert requests.get(f"{url}/api/plans?user_id=ops", timeout=5).status_code == 503

        forwarder = Forwarder(db_port, postgres_address(admin_dsn))
        poll(lambda: health_status(url) == 200, 30, "no 200 after the database came up", process, log)
        created = requests.post(f"{url}/api/plans", json={"user_id": "ops", "name": "after"}, timeout=5)
        assert created.status_code == 201, created.text
        listed = requests.get(f"{url}/api/plans?user_id=ops", timeout=5).json()["plans"]
        assert [plan["name"] for plan in listed] == ["after"]
        poll(
            lambda: requests.get(f"{url}/api/health", timeout=5).json()["scheduler"]["status"] == "running",
            30,
            "the scheduler did not start after the migrations",
            process,
            log,
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if forwarder is not None:
            forwarder.close()
