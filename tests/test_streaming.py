"""Streamed chat steps (``POST /api/execute-step`` as Server-Sent Events) against loopback vendors.

The fakes speak each vendor's streaming wire format (tests/fake_upstreams.py). Checked:
deltas as the vendor streams them, one ``result`` equal to the non-streamed answer, one log
row at the end with text, usage and time to first token, redaction across deltas, retries
before text only, a broken-off stream, a client that disconnects (the upstream connection is
closed and the row says ``cancelled``), and gunicorn's production config serving streams
concurrently with one thread each.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from pilot.application import PilotApp
from pilot.data import store
from providers._stream import SSEEvent, sse_events
from tests.conftest import resp_json
from tests.fake_upstreams import RATE_LIMITED, SERVER_ERROR, UNAUTHORIZED, FakeAnthropic, FakeOpenAI, StreamReply
from tests.test_crash_recovery import wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-0123456789abcdefghijklmn"
PLAIN_KEY = "Zq8-plain-secret-5521x"  # no known key shape: only redaction by value can catch it
ACTION = {"openai": "chat_completion", "groq": "chat_completion", "anthropic": "messages"}
DEADLINE_S = 15.0


@pytest.fixture(params=["openai", "groq", "anthropic"])
def vendor(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeOpenAI | FakeAnthropic]]:
    fake: FakeOpenAI | FakeAnthropic = FakeAnthropic() if request.param == "anthropic" else FakeOpenAI()
    with fake:
        yield request.param, fake


def store_key(client: FlaskClient, user: str, provider: str, fake: FakeOpenAI | FakeAnthropic, key: str) -> None:
    body = {"user_id": user, "credentials": {"api_key": key, "base_url": fake.base_url}}
    assert client.post(f"/api/provider-credentials/{provider}", json=body).status_code == 200


def chat(provider: str, prompt: str = "Hello") -> dict[str, Any]:
    return {"provider": provider, "action": ACTION[provider], "params": {"prompt": prompt}}


def parse(body: bytes) -> list[SSEEvent]:
    """The events of a whole SSE body, by the parser the providers use (tested below against the standard)."""
    return [event for event in sse_events([body]) if event is not None]


def stream(client: FlaskClient, user: str, step: dict[str, Any], **kwargs: Any) -> list[SSEEvent]:
    response = client.post(
        "/api/execute-step", json={"user_id": user, "step": step}, headers={"Accept": "text/event-stream"}, **kwargs
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"].startswith("no-cache")
    return parse(response.get_data())


def deltas(events: list[SSEEvent]) -> list[str]:
    return [event.json()["text"] for event in events if event.event == "delta"]


def the_result(events: list[SSEEvent]) -> dict[str, Any]:
    results = [event.json() for event in events if event.event == "result"]
    assert len(results) == 1 and events[-1].event == "result", events
    return results[0]


def user_logs(app: PilotApp, user: str) -> list[dict[str, Any]]:
    with app.db.transaction(user) as cur:
        return store.list_logs(cur, user, limit=50, offset=0)


def without_latency(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key != "latency_ms"}


# --- the SSE parser, against the WHATWG HTML standard's rules -----------------------------------


def test_event_stream_parser_follows_the_standard() -> None:
    body = b': comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\ndata: {"x": 1}\n\nid: 7\rdata: three\r\r'
    chunked = [body[i : i + 3] for i in range(0, len(body), 3)]  # CRLF and UTF-8 split across chunks
    for chunks in ([body], chunked):
        events = list(sse_events(chunks))
        assert events[0] is None  # the comment: a sign of life, no event
        assert [(e.event, e.data) for e in events[1:] if e is not None] == [
            ("a", "one\ntwo"),  # data lines joined with LF; one leading space removed, none required
            ("message", '{"x": 1}'),
            ("message", "three"),  # CR alone ends a line too
        ]
    text = "ünïcode ✓".encode()
    assert [e.data for e in sse_events([b"data: " + text[:2], text[2:] + b"\n\n"]) if e] == ["ünïcode ✓"]


# --- streamed answers -------------------------------------------------------------------------


def test_stream_sends_the_vendors_deltas_then_the_non_streamed_answer(
    app: PilotApp, client: FlaskClient, user: str, vendor: tuple[str, Any]
) -> None:
    provider, fake = vendor
    store_key(client, user, provider, fake, API_KEY)
    fake.reply_text = "The quick brown fox jumps"
    events = stream(client, user, chat(provider))
    request = fake.requests[-1]
    assert request.json["stream"] is True
    if provider != "anthropic":
        assert request.json["stream_options"] == {"include_usage": True}  # else OpenAI sends no usage
    assert len(deltas(events)) > 1 and "".join(deltas(events)) == fake.reply_text
    streamed = the_result(events)
    plain = resp_json(client.post("/api/execute-step", json={"user_id": user, "step": chat(provider)}))
    assert without_latency(streamed) == without_latency(plain)
    assert streamed["data"]["text"] == fake.reply_text and streamed["metadata"]["usage"]
    logged = user_logs(app, user)
    assert len(logged) == 2
    row = logged[1]  # the streamed call: one row, written at the end
    assert row["status"] == "success" and row["output"]["data"]["text"] == fake.reply_text
    assert row["output"]["metadata"]["streamed"] is True
    assert row["output"]["metadata"]["usage"] == plain["metadata"]["usage"]
    assert 0 < row["output"]["metadata"]["time_to_first_token_ms"] <= row["latency_ms"]


def test_stream_query_parameter_and_accept_preferences(client: FlaskClient, user: str) -> None:
    step = {"provider": "logic", "action": "transform", "params": {"template": "hi"}}
    body = {"user_id": user, "step": step}
    by_query = client.post("/api/execute-step?stream=true", json=body)
    assert by_query.mimetype == "text/event-stream"
    events = parse(by_query.get_data())
    assert deltas(events) == [] and the_result(events)["data"] == "hi"  # a step without text: the result alone
    for accept in ("*/*", "application/json, text/event-stream", "text/event-stream;q=0.5, application/json"):
        assert client.post("/api/execute-step", json=body, headers={"Accept": accept}).is_json


def test_the_stream_is_in_the_openapi_document(client: FlaskClient) -> None:
    operation = resp_json(client.get("/api/openapi.json"))["paths"]["/api/execute-step"]["post"]
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "stream" in [parameter.get("name") for parameter in operation["parameters"]]


def test_invalid_step_is_a_json_400_not_a_stream(client: FlaskClient, user: str) -> None:
    step = {"provider": "openai", "action": "chat_completion", "params": {"prompt": "x", "temperature": 9}}
    response = client.post("/api/execute-step?stream=true", json={"user_id": user, "step": step})
    assert response.status_code == 400 and response.is_json
    assert "params.temperature" in resp_json(response)["error"]["message"]


def test_secret_split_across_two_deltas_never_passes(
    app: PilotApp, client: FlaskClient, user: str, vendor: tuple[str, Any]
) -> None:
    provider, fake = vendor
    store_key(client, user, provider, fake, PLAIN_KEY)
    cut = len(PLAIN_KEY) // 2
    fake.script(StreamReply([f"Your key: {PLAIN_KEY[:cut]}", f"{PLAIN_KEY[cut:]} is set.", " Bye"]))
    events = stream(client, user, chat(provider))
    pieces = deltas(events)
    fragments = {PLAIN_KEY[i : i + 6] for i in range(len(PLAIN_KEY) - 5)}  # every 6-character piece of it
    assert not [piece for piece in pieces if any(fragment in piece for fragment in fragments)], pieces
    assert "".join(pieces) == "Your key: [REDACTED] is set. Bye"
    result = the_result(events)
    assert result["data"]["text"] == "Your key: [REDACTED] is set. Bye"
    assert PLAIN_KEY not in json.dumps(result) and PLAIN_KEY not in json.dumps(user_logs(app, user), default=str)


def test_failure_before_any_text_is_retried_then_streamed(
    app: PilotApp, client: FlaskClient, user: str, vendor: tuple[str, Any]
) -> None:
    provider, fake = vendor
    store_key(client, user, provider, fake, API_KEY)
    fake.reply_text = "after a retry"
    fake.script(RATE_LIMITED)  # 429 with Retry-After: 1, then the default: a stream
    result = the_result(events := stream(client, user, chat(provider)))
    assert "".join(deltas(events)) == "after a retry" and result["metadata"]["attempts"] == 2
    fake.script(UNAUTHORIZED)
    result = the_result(events := stream(client, user, chat(provider)))
    assert deltas(events) == [] and result["error"]["code"] == "invalid_credentials"
    assert user_logs(app, user)[0]["status"] == "error"


def test_stream_broken_off_by_the_upstream_fails_with_its_text(
    app: PilotApp, client: FlaskClient, user: str, vendor: tuple[str, Any]
) -> None:
    provider, fake = vendor
    store_key(client, user, provider, fake, API_KEY)
    fake.script(StreamReply(["partial ", "answer"], complete=False), "success")
    events = stream(client, user, chat(provider))
    result = the_result(events)
    assert "".join(deltas(events)) == "partial answer"
    assert result["success"] is False and result["error"]["code"] == "incomplete_response"
    assert result["data"] == {"text": "partial answer"} and result["metadata"]["attempts"] == 1  # text was sent
    assert len(fake.requests) == 1 and user_logs(app, user)[0]["error_code"] == "incomplete_response"


# --- a client that leaves ------------------------------------------------------------------------


def read_until(sock: socket.socket, needle: bytes) -> bytes:
    """What ``sock`` sends until ``needle`` appears (bounded by DEADLINE_S)."""
    sock.settimeout(DEADLINE_S)
    received = b""
    while needle not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    return received


def poll(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_client_disconnect_cancels_the_upstream_call_and_logs_cancelled(
    app: PilotApp, client: FlaskClient, user: str, vendor: tuple[str, Any]
) -> None:
    provider, fake = vendor
    store_key(client, user, provider, fake, API_KEY)
    fake.script(StreamReply([f"token {i} " for i in range(400)], gap=0.05))  # 20 s if nobody leaves
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = json.dumps({"user_id": user, "step": chat(provider)}).encode()
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=DEADLINE_S) as sock:
            sock.sendall(
                b"POST /api/execute-step HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            assert b"event: delta" in read_until(sock, b"event: delta")
        started = time.monotonic()
        poll(fake.stream_cancelled.is_set, "the upstream to see its connection closed")
        rows = poll(lambda: [r for r in user_logs(app, user) if r["error_code"] == "cancelled"], "the log row")
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert time.monotonic() - started < 19  # well before the upstream would have finished on its own
    assert len(user_logs(app, user)) == 1
    row = rows[0]
    assert row["status"] == "error" and "disconnected" in row["error"]
    assert row["output"]["data"]["text"].startswith("token 0 ")  # what was streamed until then


# --- gunicorn, production config ---------------------------------------------------------------


def test_gunicorn_gthread_serves_concurrent_streams_with_one_thread_each(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """Two threads, two streams at once: both progress together, so neither holds a second thread."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FLASK_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=fresh_db,
        FERNET_KEY=fernet_key,
        PILOT_DATA_DIR=str(tmp_path),
        FLASK_PORT=str(port),
        PILOT_WORKERS="1",
        PILOT_THREADS="2",
        PILOT_GRACEFUL_TIMEOUT="5",
        PILOT_ACCESS_LOG="",
        OUTBOUND_ALLOWLIST="127.0.0.1",
        DB_POOL_SIZE="2",
        SCHEDULER_ENABLED="false",
    )
    log = (tmp_path / "gunicorn.log").open("w")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen(
        [str(gunicorn), "-c", "deploy/gunicorn.conf.py", "app:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    marks: list[tuple[str, str]] = []
    lock = threading.Lock()
    try:
        with FakeOpenAI() as fake:
            assert wait_until_healthy(base) is not None, (tmp_path / "gunicorn.log").read_text()[-3000:]
            body = {"user_id": "streamer", "credentials": {"api_key": API_KEY, "base_url": fake.base_url}}
            assert requests.post(f"{base}/api/provider-credentials/openai", json=body, timeout=10).ok
            fake.script(*[StreamReply([f"{n}{i} " for i in range(12)], gap=0.25) for n in ("a", "b")])  # 3 s each

            def consume(name: str) -> None:
                step = {"user_id": "streamer", "step": chat("openai")}
                with requests.post(f"{base}/api/execute-step?stream=true", json=step, stream=True, timeout=30) as r:
                    for line in r.iter_lines():
                        if line.startswith(b"event: "):
                            with lock:
                                marks.append((name, line.decode()))

            threads = [threading.Thread(target=consume, args=(name,)) for name in ("first", "second")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    ends = [index for index, (_, line) in enumerate(marks) if line == "event: result"]
    firsts = {name: next(i for i, (n, line) in enumerate(marks) if n == name) for name in ("first", "second")}
    assert len(ends) == 2, marks
    assert max(firsts.values()) < min(ends), marks  # each stream had started before either ended


# --- costs, budgets and breakers apply to streamed steps too (issue 11 on the issue 10 path) ------


def test_a_streamed_step_records_its_cost_like_a_plain_one(app: PilotApp, client: FlaskClient, user: str) -> None:
    with FakeOpenAI() as fake:
        store_key(client, user, "openai", fake, API_KEY)
        result = the_result(stream(client, user, chat("openai")))
        assert result["success"] is True and result["metadata"]["cost"]["cost_usd"] > 0
        [row] = user_logs(app, user)
        assert row["cost_usd"] is not None and float(row["cost_usd"]) == result["metadata"]["cost"]["cost_usd"]
        assert row["input_tokens"] and row["output_tokens"]
        budget = resp_json(client.get(f"/api/budget?user_id={user}"))
        assert budget["spent_usd"] == pytest.approx(result["metadata"]["cost"]["cost_usd"])


def test_a_spent_budget_refuses_a_streamed_step_before_any_request(
    app: PilotApp, client: FlaskClient, user: str
) -> None:
    with FakeOpenAI() as fake:
        store_key(client, user, "openai", fake, API_KEY)
        put = client.put("/api/budget", json={"user_id": user, "monthly_usd": 1, "on_exceed": "refuse"})
        assert put.status_code == 200
        with app.db.transaction(user) as cur:
            store.add_month_spend(cur, user, Decimal("1"))
        before = len(fake.requests)
        result = the_result(stream(client, user, chat("openai")))
        assert result["success"] is False and result["error"]["code"] == "budget_exceeded"
        assert len(fake.requests) == before  # nothing reached the upstream
        [row] = user_logs(app, user)
        assert row["error_code"] == "budget_exceeded"


def test_an_open_circuit_fails_a_streamed_step_fast(app: PilotApp, client: FlaskClient, user: str) -> None:
    failures = app.settings.breaker_failures
    with FakeOpenAI() as fake:
        store_key(client, user, "openai", fake, API_KEY)
        fake.script(*[SERVER_ERROR] * failures)
        once = {**chat("openai"), "retry": {"max_attempts": 1}}
        for _ in range(failures):
            assert the_result(stream(client, user, once))["error"]["code"] == "upstream_error"
        sent = len(fake.requests)
        result = the_result(stream(client, user, once))
        assert result["error"]["code"] == "circuit_open"
        assert len(fake.requests) == sent  # failed fast: no request
