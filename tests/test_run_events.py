"""A run's events (``GET /api/runs/<id>/events``, Server-Sent Events) over real loopback HTTP.

Runs execute on the engine's pool and call a loopback webhook receiver that holds its answer
until the test opens a gate, so "the stream shows a step before it finished" is checked by
order, never by timing. Checked: live events in order with deterministic ids; a reconnect
with ``Last-Event-ID`` that resumes exactly; a stream opened after the run finished that
replays everything and ends; 404 for another user's run and 400 for a bad ``Last-Event-ID``;
two streams on one listening connection (pg_stat_activity); a client that goes away frees
its subscription; a listener whose connection is killed reconnects and loses nothing; the
bounded duration; CORS for a fetch-based reader; shutdown ending the streams.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

import scheduler
from pilot.application import PilotApp
from pilot.data import store
from pilot.execution.events import CHANNEL, run_events
from pilot.security import tokens
from tests.conftest import make_app
from tests.fake_upstreams import _QuietHandler
from tests.test_crash_recovery import wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 20.0
FRONTEND = "http://localhost:5173"
LOGIC_STEP = {"id": "greet", "provider": "logic", "action": "transform", "params": {"template": "hi {{ input.name }}"}}
LAST_STEP = {"provider": "logic", "action": "transform", "params": {"template": "never"}}
BAD_STEP = {"id": "broken", "provider": "logic", "action": "transform", "params": {"template": "{{ input.nope.x }}"}}


# --- loopback parts -----------------------------------------------------------------------------


class GatedReceiver:
    """A webhook receiver that answers ``{"received": true}`` once ``gate`` is set (or after 15 s)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.arrived = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        Request(environ).get_data()
        self.arrived.set()
        self.gate.wait(15.0)
        return Response(json.dumps({"received": True}), 200, content_type="application/json")(environ, start_response)

    def close(self) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[GatedReceiver]:
    gated = GatedReceiver()
    yield gated
    gated.close()


def serve(app: Any) -> tuple[str, Any, threading.Thread]:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_port}", server, thread


@pytest.fixture
def served(session_db: str, tmp_path: Path, fernet_key: str) -> Iterator[tuple[str, PilotApp]]:
    app = make_app(session_db, tmp_path, (fernet_key,), events_heartbeat_seconds=0.2, cors_origins=(FRONTEND,))
    base, server, thread = serve(app)
    try:
        yield base, app
    finally:
        server.shutdown()
        thread.join(timeout=5)
        app.db.close()


# --- an SSE reader that keeps ids -----------------------------------------------------------------


@dataclass
class Event:
    id: str | None
    event: str
    data: Any


class Stream:
    """``GET /api/runs/<id>/events`` read as it arrives: ``next_event()`` and ``events_until_end()``."""

    def __init__(self, base: str, user: str, run_id: int, last_event_id: str | None = None, **headers: str) -> None:
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(
            f"{base}/api/runs/{run_id}/events", params={"user_id": user}, headers=headers, stream=True, timeout=15
        )
        self._chunks = self.response.iter_content(chunk_size=None)
        self._buffer = ""
        self.comments = 0

    def _blocks(self) -> Iterator[str]:
        while True:
            while "\n\n" in self._buffer:
                block, self._buffer = self._buffer.split("\n\n", 1)
                yield block
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._buffer += chunk.decode("utf-8")

    def next_event(self) -> Event | None:
        """The next event (comments counted and skipped); None when the stream ended."""
        for block in self._blocks():
            if block.startswith(":"):
                self.comments += 1
                continue
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(": ")
                fields[name] = value
            return Event(fields.get("id"), fields.get("event", "message"), json.loads(fields["data"]))
        return None

    def events_until_end(self) -> list[Event]:
        events: list[Event] = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            event = self.next_event()
            if event is None:
                return events
            events.append(event)
        raise AssertionError(f"the stream did not end: {events}")

    def close(self) -> None:
        self.response.close()


