"""Time to first token of a streamed step through Pilot, against the upstream's own.

    /work/main/.venv/bin/python bench/stream_bench.py --runs 300

Everything is on this machine: a loopback OpenAI-compatible server that streams chat
completions (``stream: true``: ``data: {chunk}`` lines, a usage chunk, ``data: [DONE]``)
after ``--ttft`` seconds, one token every ``--gap`` seconds; a fresh database on the local
PostgreSQL (dropped at the end); and ``gunicorn -c deploy/gunicorn.conf.py "app:create_app()"``
(the production config: gthread, its workers and threads) on a free loopback port.

Each run, in alternating order on kept-alive connections, measures:

  direct   the time from sending the request to the upstream until its first content chunk
           arrives: the upstream's own time to first token as a client sees it;
  pilot    the time from sending ``POST /api/execute-step`` (``Accept: text/event-stream``)
           until Pilot's first ``event: delta`` arrives, and until its first byte (Pilot sends
           ``: stream open`` before it calls the upstream).

It reports medians, p90 and the per-run difference (pilot - direct, paired runs), and the
ratio of medians. The goal is at most 20 ms added. A bounded wait guards every step; gunicorn's
process group is killed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, fresh_database  # noqa: E402

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
API_KEY = "sk-bench-0123456789abcdefghij"
USER = "bench_streamer"
BOOT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 30.0


class _StreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked replies on kept-alive connections, as the vendors
    server: StreamingUpstream

    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""

    def setup(self) -> None:
        super().setup()
        # As the vendors' servers: each event leaves at once (no Nagle delay behind an unacknowledged one).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": payload.get("model")}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + json.dumps({**base, "choices": [choice], "usage": None}).encode() + b"\n\n"

        self._chunk(event({"role": "assistant", "content": ""}))
        time.sleep(self.server.ttft)
        for index in range(self.server.tokens):
            if index:
                time.sleep(self.server.gap)
            self._chunk(event({"content": f" token{index}"}))
        self._chunk(event({}, "stop"))
        usage = {"prompt_tokens": 5, "completion_tokens": self.server.tokens, "total_tokens": 5 + self.server.tokens}
        self._chunk(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")


class StreamingUpstream(ThreadingHTTPServer):
    """An OpenAI-compatible streaming server on 127.0.0.1: first token after ``ttft`` s, then one per ``gap`` s."""

    daemon_threads = True

    def __init__(self, ttft: float, gap: float, tokens: int) -> None:
        super().__init__(("127.0.0.1", 0), _StreamHandler)
        self.ttft, self.gap, self.tokens = ttft, gap, tokens
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def first_line_with(response: http.client.HTTPResponse, needle: bytes, started: float) -> tuple[float, float]:
    """(seconds to the first body byte, seconds to the first line holding ``needle``); reads the rest."""
    first_byte = found = None
    deadline = started + READ_TIMEOUT_S
    while time.perf_counter() < deadline:
        line = response.readline()
        if not line:
            break
        now = time.perf_counter()
        first_byte = first_byte if first_byte is not None else now - started
        if found is None and needle in line:
            found = now - started
    if found is None or first_byte is None:
        raise RuntimeError(f"no line with {needle!r} in the stream")
    return first_byte, found


def connect(port: int) -> http.client.HTTPConnection:
    """A kept-alive client connection without Nagle's delay (as urllib3 and browsers make them)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT_S)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def direct_ttft(conn: http.client.HTTPConnection) -> float:
    """The upstream's own time to first token: request sent → first chunk with content."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return first_line_with(response, b'"content": " token0"', started)[1]


def pilot_ttft(conn: http.client.HTTPConnection) -> tuple[float, float]:
    """Through Pilot: request sent → first byte, and → first ``event: delta``."""
    step = {"provider": "openai", "action": "chat_completion", "params": {"prompt": "hi"}}
    body = json.dumps({"user_id": USER, "step": step})
    started = time.perf_counter()
    conn.request(
        "POST",
        "/api/execute-step",
        body=body,
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"execute-step answered {response.status}: {response.read()[:300]!r}")
    return first_line_with(response, b"event: delta", started)


def start_gunicorn(dsn: str, port: int, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FLASK_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=dsn,
        FERNET_KEY=Fernet.generate_key().decode(),
        PILOT_DATA_DIR=str(data_dir),
        FLASK_PORT=str(port),
        PILOT_ACCESS_LOG="",
        OUTBOUND_ALLOWLIST="127.0.0.1",
        SCHEDULER_ENABLED="false",
        LOG_LEVEL="WARNING",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "app:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not become healthy: {log.read_text(errors='replace')[-2000:]}")


def store_key(port: int, upstream: StreamingUpstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = {"user_id": USER, "credentials": {"api_key": API_KEY, "base_url": f"http://127.0.0.1:{upstream.port}/v1"}}
    conn.request(
        "POST", "/api/provider-credentials/openai", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"storing the key answered {response.status}")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(direct: list[float], first_byte: list[float], first_delta: list[float]) -> None:
    ms = 1000.0
    added = [(pilot - own) * ms for pilot, own in zip(first_delta, direct, strict=True)]
    rows = [
        ("upstream's own TTFT (direct)", [v * ms for v in direct]),
        ("Pilot: first byte", [v * ms for v in first_byte]),
        ("Pilot: first delta (TTFT)", [v * ms for v in first_delta]),
        ("added (paired: pilot - direct)", added),
    ]
    print(f"{'':34} {'median':>9} {'p90':>9} {'mean':>9} {'min':>9}")
    for label, values in rows:
        print(
            f"{label:34} {statistics.median(values):8.2f}ms {quantile(values, 0.9):8.2f}ms "
            f"{statistics.fmean(values):8.2f}ms {min(values):8.2f}ms"
        )
    ratio = statistics.median(first_delta) / statistics.median(direct)
    print(f"ratio of medians (pilot / direct TTFT): {ratio:.3f}; runs: {len(direct)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-dsn", default=os.environ.get("BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--ttft", type=float, default=0.2, help="the upstream's time to first token, seconds")
    parser.add_argument("--gap", type=float, default=0.005, help="seconds between tokens")
    parser.add_argument("--tokens", type=int, default=5)
    args = parser.parse_args()
    upstream = StreamingUpstream(args.ttft, args.gap, args.tokens)
    port = free_port()
    with fresh_database(args.admin_dsn) as dsn, tempfile.TemporaryDirectory(prefix="pilot-stream-bench-") as tmp:
        log = Path(tmp) / "gunicorn.log"
        proc = start_gunicorn(dsn, port, Path(tmp), log)
        try:
            wait_healthy(port, proc, log)
            store_key(port, upstream)
            direct_conn, pilot_conn = connect(upstream.port), connect(port)
            for _ in range(5):  # warm-up: connections, worker threads, caches
                direct_ttft(direct_conn)
                pilot_ttft(pilot_conn)
            direct, first_byte, first_delta = [], [], []
            for run in range(args.runs):
                if run % 2:  # alternate the order, so drift on a busy machine falls on both alike
                    direct.append(direct_ttft(direct_conn))
                    byte, delta = pilot_ttft(pilot_conn)
                else:
                    byte, delta = pilot_ttft(pilot_conn)
                    direct.append(direct_ttft(direct_conn))
                first_byte.append(byte)
                first_delta.append(delta)
            print(f"upstream: TTFT {args.ttft * 1000:.0f} ms, {args.tokens} tokens {args.gap * 1000:.0f} ms apart")
            print("pilot: gunicorn -c deploy/gunicorn.conf.py (gthread), execute-step with Accept: text/event-stream")
            report(direct, first_byte, first_delta)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            upstream.close()


if __name__ == "__main__":
    main()
