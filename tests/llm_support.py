"""Helpers shared by the cost, budget, idempotency and breaker tests: apps wired to loopback
vendor fakes, an operator price table, and a fake that holds requests until released."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from pilot.application import PilotApp
from tests.conftest import make_app
from tests.fake_upstreams import FakeOpenAI, RecordedRequest, Reply, StreamReply

API_KEY = "sk-test-0123456789abcdefghijklmn"
# Priced by the operator's table below: the fake reports 7 input and 3 output tokens per call.
TEST_MODEL = "pilot-test-model"
FAKE_INPUT_TOKENS, FAKE_OUTPUT_TOKENS = 7, 3
PER_MILLION = Decimal(1000)  # USD per million tokens of TEST_MODEL, either kind
STEP_COST = (FAKE_INPUT_TOKENS + FAKE_OUTPUT_TOKENS) * PER_MILLION / Decimal(1_000_000)  # 0.01 USD


def write_price_table(directory: Path, models: dict[str, tuple[str, str]], provider: str = "openai") -> Path:
    """An operator PRICE_TABLE pricing ``models`` ({name: (input, output)} USD per million tokens)."""
    path = directory / "prices.json"
    table = {
        "providers": {
            provider: {
                "models": {
                    name: {"input": rates[0], "output": rates[1], "checked": "2026-12-01"}
                    for name, rates in models.items()
                }
            }
        }
    }
    path.write_text(json.dumps(table))
    return path


def llm_app(dsn: str, tmp_path: Path, fernet_key: str, fake: FakeOpenAI, **overrides: Any) -> PilotApp:
    """An app whose server-wide OpenAI endpoint is ``fake`` and whose price table prices TEST_MODEL."""
    prices = write_price_table(tmp_path, {TEST_MODEL: (str(PER_MILLION), str(PER_MILLION))})
    config: dict[str, Any] = {"openai_base_url": fake.base_url, "price_table": prices, **overrides}
    return make_app(dsn, tmp_path, (fernet_key,), **config)


def store_key(client: FlaskClient, user: str, provider: str = "openai") -> None:
    response = client.post(
        f"/api/provider-credentials/{provider}", json={"user_id": user, "credentials": {"api_key": API_KEY}}
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def chat(model: str = TEST_MODEL, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    """An OpenAI chat step (no retries unless ``extra`` says so)."""
    return {"provider": "openai", "action": "chat_completion", "params": {"prompt": prompt, "model": model}, **extra}


def execute(client: FlaskClient, user: str, step: dict[str, Any], **headers: str) -> Any:
    return client.post("/api/execute-step", json={"user_id": user, "step": step}, headers=headers)


def completions(fake: FakeOpenAI) -> list[RecordedRequest]:
    """The chat-completion requests ``fake`` received."""
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


class GatedOpenAI(FakeOpenAI):
    """A fake OpenAI that holds every completion until ``release()``; ``held`` counts those waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.held = 0
        self._count_lock = threading.Lock()

    def success(self, request: RecordedRequest) -> Reply | StreamReply:
        if request.path.endswith("/chat/completions"):
            with self._count_lock:
                self.held += 1
            self.gate.wait(30)  # bounded: a test that forgets to release still ends
        return super().success(request)

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        super().close()


def poll(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy or ``timeout`` s pass; its last value."""
    import time

    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