def wait_for(condition: Any, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def hook_step(receiver: GatedReceiver) -> dict[str, Any]:
    return {"id": "notify", "provider": "webhook", "action": "request", "params": {"url": receiver.url}}


def start_run(base: str, user: str, steps: list[dict[str, Any]], *, wait: bool = False) -> int:
    plan = requests.post(f"{base}/api/plans", json={"user_id": user, "name": "events", "steps": steps}, timeout=10)
    assert plan.status_code == 201, plan.text
    url = f"{base}/api/plans/{plan.json()['id']}/run" + ("?wait=true" if wait else "")
    run = requests.post(url, json={"user_id": user, "input": {"name": "Ada"}}, timeout=15)
    assert run.status_code == (200 if wait else 202), run.text
    return int(run.json()["id"])


def run_status(base: str, user: str, run_id: int) -> str:
    return str(requests.get(f"{base}/api/runs/{run_id}", params={"user_id": user}, timeout=10).json()["status"])


def names_and_ids(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(event.event, event.id) for event in events]


# --- live, resumed, replayed -----------------------------------------------------------------------


def test_a_running_run_streams_its_events_in_order_as_they_happen(
    served: tuple[str, PilotApp], receiver: GatedReceiver, user: str
) -> None:
    base, _app = served
    run_id = start_run(base, user, [LOGIC_STEP, hook_step(receiver)])
    stream = Stream(base, user, run_id)
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        first = stream.next_event()
        assert first is not None and (first.event, first.id) == ("step_finished", "2")
        assert first.data["status"] == "success" and first.data["result"]["data"] == "hi Ada"
        started = stream.next_event()
        assert started is not None and (started.event, started.id) == ("step_started", "3")
        step = {"run_id": run_id, "index": 1, "id": "notify", "provider": "webhook", "action": "request"}
        assert started.data == step
        # The webhook has not answered yet: the step was shown while it ran.
        wait_for(receiver.arrived.is_set, "the webhook call to arrive")
        assert run_status(base, user, run_id) == "running"
        receiver.gate.set()
        rest = stream.events_until_end()
    finally:
        stream.close()
    assert names_and_ids(rest) == [("step_finished", "4"), ("run_finished", "6")]
    assert rest[0].data["status"] == "success" and rest[0].data["result"]["data"]["json"] == {"received": True}
    assert rest[1].data["status"] == "success" and rest[1].data["error"] is None
    assert stream.comments >= 1  # "stream open", then heartbeats while the webhook was held


def test_reconnecting_with_last_event_id_resumes_without_loss_or_duplicates(
    served: tuple[str, PilotApp], receiver: GatedReceiver, user: str
) -> None:
    base, app = served
    run_id = start_run(base, user, [LOGIC_STEP, hook_step(receiver)])
    first = Stream(base, user, run_id)
    seen = [first.next_event(), first.next_event()]
    first.close()  # the connection drops mid-run
    assert [event.id for event in seen if event] == ["2", "3"]
    receiver.gate.set()
    resumed = Stream(base, user, run_id, last_event_id="3")
    try:
        rest = resumed.events_until_end()
    finally:
        resumed.close()
    everything = Stream(base, user, run_id).events_until_end()
    assert [*seen, *rest] == everything  # the same events, the same ids, nothing twice
    assert names_and_ids(everything) == [
        ("step_finished", "2"),
        ("step_started", "3"),
        ("step_finished", "4"),
        ("run_finished", "6"),
    ]
    after_two = Stream(base, user, run_id, last_event_id="2").events_until_end()
    assert after_two == everything[1:]
    assert Stream(base, user, run_id, last_event_id="6").events_until_end() == []
    wait_for(lambda: app.db.listener.subscriber_count(CHANNEL) == 0, "every stream to unsubscribe")


def test_a_finished_run_replays_every_event_then_the_stream_ends(served: tuple[str, PilotApp], user: str) -> None:
    base, _app = served
    run_id = start_run(base, user, [LOGIC_STEP, BAD_STEP, LAST_STEP], wait=True)
    events = Stream(base, user, run_id).events_until_end()
    assert names_and_ids(events) == [
        ("step_finished", "2"),
        ("step_finished", "4"),
        ("error", "5"),
        ("run_finished", "6"),
    ]
    assert events[1].data["status"] == "error" and events[1].data["result"]["success"] is False
    assert events[2].data["code"] == "error" and "broken" in events[2].data["message"]
    assert events[3].data["status"] == "error" and events[3].data["finished_at"]
    # The step results are those GET /api/runs/<id> returns (redacted there, so here).
    run = requests.get(f"{base}/api/runs/{run_id}", params={"user_id": user}, timeout=10).json()
    assert [events[0].data["result"], events[1].data["result"]] == [e["result"] for e in run["step_results"]]


# --- refusals ----------------------------------------------------------------------------------------


def test_another_users_run_is_404_and_a_bad_last_event_id_is_400(
    served: tuple[str, PilotApp], user: str, other_user: str
) -> None:
    base, app = served
    run_id = start_run(base, user, [LOGIC_STEP], wait=True)
    url = f"{base}/api/runs/{run_id}/events"
    theirs = requests.get(url, params={"user_id": other_user}, timeout=10)
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    missing = requests.get(f"{base}/api/runs/999999999/events", params={"user_id": user}, timeout=10)
    assert missing.status_code == 404
    for bad in ("abc", "-1", "1.5", "٣", "9" * 13, "3; x"):
        answer = requests.get(url, params={"user_id": user}, headers={"Last-Event-ID": bad.encode()}, timeout=10)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["code"] == "bad_last_event_id", bad
    past = requests.get(url, params={"user_id": user}, headers={"Last-Event-ID": "99"}, timeout=10)
    assert past.status_code == 409 and "past this run's last event (4)" in past.json()["error"]["message"]
    assert app.db.listener.subscriber_count() == 0  # refused streams left no subscription behind


# --- one listening connection, subscriptions freed ------------------------------------------------------


def listen_connections(admin_dsn: str, dsn: str) -> int:
    dbname = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    with psycopg2.connect(admin_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pilot-listener'",
            (dbname,),
        )
        return int(cur.fetchone()[0])


def test_two_streams_in_one_process_share_one_listening_connection(
    fresh_db: str, admin_dsn: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,), events_heartbeat_seconds=0.2)
    base, server, thread = serve(app)
    receivers = [GatedReceiver(), GatedReceiver()]
    streams: list[Stream] = []
    try:
        assert listen_connections(admin_dsn, fresh_db) == 0  # none until someone watches
        runs = [start_run(base, user, [hook_step(receiver)]) for receiver in receivers]
        streams = [Stream(base, user, run_id) for run_id in runs]
        for stream in streams:
            started = stream.next_event()
            assert started is not None and started.event == "step_started"
        assert app.db.listener.subscriber_count(CHANNEL) == 2
        assert listen_connections(admin_dsn, fresh_db) == 1
        assert app.db.listener.connections_opened == 1
        for receiver in receivers:
            receiver.gate.set()
        for stream in streams:
            assert [event.event for event in stream.events_until_end()] == ["step_finished", "run_finished"]
        wait_for(lambda: app.db.listener.subscriber_count() == 0, "both streams to unsubscribe")
    finally:
        for stream in streams:
            stream.close()
        for receiver in receivers:
            receiver.close()
        server.shutdown()
        thread.join(timeout=5)
        app.db.close()
    wait_for(lambda: listen_connections(admin_dsn, fresh_db) == 0, "the listening connection to close")


