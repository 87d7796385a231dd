"""kill -9 of a serving process mid-run, then SIGTERM of its successor: real processes, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import requests

from tests.fake_upstreams import Reply, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent


def wait_until_healthy(base_url: str, timeout: float = 60.0) -> requests.Response | None:
    """Poll ``/api/health`` until it answers 200 or ``timeout`` s pass; the last answer (None if none came).

    A busy machine can start the server slowly and answer slowly: any requests error
    (refused, reset, read timeout) means "not yet", and each poll may take 10 s.
    """
    deadline = time.monotonic() + timeout
    answer: requests.Response | None = None
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{base_url}/api/health", timeout=10)
            if answer.status_code == 200:
                return answer
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python app.py`` in a subprocess, as a newcomer or systemd would start it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=ROOT,
            env={**env, "FLASK_PORT": str(self.port)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        answer = wait_until_healthy(self.url)
        if answer is not None and answer.status_code == 200:
            return
        self.stop(signal.SIGKILL)
        raise AssertionError(f"server did not become healthy: {log_path.read_text()[-2000:]}")

    def stop(self, sig: int) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.log.close()


@pytest.fixture
def server_env(fresh_db: str, tmp_path: Path, fernet_key: str) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FLASK_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=fresh_db,
        FERNET_KEY=fernet_key,
        PILOT_DATA_DIR=str(tmp_path),
        OUTBOUND_ALLOWLIST="127.0.0.1",
        RUN_LEASE_SECONDS="3",
        SHUTDOWN_TIMEOUT="2",
        SCHEDULER_ENABLED="true",
    )
    yield env


def run_status(dsn: str, run_id: int) -> tuple[str, str | None]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status, error FROM plan_runs WHERE id = %s", (run_id,))
            status, error = cur.fetchone()
            return status, error
    finally:
        conn.close()


def test_kill_9_mid_webhook_then_restart_marks_the_run_interrupted(
    server_env: dict[str, str], fresh_db: str, tmp_path: Path
) -> None:
    with WebhookReceiver() as receiver:
        receiver.script(Reply(json={"ok": True}, delay=20.0))
        first = Server(server_env, tmp_path / "first.log")
        step = {
            "id": "notify",
            "provider": "webhook",
            "action": "request",
            "params": {"url": receiver.url + "/slow", "json": {"n": 1}},
        }
        plan = requests.post(
            f"{first.url}/api/plans", timeout=5, json={"user_id": "ops", "name": "slow", "steps": [step]}
        ).json()
        run = requests.post(f"{first.url}/api/plans/{plan['id']}/run", json={"user_id": "ops"}, timeout=5).json()
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.requests, "the webhook step never started"
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert run_status(fresh_db, run["id"])[0] == "running"  # the dead process could not say otherwise

        killed_at = time.monotonic()
        second = Server(server_env, tmp_path / "second.log")
        status, error = run_status(fresh_db, run["id"])
        while status == "running" and time.monotonic() - killed_at < 20:
            time.sleep(0.2)
            status, error = run_status(fresh_db, run["id"])
        assert status == "interrupted"
        assert error and "notify (webhook.request) was in flight" in error and "not retried" in error
        assert len(receiver.requests) == 1  # the webhook was not sent again
        other = requests.get(f"{second.url}/api/plans/{plan['id']}?user_id=ops", timeout=5)
        assert other.status_code == 200  # nothing else was lost

        assert second.stop(signal.SIGTERM) == 0  # SIGTERM: clean exit
