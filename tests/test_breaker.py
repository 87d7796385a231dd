"""Circuit breakers per provider and upstream host (issue 11 item 5): the state machine against a
plain reference, then the engine against loopback vendors: it opens, fails fast, probes and closes."""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.errors import PilotError
from pilot.security.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreakers,
    CircuitOpen,
    Outcome,
    Ticket,
    error_outcome,
    host_key,
    status_outcome,
)
from pilot.security.outbound import OutboundClient, OutboundConnectionError, OutboundPolicy
from provider_registry import ProviderRegistry
from providers.logic import LogicProvider
from providers.openai import OpenAIProvider
from providers.webhook import WebhookProvider
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import SERVER_ERROR, SLOW, UNAUTHORIZED, FakeOpenAI, WebhookReceiver
from tests.llm_support import GatedOpenAI, chat, completions, execute, poll, store_key
from tests.test_metrics_endpoint import scrape, value

ONCE: dict[str, Any] = {"retry": {"max_attempts": 1}}


# --- the state machine against a plain reference ---------------------------------------------


class ReferenceCircuit:
    """The issue's rule written plainly: N consecutive upstream failures within the window open the
    circuit; open, calls are refused for the cooldown; then one probe call decides."""

    def __init__(self, failures: int, window: float, cooldown: float) -> None:
        self.n, self.window, self.cooldown = failures, window, cooldown
        self.state, self.opened, self.probe_out = CLOSED, 0.0, False
        self.failure_times: list[float] = []

    def admit(self, now: float) -> str:
        if self.state == OPEN and now - self.opened >= self.cooldown:
            self.state = HALF_OPEN
        if self.state == CLOSED:
            return "call"
        if self.state == HALF_OPEN and not self.probe_out:
            self.probe_out = True
            return "probe"
        return "refused"

    def settle(self, kind: str, outcome: Outcome, now: float) -> None:
        if kind == "probe":
            self.probe_out = False
            if outcome is Outcome.SUCCESS:
                self.state, self.failure_times = CLOSED, []
            elif outcome is Outcome.FAILURE:
                self.state, self.opened, self.failure_times = OPEN, now, []
        elif self.state == CLOSED:
            if outcome is Outcome.SUCCESS:
                self.failure_times = []
            elif outcome is Outcome.FAILURE:
                self.failure_times = [t for t in [*self.failure_times, now] if now - t <= self.window]
                if len(self.failure_times) >= self.n:
                    self.state, self.opened, self.failure_times = OPEN, now, []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seed", range(25))