def test_a_client_that_goes_away_frees_its_subscription(
    served: tuple[str, PilotApp], receiver: GatedReceiver, user: str
) -> None:
    base, app = served
    run_id = start_run(base, user, [hook_step(receiver)])
    stream = Stream(base, user, run_id)
    started = stream.next_event()
    assert started is not None and started.event == "step_started"
    assert app.db.listener.subscriber_count(CHANNEL) == 1
    # While it waits (heartbeats every 0.2 s go by) the stream holds no pooled connection.
    wait_for(lambda: (stats := app.db.pool_stats()) is not None and stats.in_use == 0, "an idle pool")
    assert app.db.listener.subscriber_count(CHANNEL) == 1  # still following
    stream.close()  # the run goes on; the next heartbeat's write fails and the stream ends
    wait_for(lambda: app.db.listener.subscriber_count(CHANNEL) == 0, "the subscription to be freed")
    receiver.gate.set()
    wait_for(lambda: run_status(base, user, run_id) == "success", "the run to finish")


def test_a_dropped_listening_connection_is_reopened_and_nothing_is_lost(
    session_db: str, admin_dsn: str, tmp_path: Path, fernet_key: str, receiver: GatedReceiver, user: str
) -> None:
    # Heartbeats (which re-read the run too) far apart: only a notification can deliver the end in time.
    app = make_app(session_db, tmp_path, (fernet_key,), events_heartbeat_seconds=120)
    base, server, thread = serve(app)
    try:
        run_id = start_run(base, user, [hook_step(receiver)])
        stream = Stream(base, user, run_id)
        started = stream.next_event()
        assert started is not None and started.event == "step_started"
        with psycopg2.connect(admin_dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = 'pilot-listener'",
                (psycopg2.extensions.parse_dsn(session_db)["dbname"],),
            )
        receiver.gate.set()  # the run ends while the listener may be down: the reconnect re-reads
        wait_for(lambda: app.db.listener.connections_opened >= 2, "the listener to reconnect")
        rest = stream.events_until_end()
        stream.close()
        assert [event.event for event in rest] == ["step_finished", "run_finished"]
    finally:
        server.shutdown()
        thread.join(timeout=5)
        app.db.close()


