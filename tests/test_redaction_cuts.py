"""No fragment of a key survives where text is cut: redaction comes before every truncation.

Loopback upstreams echo the stored key so that it straddles each cut Pilot makes: the
500-character upstream message (JSON ``error.message`` and a plain-text body), the webhook
body cap and the engine's logged-output cap. Every answer (execute-step, credential test,
run, logs) and every stored row must hold no 8-character fragment of the key.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from flask.testing import FlaskClient

from execution_engine import MAX_LOGGED_CHARS
from pilot.security.redaction import REDACTED, Redactor
from providers._http import UPSTREAM_MESSAGE_CHARS
from providers.webhook import BODY_CHARS
from tests.conftest import resp_json
from tests.fake_upstreams import FakeServer, RecordedRequest, Reply, WebhookReceiver

FRAGMENT = 8


def make_key() -> str:
    """A key with no well-known shape, so only redaction by value can catch it."""
    return "pk" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(46))


def fragments(text: str, key: str, size: int = FRAGMENT) -> list[str]:
    """Every ``size``-character piece of ``key`` found in ``text`` (a plain reference check)."""
    return sorted({key[i : i + size] for i in range(len(key) - size + 1) if key[i : i + size] in text})


def straddle(key: str, inside: int, cut: int) -> str:
    """Text in which ``key`` starts ``inside`` characters before position ``cut``."""
    return "x" * (cut - inside) + key + " and more text after it"


class EchoingOpenAI(FakeServer):
    """An OpenAI-compatible server refusing every call with a message that repeats the key sent.

    ``layout`` is ``(form, inside)``: ``json`` puts the text in ``error.message``, ``text`` sends
    it as a plain body; the key starts ``inside`` characters before the 500-character cut.
    """

    layout: tuple[str, int] = ("json", 20)

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply:
        key = (request.header("Authorization") or "").removeprefix("Bearer ")
        form, inside = self.layout
        message = straddle(key, inside, UPSTREAM_MESSAGE_CHARS)
        if form == "json":
            return Reply(401, json={"error": {"message": message, "type": "invalid_request_error"}})
        return Reply(401, body=message)


@pytest.fixture
def echoing() -> Iterator[EchoingOpenAI]:
    with EchoingOpenAI() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


def stored_rows(dsn: str, user: str) -> str:
    """Everything stored for ``user`` in execution_logs and plan_runs, as one text (read as superuser)."""
    with psycopg2.connect(dsn) as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT error, input::text, output::text FROM execution_logs WHERE user_id = %s", (user,))
        logs = cur.fetchall()
        cur.execute("SELECT error, step_results::text FROM plan_runs WHERE user_id = %s", (user,))
        runs = cur.fetchall()
    conn.close()
    assert logs, "nothing was logged"
    return json.dumps([logs, runs], default=str)


def answers(client: FlaskClient, user: str, run: dict[str, Any] | None = None) -> str:
    seen = [client.get(f"/api/logs?user_id={user}").json]
    if run is not None:
        seen.append(client.get(f"/api/runs/{run['id']}?user_id={user}").json)
        seen.append(client.get(f"/api/plans/{run['plan_id']}/runs?user_id={user}").json)
    return json.dumps(seen)


def run_plan(client: FlaskClient, user: str, step: dict[str, Any]) -> dict[str, Any]:
    plan = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [step]})
    assert plan.status_code == 201, plan.json
    response = client.post(f"/api/plans/{resp_json(plan)['id']}/run?wait=true", json={"user_id": user})
    assert response.status_code == 200, response.json
    return resp_json(response)


INSIDE = [8, 20, 30, 40]  # key characters before the cut (the key has 48)


@pytest.mark.parametrize("form", ["json", "text"])
@pytest.mark.parametrize("inside", INSIDE)
def test_openai_error_text_cut_at_500_leaks_no_fragment(
    client: FlaskClient, user: str, session_db: str, echoing: EchoingOpenAI, form: str, inside: int
) -> None:
    key = make_key()
    echoing.layout = (form, inside)
    stored = client.post(
        "/api/provider-credentials/openai",
        json={"user_id": user, "credentials": {"api_key": key, "base_url": echoing.url + "/v1"}},
    )
    assert stored.status_code == 200
    step = {"provider": "openai", "action": "chat_completion", "params": {"prompt": "hi"}}
    answer = resp_json(client.post("/api/execute-step", json={"user_id": user, "step": step}))
    assert answer["error"]["code"] == "invalid_credentials", answer
    assert REDACTED in answer["error"]["message"]
    checked = resp_json(client.post(f"/api/provider-credentials/openai/test?user_id={user}"))
    run = run_plan(client, user, step)
    assert run["status"] == "error"
    for where, text in {
        "execute-step": json.dumps(answer),
        "credential test": json.dumps(checked),
        "run answer": json.dumps(run),
        "later answers": answers(client, user, run),
        "stored rows": stored_rows(session_db, user),
    }.items():
        assert fragments(text, key) == [], where


def store_webhook_secret(client: FlaskClient, user: str, key: str) -> None:
    response = client.post(
        "/api/provider-credentials/webhook", json={"user_id": user, "credentials": {"hmac_secret": key}}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("status", "cut"),
    [(200, BODY_CHARS), (500, UPSTREAM_MESSAGE_CHARS)],
    ids=["body-cap", "error-message"],
)
@pytest.mark.parametrize("inside", INSIDE)
def test_webhook_reply_cut_leaks_no_fragment(
    client: FlaskClient, user: str, session_db: str, receiver: WebhookReceiver, status: int, cut: int, inside: int
) -> None:
    key = make_key()
    store_webhook_secret(client, user, key)
    receiver.script(*[Reply(status, body=straddle(key, inside, cut))] * 2)
    step = {"provider": "webhook", "action": "request", "params": {"url": receiver.url + "/hook", "method": "GET"}}
    step["retry"] = {"max_attempts": 1}
    answer = resp_json(client.post("/api/execute-step", json={"user_id": user, "step": step}))
    assert answer["success"] is (status < 400), answer
    run = run_plan(client, user, step)
    for where, text in {
        "execute-step": json.dumps(answer),
        "run answer": json.dumps(run),
        "later answers": answers(client, user, run),
        "stored rows": stored_rows(session_db, user),
    }.items():
        assert fragments(text, key) == [], where


@pytest.mark.parametrize("shift", [0, 17])
def test_logged_output_cut_leaks_no_fragment(
    client: FlaskClient, user: str, session_db: str, receiver: WebhookReceiver, shift: int
) -> None:
    # Copies of the key back to back around MAX_LOGGED_CHARS, so the engine's preview of the
    # logged output would end inside one of them if it were cut before redaction; enough of them
    # that the output is still over the cap once each copy is replaced by [REDACTED].
    key = make_key()
    store_webhook_secret(client, user, key)
    body = "y" * (MAX_LOGGED_CHARS - 1_000 + shift) + key * 150
    assert len(body) < BODY_CHARS
    receiver.script(Reply(200, body=body))
    step = {"provider": "webhook", "action": "request", "params": {"url": receiver.url + "/hook", "method": "GET"}}
    answer = resp_json(client.post("/api/execute-step", json={"user_id": user, "step": step}))
    assert answer["success"] is True
    [row] = resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]
    assert row["output"]["truncated"] is True
    for where, text in {
        "execute-step": json.dumps(answer),
        "logs": json.dumps(row),
        "stored rows": stored_rows(session_db, user),
    }.items():
        assert fragments(text, key) == [], where


# --- the redactor itself ----------------------------------------------------------------------


def test_cut_redacts_before_truncating_and_scrubs_the_edge() -> None:
    key = make_key()
    redactor = Redactor([key])
    for inside in range(1, len(key)):
        text = straddle(key, inside, 100)
        cut = redactor.cut(text, 100)
        assert len(cut) <= 100 + len(REDACTED)
        assert fragments(cut, key, 6) == [], inside
    assert redactor.cut("short " + key, 100) == "short " + REDACTED


def test_fragments_of_a_secret_at_either_end_of_a_string_are_redacted() -> None:
    key = make_key()
    redactor = Redactor([key])
    assert redactor.text("error: " + key[:12]) == "error: " + REDACTED
    assert redactor.text(key[-12:] + " was refused") == REDACTED + " was refused"
    assert redactor.text("error: " + key[:5]) == "error: " + key[:5]  # too short to mean anything
    assert redactor.text("a " + key[10:30] + " b") == "a " + key[10:30] + " b"  # not at a cut
    assert redactor.value({"m": [key[:20]]}) == {"m": [REDACTED]}


def test_a_cut_key_shape_is_redacted_at_the_end() -> None:
    redactor = Redactor()
    assert redactor.text("Incorrect API key provided: sk-proj-abc") == "Incorrect API key provided: " + REDACTED
    assert redactor.text("ask-me") == "ask-me"