def test_the_breaker_matches_the_reference_on_random_histories(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    failures, window, cooldown = rng.randint(1, 4), rng.choice([5.0, 20.0]), rng.choice([3.0, 10.0])
    breakers = CircuitBreakers(failures, window, cooldown, clock=clock)
    reference = ReferenceCircuit(failures, window, cooldown)
    outstanding: list[tuple[Ticket, str]] = []
    for _ in range(300):
        clock.now += rng.choice([0.0, 0.5, 1.0, 4.0, 11.0])
        if outstanding and rng.random() < 0.5:
            held, kind = outstanding.pop(rng.randrange(len(outstanding)))
            outcome = rng.choice([Outcome.SUCCESS, Outcome.FAILURE, Outcome.FAILURE, Outcome.NEUTRAL])
            breakers.settle(held, outcome)
            reference.settle(kind, outcome, clock.now)
        else:
            expected = reference.admit(clock.now)
            try:
                ticket = breakers.admit("openai", "https://api.example.com/v1/chat/completions")
            except CircuitOpen:
                assert expected == "refused"
            else:
                assert ticket is not None and expected == ("probe" if ticket.probe else "call")
                outstanding.append((ticket, expected))
        assert breakers.state("openai", "api.example.com") == reference.state


def test_opens_after_n_consecutive_failures_within_the_window_only() -> None:
    clock = Clock()
    breakers = CircuitBreakers(3, 10.0, 30.0, clock=clock)
    url = "https://api.example.com/x"

    def call(outcome: Outcome) -> None:
        breakers.settle(breakers.admit("p", url), outcome)

    call(Outcome.FAILURE)
    call(Outcome.FAILURE)
    call(Outcome.SUCCESS)  # a success (a 4xx included) breaks the run of failures
    call(Outcome.FAILURE)
    call(Outcome.FAILURE)
    call(Outcome.NEUTRAL)  # says nothing: neither counts nor resets
    clock.now += 11  # the two failures fall out of the window
    call(Outcome.FAILURE)
    call(Outcome.FAILURE)
    assert breakers.state("p", "api.example.com") == CLOSED
    call(Outcome.FAILURE)
    assert breakers.state("p", "api.example.com") == OPEN
    with pytest.raises(CircuitOpen) as refused:
        breakers.admit("p", url)
    assert refused.value.details["retry_after"] == 30.0
    assert breakers.admit("other", url) is not None  # per provider
    assert breakers.admit("p", "https://api.example.com:8443/x") is not None  # per host (and port)


def test_classification_of_outcomes() -> None:
    assert status_outcome(500) is Outcome.FAILURE and status_outcome(503) is Outcome.FAILURE
    assert status_outcome(200) is Outcome.SUCCESS and status_outcome(404) is Outcome.SUCCESS
    assert status_outcome(429) is Outcome.SUCCESS  # 4xx never count
    timeout = PilotError("late", code="timeout")
    assert error_outcome(timeout, 5.0, 30.0) is Outcome.NEUTRAL  # the step chose a short timeout
    assert error_outcome(timeout, 30.0, 30.0) is Outcome.FAILURE
    assert error_outcome(timeout, 600.0, 30.0) is Outcome.FAILURE
    refused = OutboundConnectionError("refused")
    refused.upstream_fault = True
    assert error_outcome(refused, 1.0, 30.0) is Outcome.FAILURE
    assert error_outcome(OutboundConnectionError("could not resolve host"), 30.0, 30.0) is Outcome.NEUTRAL
    assert error_outcome(PilotError("no", code="ssrf_blocked"), 30.0, 30.0) is Outcome.NEUTRAL
    assert host_key("https://API.Example.com:443/v1") == "api.example.com"
    assert host_key("http://127.0.0.1:8080/v1") == "127.0.0.1:8080" and host_key("not a url") is None


def test_the_outbound_client_tells_refused_and_reset_connections_apart() -> None:
    client = OutboundClient(OutboundPolicy.from_entries(["127.0.0.1/32"]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(OutboundConnectionError) as refused:
        client.request("GET", f"http://127.0.0.1:{closed_port}/", timeout=5)
    assert refused.value.upstream_fault is True
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def reset_once() -> None:
        conn, _ = server.accept()
        conn.recv(1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        conn.close()

    thread = threading.Thread(target=reset_once, daemon=True)
    thread.start()
    try:
        with pytest.raises(OutboundConnectionError) as reset:
            client.request("GET", f"http://127.0.0.1:{server.getsockname()[1]}/", timeout=5)
        assert reset.value.upstream_fault is True
    finally:
        thread.join(timeout=5)
        server.close()
    with pytest.raises(PilotError) as unresolvable:
        OutboundClient(OutboundPolicy.from_entries([])).request("GET", "http://host.invalid/", timeout=5)
    assert getattr(unresolvable.value, "upstream_fault", False) is False


# --- the engine against loopback vendors -----------------------------------------------------


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def breaker_app(dsn: str, tmp_path: Path, key: str, base_url: str, **overrides: Any) -> PilotApp:
    config = {"openai_base_url": base_url, "breaker_failures": 3, "breaker_cooldown_seconds": 0.5, **overrides}
    return make_app(dsn, tmp_path, (key,), **config)


@pytest.fixture
def breaking(session_db: str, tmp_path: Path, fernet_key: str, openai: FakeOpenAI) -> Iterator[PilotApp]:
    app = breaker_app(session_db, tmp_path, fernet_key, openai.base_url)
    yield app
    app.db.close()


def circuit(client: FlaskClient, host: str, provider: str = "openai") -> dict[str, Any]:
    breakers = resp_json(client.get(f"/api/providers/{provider}"))["circuit_breakers"]
    return next(entry for entry in breakers["hosts"] if entry["host"] == host)


def host_of(fake: FakeOpenAI) -> str:
    return fake.url.removeprefix("http://")


def code(result: Any) -> str | None:
    return (resp_json(result).get("error") or {}).get("code")


def test_a_breaker_opens_fails_fast_probes_and_closes(breaking: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = breaking.test_client()
    store_key(client, user)
    host = host_of(openai)
    before = scrape(client)
    assert circuit(client, host)["state"] == "closed"
    openai.script(SERVER_ERROR, SERVER_ERROR, SERVER_ERROR)
    assert [code(execute(client, user, chat(**ONCE))) for _ in range(3)] == ["upstream_error"] * 3
    assert circuit(client, host)["state"] == "open" and len(completions(openai)) == 3
    fast = resp_json(execute(client, user, chat()))  # retries would not help: circuit_open is final
    assert fast["error"]["code"] == "circuit_open" and fast["metadata"]["attempts"] == 1
    assert len(completions(openai)) == 3  # failed fast: no request
    samples = scrape(client)
    assert value(samples, "pilot_circuit_breaker_state", provider="openai", host=host) == 2
    rejected = value(samples, "pilot_circuit_breaker_rejections_total", provider="openai", host=host)
    assert rejected - value(before, "pilot_circuit_breaker_rejections_total", provider="openai", host=host) == 1
    # After the cooldown one probe decides; a failed probe opens the circuit again.
    assert poll(lambda: circuit(client, host)["retry_in_s"] == 0)
    openai.script(SERVER_ERROR)
    assert code(execute(client, user, chat(**ONCE))) == "upstream_error" and len(completions(openai)) == 4
    assert circuit(client, host)["state"] == "open"
    assert code(execute(client, user, chat())) == "circuit_open" and len(completions(openai)) == 4
    # A successful probe closes it.
    assert poll(lambda: circuit(client, host)["retry_in_s"] == 0)
    assert resp_json(execute(client, user, chat()))["success"] is True and len(completions(openai)) == 5
    assert circuit(client, host)["state"] == "closed"
    assert value(scrape(client), "pilot_circuit_breaker_state", provider="openai", host=host) == 0
    transitions = {
        state: value(
            scrape(client), "pilot_circuit_breaker_transitions_total", provider="openai", host=host, state=state
        )
        - value(before, "pilot_circuit_breaker_transitions_total", provider="openai", host=host, state=state)
        for state in ("open", "half_open", "closed")
    }
    assert transitions == {"open": 2, "half_open": 2, "closed": 1}


def test_while_the_probe_runs_other_calls_fail_fast(
    session_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    with GatedOpenAI() as gated:
        app = breaker_app(session_db, tmp_path, fernet_key, gated.base_url)
        try:
            client = app.test_client()
            store_key(client, user)
            gated.release()
            gated.script(SERVER_ERROR, SERVER_ERROR, SERVER_ERROR)
            for _ in range(3):
                execute(client, user, chat(**ONCE))
            assert circuit(client, host_of(gated))["state"] == "open"
            assert poll(lambda: circuit(client, host_of(gated))["retry_in_s"] == 0)
            gated.gate.clear()  # hold the probe at the upstream
            held_before = gated.held
            with ThreadPoolExecutor(1) as pool:
                probe = pool.submit(lambda: resp_json(execute(app.test_client(), user, chat())))
                assert poll(lambda: gated.held == held_before + 1)
                assert circuit(client, host_of(gated))["state"] == "half_open"
                assert code(execute(client, user, chat())) == "circuit_open"  # one probe at a time
                gated.release()
                assert probe.result(timeout=30)["success"] is True
            assert circuit(client, host_of(gated))["state"] == "closed"
        finally:
            app.db.close()


def test_client_errors_never_open_it(breaking: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = breaking.test_client()
    store_key(client, user)
    openai.script(*[UNAUTHORIZED] * 6)
    assert [code(execute(client, user, chat())) for _ in range(6)] == ["invalid_credentials"] * 6
    assert circuit(client, host_of(openai))["state"] == "closed" and len(completions(openai)) == 6


def test_a_steps_short_timeout_never_opens_it(breaking: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = breaking.test_client()
    store_key(client, user)
    openai.script(*[SLOW] * 4)  # 1.5 s each; the step waits 0.2 s (the provider's default is 30 s)
    assert [code(execute(client, user, chat(timeout_s=0.2, **ONCE))) for _ in range(4)] == ["timeout"] * 4
    assert circuit(client, host_of(openai))["state"] == "closed"


class QuickOpenAI(OpenAIProvider):
    """OpenAI with a 0.3 s default timeout, so that a timeout as long as the default is quick to reach."""

    default_timeout_s: ClassVar[float] = 0.3


def test_a_timeout_at_least_the_providers_default_counts(
    session_db: str, tmp_path: Path, fernet_key: str, user: str, openai: FakeOpenAI
) -> None:
    registry = ProviderRegistry()
    for provider in (QuickOpenAI, LogicProvider, WebhookProvider):
        registry.register(provider)
    app = make_app(
        session_db, tmp_path, (fernet_key,), registry=registry, openai_base_url=openai.base_url, breaker_failures=3
    )
    try:
        client = app.test_client()
        store_key(client, user)
        openai.script(*[SLOW] * 3)
        codes = [code(execute(client, user, chat(**ONCE))), code(execute(client, user, chat(timeout_s=0.5, **ONCE)))]
        codes.append(code(execute(client, user, chat(**ONCE))))
        assert codes == ["timeout"] * 3
        assert circuit(client, host_of(openai))["state"] == "open"
    finally:
        app.db.close()


def test_refused_connections_count(session_db: str, tmp_path: Path, fernet_key: str, user: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = breaker_app(session_db, tmp_path, fernet_key, f"http://127.0.0.1:{port}/v1")
    try:
        client = app.test_client()
        store_key(client, user)
        assert [code(execute(client, user, chat(**ONCE))) for _ in range(3)] == ["connection_error"] * 3
        assert code(execute(client, user, chat())) == "circuit_open"
        assert circuit(client, f"127.0.0.1:{port}")["state"] == "open"
    finally:
        app.db.close()


def test_hosts_users_named_are_counted_never_shown(
    breaking: PilotApp, user: str, other_user: str, openai: FakeOpenAI
) -> None:
    client = breaking.test_client()
    with WebhookReceiver() as receiver:
        receiver.script(SERVER_ERROR, SERVER_ERROR, SERVER_ERROR)
        hook = {"provider": "webhook", "action": "request", "params": {"url": receiver.url + "/hook"}, **ONCE}
        assert [code(execute(client, user, hook)) for _ in range(3)] == ["upstream_error"] * 3
        assert code(execute(client, other_user, hook)) == "circuit_open"  # a failing upstream fails for everyone
        assert len(receiver.requests) == 3
    described = resp_json(client.get("/api/providers/webhook"))["circuit_breakers"]
    assert described["hosts"] == [] and described["other_hosts"] == {"tracked": 1, "open": 1, "half_open": 0}
    assert receiver.url.removeprefix("http://") not in client.get("/api/providers/webhook").get_data(as_text=True)
    samples = scrape(client)
    assert value(samples, "pilot_circuit_breaker_state", provider="webhook", host="other") == 2
    assert not any(
        dict(labels).get("host", "").startswith("127.0.0.1") for name, labels in samples if "webhook" in str(labels)
    )


def test_breakers_can_be_turned_off(
    session_db: str, tmp_path: Path, fernet_key: str, user: str, openai: FakeOpenAI
) -> None:
    app = breaker_app(session_db, tmp_path, fernet_key, openai.base_url, breaker_failures=0)
    try:
        client = app.test_client()
        store_key(client, user)
        openai.script(*[SERVER_ERROR] * 5)
        assert [code(execute(client, user, chat(**ONCE))) for _ in range(5)] == ["upstream_error"] * 5
        assert resp_json(client.get("/api/providers/openai"))["circuit_breakers"]["enabled"] is False
    finally:
        app.db.close()


@pytest.mark.parametrize(
    "overrides",
    [{"breaker_failures": -1}, {"breaker_window_seconds": 0}, {"breaker_cooldown_seconds": -5}],
)
def test_bad_breaker_settings_stop_startup(overrides: dict[str, Any]) -> None:
    from pilot.errors import ConfigurationError
    from pilot.settings import load_settings

    with pytest.raises(ConfigurationError, match="BREAKER_"):
        load_settings(**overrides)