def test_a_stream_ends_after_events_max_seconds_and_resumes_with_last_event_id(
    session_db: str, tmp_path: Path, fernet_key: str, receiver: GatedReceiver, user: str
) -> None:
    app = make_app(session_db, tmp_path, (fernet_key,), events_heartbeat_seconds=0.2, events_max_seconds=1)
    base, server, thread = serve(app)
    try:
        run_id = start_run(base, user, [hook_step(receiver)])
        first = Stream(base, user, run_id).events_until_end()  # ends although the run has not
        assert names_and_ids(first) == [("step_started", "1")]
        assert run_status(base, user, run_id) == "running"
        receiver.gate.set()
        rest = Stream(base, user, run_id, last_event_id="1").events_until_end()
        assert names_and_ids(rest) == [("step_finished", "2"), ("run_finished", "4")]
    finally:
        server.shutdown()
        thread.join(timeout=5)
        app.db.close()


def test_shutdown_ends_open_streams(served: tuple[str, PilotApp], receiver: GatedReceiver, user: str) -> None:
    base, app = served
    run_id = start_run(base, user, [hook_step(receiver)])
    stream = Stream(base, user, run_id)
    started = stream.next_event()
    assert started is not None and started.event == "step_started"
    scheduler.pause_for_shutdown(app)  # SIGTERM: the client reconnects to a process that stays
    assert stream.events_until_end() == []
    refused = requests.get(f"{base}/api/runs/{run_id}/events", params={"user_id": user}, timeout=10)
    assert refused.status_code == 503
    receiver.gate.set()


# --- a frontend on another origin ------------------------------------------------------------------------


def test_a_fetch_reader_on_another_origin_passes_cors(served: tuple[str, PilotApp], user: str) -> None:
    base, _app = served
    run_id = start_run(base, user, [LOGIC_STEP], wait=True)
    url = f"{base}/api/runs/{run_id}/events"
    preflight = requests.options(
        url,
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, last-event-id",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "last-event-id"} <= allowed
    answer = requests.get(url, params={"user_id": user}, headers={"Origin": FRONTEND, "Last-Event-ID": "0"}, timeout=10)
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert "event: run_finished" in answer.text


def test_the_route_is_in_the_openapi_document(served: tuple[str, PilotApp]) -> None:
    base, _app = served
    document = resp_json_from(requests.get(f"{base}/api/openapi.json", timeout=10))
    operation = document["paths"]["/api/runs/{run_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert any(p.get("name") == "Last-Event-ID" and p.get("in") == "header" for p in operation["parameters"])


def resp_json_from(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


# --- the README's fetch-based reader, run by Node against token mode ---------------------------------------


def readme_reader() -> str:
    """The ``js`` block of the README's "Following a run" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Following a run", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```js\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README shows no fetch-based reader"
    return match.group(1)


DRIVER = """
const [base, runId] = process.argv.slice(2);
followRun(base, runId, process.env.PILOT_TOKEN, (name, data, id) => console.log(JSON.stringify({ name, id })))
  .then(() => console.log(JSON.stringify({ name: "done" })))
  .catch((error) => { console.log(JSON.stringify({ name: "failed", message: String(error) })); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_readmes_fetch_reader_follows_a_run_in_token_mode_across_reconnects(
    session_db: str, tmp_path: Path, fernet_key: str, receiver: GatedReceiver, user: str
) -> None:
    app = make_app(
        session_db, tmp_path, (fernet_key,), auth_mode="token", events_heartbeat_seconds=0.2, events_max_seconds=1
    )
    streams_opened = 0

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        nonlocal streams_opened
        if environ["PATH_INFO"].endswith("/events"):
            streams_opened += 1
        return app(environ, start_response)

    base, server, thread = serve(counting)
    script = tmp_path / "follow.mjs"
    script.write_text(readme_reader() + DRIVER, encoding="utf-8")
    node = None
    try:
        _token_id, token = tokens.create(app.db, user)
        auth = {"Authorization": f"Bearer {token}"}
        plan = requests.post(
            f"{base}/api/plans", json={"name": "node", "steps": [hook_step(receiver)]}, headers=auth, timeout=10
        )
        run = requests.post(f"{base}/api/plans/{plan.json()['id']}/run", json={}, headers=auth, timeout=10)
        assert run.status_code == 202, run.text
        run_id = run.json()["id"]
        anonymous = requests.get(f"{base}/api/runs/{run_id}/events", timeout=10)
        assert anonymous.status_code == 401
        opened_before = streams_opened
        node = subprocess.Popen(
            ["node", str(script), base, str(run_id)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PILOT_TOKEN": token},
        )
        assert node.stdout is not None
        watchdog = threading.Timer(2 * DEADLINE_S, node.kill)  # reads below block: bound them
        watchdog.start()
        assert json.loads(node.stdout.readline()) == {"name": "step_started", "id": "1"}
        # The first stream ends after EVENTS_MAX_SECONDS; the reader reconnects with Last-Event-ID.
        wait_for(lambda: streams_opened >= opened_before + 2, "the reader to reconnect")
        receiver.gate.set()
        lines = [json.loads(node.stdout.readline()) for _ in range(3)]
        assert lines == [{"name": "step_finished", "id": "2"}, {"name": "run_finished", "id": "4"}, {"name": "done"}]
        assert node.wait(timeout=DEADLINE_S) == 0
        watchdog.cancel()
    finally:
        if node is not None and node.poll() is None:
            node.kill()
            node.wait(timeout=5)
        server.shutdown()
        thread.join(timeout=5)
        app.db.close()


# --- gunicorn, production config ----------------------------------------------------------------------------


def test_gunicorn_gthread_streams_hold_a_thread_each_and_share_one_listening_connection(
    fresh_db: str, admin_dsn: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    """Two streams idle at once in one gthread worker: one listener, the pool free for a third request, and
    SIGTERM ends them (the worker stops within its grace period)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FLASK_", "DATABASE_URL", "EVENTS_"))}
    env.update(
        DATABASE_URL=fresh_db,
        FERNET_KEY=fernet_key,
        PILOT_DATA_DIR=str(tmp_path),
        FLASK_PORT=str(port),
        PILOT_WORKERS="1",
        PILOT_THREADS="3",
        PILOT_GRACEFUL_TIMEOUT="10",
        PILOT_ACCESS_LOG="",
        OUTBOUND_ALLOWLIST="127.0.0.1",
        DB_POOL_SIZE="2",
        SCHEDULER_ENABLED="false",
        EVENTS_HEARTBEAT_SECONDS="0.5",
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
    receivers = [GatedReceiver(), GatedReceiver()]
    streams: list[Stream] = []
    try:
        assert wait_until_healthy(base) is not None, (tmp_path / "gunicorn.log").read_text()[-3000:]
        runs = [start_run(base, user, [hook_step(receiver)]) for receiver in receivers]
        streams = [Stream(base, user, run_id) for run_id in runs]
        for stream in streams:
            started = stream.next_event()
            assert started is not None and started.event == "step_started"
        assert listen_connections(admin_dsn, fresh_db) == 1
        # Both streams wait on their threads; the third thread still gets a pooled connection at once.
        assert run_status(base, user, runs[0]) == "running"
        receivers[0].gate.set()
        assert [event.event for event in streams[0].events_until_end()] == ["step_finished", "run_finished"]
        os.killpg(process.pid, signal.SIGTERM)  # the second stream is still open: shutdown ends it
        assert streams[1].events_until_end() == []
        assert process.wait(timeout=30) == 0
    finally:
        for stream in streams:
            stream.close()
        for receiver in receivers:
            receiver.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


# --- migration 017 and the listener on their own -----------------------------------------------------------


def notifications(conn: Any, timeout: float) -> list[Any]:
    """The notifications that arrive on ``conn`` within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.poll()
        if conn.notifies:
            break
        time.sleep(0.05)
    found = list(conn.notifies)
    conn.notifies.clear()
    return found


def test_run_changes_notify_pilot_run_events_and_lease_renewals_do_not(app: PilotApp, user: str) -> None:
    watcher = psycopg2.connect(app.db.dsn)
    watcher.autocommit = True
    try:
        with watcher.cursor() as cur:
            cur.execute("LISTEN pilot_run_events")
        with app.db.transaction(user) as cur:
            plan_id = store.insert_plan(
                cur, user, {"name": "n", "steps": [LOGIC_STEP], "timezone": "UTC", "enabled": True}
            )["id"]
        run = app.engine.create_run(user, plan_id, "manual")
        assert run is not None
        # The run queue's own wake-up goes to pilot_runs, not here (migration 019).
        [created] = notifications(watcher, 5)
        assert json.loads(created.payload) == {"run_id": run["id"], "user_id": user}
        with app.db.transaction(user) as cur:  # a queued run has no owner until it starts
            store.start_run(cur, user, run["id"], "test-owner")
        [started] = notifications(watcher, 5)
        assert json.loads(started.payload)["run_id"] == run["id"]
        with app.db.system_transaction() as cur:  # a lease renewal, as the LeaseKeeper does it
            assert store.heartbeat(cur, "test-owner", [run["id"]], 30) == 1
        assert notifications(watcher, 0.5) == []
    finally:
        watcher.close()


def test_the_listener_keeps_dispatching_when_a_subscriber_fails(app: PilotApp) -> None:
    listener = app.db.listener
    with pytest.raises(ValueError):
        listener.subscribe("pilot runs; DROP", lambda payload: None)
    received: list[str | None] = []
    got = threading.Event()

    def failing(payload: str | None) -> None:
        raise RuntimeError("a subscriber's bug")

    def recording(payload: str | None) -> None:
        received.append(payload)
        if payload is not None:
            got.set()

    with listener.subscribe("pilot_test_channel", failing), listener.subscribe("pilot_test_channel", recording):
        with app.db.transaction(None, as_app=False) as cur:
            cur.execute("SELECT pg_notify('pilot_test_channel', 'hello')")
        assert got.wait(DEADLINE_S)
    assert "hello" in received and listener.subscriber_count() == 0 and listener.running


def test_a_replays_reused_steps_only_finish_and_say_where_their_result_came_from() -> None:
    hook = {"provider": "webhook", "action": "request", "status": "success", "result": {"success": True}}
    run = {
        "id": 9,
        "status": "running",
        "step_results": [{**hook, "index": 0, "id": "a", "reused_from_run": 4}, {**hook, "index": 1, "id": "b"}],
    }
    events = run_events(run, pure=lambda provider: provider == "logic")
    assert [(event.name, event.seq) for event in events] == [
        ("step_finished", 2),  # no step_started: the replay made no call for it
        ("step_started", 3),
        ("step_finished", 4),
    ]
    assert events[0].data["reused_from_run"] == 4 and "reused_from_run" not in events[2].data
