"""Provider tests: one contract suite run against every registered provider, then each provider
against loopback fakes of its upstream (real HTTP through ``OutboundClient``; nothing patched)."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fake_upstreams import (  # noqa: E402
    ECHO_KEY,
    MALFORMED,
    OVERLOADED,
    RATE_LIMITED,
    SERVER_ERROR,
    SLOW,
    UNAUTHORIZED,
    FakeAnthropic,
    FakeOpenAI,
    Reply,
    WebhookReceiver,
    verify_signature,
)

from pilot.errors import ValidationError  # noqa: E402
from pilot.security.outbound import OutboundClient, OutboundPolicy  # noqa: E402
from pilot.security.redaction import Redactor  # noqa: E402
from provider_registry import ExecutionContext, Provider, ProviderResult, UnknownActionError  # noqa: E402
from providers import registry  # noqa: E402

BUILTIN = {"openai", "groq", "anthropic", "webhook", "logic"}
FAST_TIMEOUT = 0.3  # the fakes' SLOW replies take 1.5 s

# One valid params example per action: the contract test fails when a provider adds an
# action without one, so every action is at least validated and executed once.
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("openai", "chat_completion"): {"prompt": "Hello"},
    ("groq", "chat_completion"): {"messages": [{"role": "user", "content": "Hello"}], "temperature": 0.2},
    ("anthropic", "messages"): {"prompt": "Hello", "max_tokens": 10},
    ("webhook", "request"): {"url": "http://127.0.0.1:9/hook", "json": {"a": 1}},
    ("logic", "transform"): {"template": {"x": [1, 2]}},
    ("logic", "condition"): {"expression": "a", "data": {"a": 1}},
    ("logic", "extract"): {"expression": "a.b", "data": {"a": {"b": 2}}},
}


def make_context(allow: list[str] | None = None, **overrides: Any) -> ExecutionContext:
    policy = OutboundPolicy.from_entries(["127.0.0.1/32"] if allow is None else allow)
    overrides.setdefault("timeout_s", 5.0)
    return ExecutionContext(user_id="user_1", http=OutboundClient(policy), **overrides)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_failure(result: ProviderResult, code: str, *, retryable: bool) -> dict[str, Any]:
    assert not result.success, result
    assert result.error is not None and result.error["code"] == code, result.error
    assert result.error["retryable"] is retryable, result.error
    json.dumps(result.to_dict())
    return result.error


@pytest.fixture
def context() -> ExecutionContext:
    return make_context()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


# --- the contract, run against every registered provider -----------------------------------


@pytest.fixture(params=registry.names())
def provider(request: pytest.FixtureRequest) -> Provider:
    return registry.get(request.param)


def test_every_builtin_provider_is_registered() -> None:
    assert set(registry.names()) >= BUILTIN


def test_describe_shape(provider: Provider) -> None:
    described = provider.describe()
    assert set(described) == {"name", "description", "actions", "credential_types"}
    assert described["name"] == provider.name and described["description"]
    assert described == json.loads(json.dumps(described))
    assert described["actions"], "a provider needs at least one action"
    for spec in described["actions"].values():
        assert spec["description"] and set(spec) == {"description", "params_schema"}
    for spec in described["credential_types"].values():
        assert spec["description"] and isinstance(spec["required"], bool) and isinstance(spec["secret"], bool)
    assert set(provider.required_credentials()) <= set(described["credential_types"])


def test_action_schemas_are_valid_and_have_an_example(provider: Provider) -> None:
    for action, spec in provider.actions.items():
        Draft202012Validator.check_schema(spec.params_schema)
        assert spec.params_schema.get("type") == "object"
        assert (provider.name, action) in EXAMPLES, f"add an example for {provider.name}.{action}"
        registry.validate_params(provider.name, action, EXAMPLES[(provider.name, action)])
        with pytest.raises(ValidationError):
            registry.validate_params(provider.name, action, {"no_such_param": 1, **EXAMPLES[(provider.name, action)]})


def test_unknown_action_is_a_failure_not_an_exception(provider: Provider, context: ExecutionContext) -> None:
    error = assert_failure(provider.execute("no_such_action", {}, {}, context), "unknown_action", retryable=False)
    assert "no_such_action" in error["message"]
    with pytest.raises(UnknownActionError, match="no_such_action"):
        registry.action(provider.name, "no_such_action")


def test_missing_credentials_fail_without_network(provider: Provider) -> None:
    context = make_context(allow=[])  # nothing reachable: a network attempt would be ssrf_blocked
    for action in provider.actions:
        result = provider.execute(action, EXAMPLES[(provider.name, action)], {}, context)
        assert isinstance(result, ProviderResult)
        json.dumps(result.to_dict())
        if provider.required_credentials():
            assert_failure(result, "missing_credentials", retryable=False)
    checked = provider.test_credentials({}, context)
    assert isinstance(checked, ProviderResult)
    if provider.required_credentials():
        assert_failure(checked, "missing_credentials", retryable=False)


# --- openai and groq: the OpenAI wire protocol ----------------------------------------------


@pytest.fixture(params=["openai", "groq"])
def chat(request: pytest.FixtureRequest) -> Provider:
    return registry.get(request.param)


def chat_call(chat: Provider, fake: FakeOpenAI, params: dict[str, Any] | None = None, **ctx: Any) -> ProviderResult:
    credentials = {"api_key": "sk-test-123", "base_url": fake.base_url}
    return chat.execute("chat_completion", params or {"prompt": "Hello"}, credentials, make_context(**ctx))


def test_chat_success(chat: Provider, fake_openai: FakeOpenAI) -> None:
    params = {"prompt": "Hello", "system": "Be brief", "temperature": 0.5, "max_tokens": 20}
    result = chat_call(chat, fake_openai, params)
    assert result.success and result.error is None
    assert result.data == {
        "text": "echo: Hello",
        "message": {"role": "assistant", "content": "echo: Hello"},
        "finish_reason": "stop",
    }
    default_model = chat.actions["chat_completion"].params_schema["properties"]["model"]["default"]
    assert result.metadata == {
        "http_status": 200,
        "model": default_model,
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    assert result.latency_ms > 0
    [sent] = fake_openai.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.header("Authorization") == "Bearer sk-test-123"
    assert sent.json == {
        "model": default_model,
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}],
        "temperature": 0.5,
        "max_tokens": 20,
    }


def test_chat_passes_messages_and_model(chat: Provider, fake_openai: FakeOpenAI) -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    result = chat_call(chat, fake_openai, {"messages": messages, "model": "my-model"})
    assert result.success and result.data["text"] == "echo: c" and result.metadata["model"] == "my-model"
    assert fake_openai.requests[0].json == {"model": "my-model", "messages": messages}


def test_chat_base_url_from_server_default_and_credential_override(chat: Provider, fake_openai: FakeOpenAI) -> None:
    context = make_context(base_urls={chat.name: fake_openai.base_url + "/"})
    assert chat.execute("chat_completion", {"prompt": "x"}, {"api_key": "k"}, context).success
    unused = f"http://127.0.0.1:{closed_port()}/v1"
    context = make_context(base_urls={chat.name: unused})
    credentials = {"api_key": "k", "base_url": fake_openai.base_url}
    assert chat.execute("chat_completion", {"prompt": "y"}, credentials, context).success
    assert [r.path for r in fake_openai.requests] == ["/v1/chat/completions"] * 2


def test_chat_unauthorized(chat: Provider, fake_openai: FakeOpenAI) -> None:
    error = assert_failure(chat_call(chat, fake_openai.script(UNAUTHORIZED)), "invalid_credentials", retryable=False)
    assert "Incorrect API key provided" in error["message"]
    assert "Bearer" not in error["message"]


def test_chat_rate_limited_then_success(chat: Provider, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(RATE_LIMITED)
    first = chat_call(chat, fake_openai)
    assert_failure(first, "rate_limited", retryable=True)
    assert first.metadata == {"http_status": 429, "retry_after": 1.0}
    assert chat_call(chat, fake_openai).success


def test_chat_server_error_is_retryable(chat: Provider, fake_openai: FakeOpenAI) -> None:
    result = chat_call(chat, fake_openai.script(SERVER_ERROR))
    assert_failure(result, "upstream_error", retryable=True)
    assert result.metadata["http_status"] == 500


def test_chat_other_4xx_is_rejected_with_upstream_message(chat: Provider, fake_openai: FakeOpenAI) -> None:
    reply = Reply(400, json={"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}})
    error = assert_failure(chat_call(chat, fake_openai.script(reply)), "upstream_rejected", retryable=False)
    assert "max_tokens is too large" in error["message"]


def test_chat_timeout(chat: Provider, fake_openai: FakeOpenAI) -> None:
    assert_failure(chat_call(chat, fake_openai.script(SLOW), timeout_s=FAST_TIMEOUT), "timeout", retryable=True)


def test_chat_malformed_json(chat: Provider, fake_openai: FakeOpenAI) -> None:
    assert_failure(chat_call(chat, fake_openai.script(MALFORMED)), "invalid_response", retryable=False)
    wrong_shape = Reply(json={"choices": []})
    assert_failure(chat_call(chat, fake_openai.script(wrong_shape)), "invalid_response", retryable=False)


def test_chat_error_echoing_the_key_keeps_upstream_text(chat: Provider, fake_openai: FakeOpenAI) -> None:
    """The upstream text is kept, shortened with the context's redactor: this one knows no secret,
    so only the key-shaped end of the message is masked (redacting by value is the engine's job)."""
    error = assert_failure(chat_call(chat, fake_openai.script(ECHO_KEY)), "invalid_credentials", retryable=False)
    assert error["message"].endswith("Incorrect API key provided: [REDACTED]")
    secret = make_context(redactor=Redactor(["sk-test-123"]))
    fake_openai.script(ECHO_KEY)
    error = assert_failure(
        chat.execute(
            "chat_completion", {"prompt": "Hi"}, {"api_key": "sk-test-123", "base_url": fake_openai.base_url}, secret
        ),
        "invalid_credentials",
        retryable=False,
    )
    assert error["message"].endswith("Incorrect API key provided: [REDACTED]")


def test_chat_connection_refused(chat: Provider) -> None:
    credentials = {"api_key": "k", "base_url": f"http://127.0.0.1:{closed_port()}/v1"}
    result = chat.execute("chat_completion", {"prompt": "x"}, credentials, make_context())
    assert_failure(result, "connection_error", retryable=True)


def test_chat_base_url_outside_allow_list_is_blocked(chat: Provider) -> None:
    credentials = {"api_key": "k", "base_url": "http://127.0.0.2:9/v1"}
    result = chat.execute("chat_completion", {"prompt": "x"}, credentials, make_context())
    assert_failure(result, "ssrf_blocked", retryable=False)


def test_chat_test_credentials(chat: Provider, fake_openai: FakeOpenAI) -> None:
    credentials = {"api_key": "sk-good", "base_url": fake_openai.base_url}
    result = chat.test_credentials(credentials, make_context())
    assert result.success and result.data == {"valid": True}
    fake_openai.script(UNAUTHORIZED)
    assert_failure(chat.test_credentials(credentials, make_context()), "invalid_credentials", retryable=False)
    assert [(r.method, r.path) for r in fake_openai.requests] == [("GET", "/v1/models")] * 2
    assert fake_openai.requests[0].header("Authorization") == "Bearer sk-good"


# --- anthropic ------------------------------------------------------------------------------


def anthropic_call(fake: FakeAnthropic, params: dict[str, Any] | None = None, **ctx: Any) -> ProviderResult:
    credentials = {"api_key": "sk-ant-test", "base_url": fake.base_url}
    return registry.get("anthropic").execute(
        "messages", params or {"prompt": "Hello"}, credentials, make_context(**ctx)
    )


def test_anthropic_success(fake_anthropic: FakeAnthropic) -> None:
    result = anthropic_call(fake_anthropic, {"prompt": "Hello", "system": "Be brief", "temperature": 0.3})
    assert result.success
    assert result.data["text"] == "echo: Hello" and len(result.data["content"]) == 2
    assert result.data["stop_reason"] == "end_turn"
    assert result.metadata == {
        "http_status": 200,
        "model": "claude-3-5-haiku-latest",
        "usage": {"input_tokens": 11, "output_tokens": 5},
    }
    [sent] = fake_anthropic.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.header("x-api-key") == "sk-ant-test" and sent.header("anthropic-version") == "2023-06-01"
    assert sent.header("Authorization") is None
    assert sent.json == {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello"}],
        "system": "Be brief",
        "temperature": 0.3,
    }


@pytest.mark.parametrize(
    ("behaviour", "code", "retryable"),
    [
        (UNAUTHORIZED, "invalid_credentials", False),
        (RATE_LIMITED, "rate_limited", True),
        (SERVER_ERROR, "upstream_error", True),
        (OVERLOADED, "upstream_error", True),
        (MALFORMED, "invalid_response", False),
        (ECHO_KEY, "invalid_credentials", False),
    ],
)
def test_anthropic_errors(fake_anthropic: FakeAnthropic, behaviour: str, code: str, retryable: bool) -> None:
    result = anthropic_call(fake_anthropic.script(behaviour))
    error = assert_failure(result, code, retryable=retryable)
    if behaviour == RATE_LIMITED:
        assert result.metadata["retry_after"] == 1.0
    if behaviour == OVERLOADED:
        assert result.metadata["http_status"] == 529 and "Overloaded" in error["message"]


def test_anthropic_messages_have_no_system_role() -> None:
    with pytest.raises(ValidationError, match=r"^params\.messages\[0\]\.role: 'system' is not one of"):
        registry.validate_params("anthropic", "messages", {"messages": [{"role": "system", "content": "x"}]})


def test_anthropic_timeout_and_credentials_check(fake_anthropic: FakeAnthropic) -> None:
    assert_failure(anthropic_call(fake_anthropic.script(SLOW), timeout_s=FAST_TIMEOUT), "timeout", retryable=True)
    checked = registry.get("anthropic").test_credentials(
        {"api_key": "k", "base_url": fake_anthropic.base_url}, make_context()
    )
    assert checked.success and fake_anthropic.requests[-1].path == "/v1/models"


# --- webhook ---------------------------------------------------------------------------------


def hook(params: dict[str, Any], credentials: dict[str, str] | None = None, **ctx: Any) -> ProviderResult:
    return registry.get("webhook").execute("request", params, credentials or {}, make_context(**ctx))


def test_webhook_post_json_signed(receiver: WebhookReceiver) -> None:
    params = {
        "url": receiver.url + "/hook",
        "json": {"event": "done", "n": 1},
        "headers": {"X-Pilot-Signature": "forged"},
    }
    result = hook(params, {"hmac_secret": "s3cret"})
    assert result.success and result.metadata["http_status"] == 200
    assert result.data["status"] == 200 and result.data["json"] == {"received": True, "method": "POST"}
    assert json.loads(result.data["body"]) == result.data["json"]
    assert result.data["headers"]["content-type"] == "application/json"  # names lower-cased
    [sent] = receiver.requests
    assert (sent.method, sent.path, sent.body) == ("POST", "/hook", b'{"event":"done","n":1}')
    assert sent.header("Content-Type") == "application/json"
    assert verify_signature(sent, "s3cret") and not verify_signature(sent, "other")
    assert sent.header("X-Pilot-Signature") != "forged"


def test_webhook_unsigned_get_with_query(receiver: WebhookReceiver) -> None:
    result = hook({"url": receiver.url + "/q", "method": "GET", "query": {"a": "1", "b": [2, 3]}})
    assert result.success
    [sent] = receiver.requests
    assert (sent.method, sent.query, sent.body) == ("GET", {"a": ["1"], "b": ["2", "3"]}, b"")
    assert sent.header("X-Pilot-Signature") is None


def test_webhook_raw_body_signed(receiver: WebhookReceiver) -> None:
    params = {"url": receiver.url, "method": "PUT", "body": "plain é", "headers": {"Content-Type": "text/plain"}}
    assert hook(params, {"hmac_secret": "k"}).success
    [sent] = receiver.requests
    assert sent.body == "plain é".encode() and sent.header("Content-Type") == "text/plain"
    assert verify_signature(sent, "k")


@pytest.mark.parametrize(
    ("reply", "code", "retryable"),
    [
        (Reply(404, body="no such hook"), "upstream_rejected", False),
        (Reply(500, body="receiver failed"), "upstream_error", True),
        (Reply(429, body="slow down", headers={"Retry-After": "1"}), "rate_limited", True),
    ],
)
def test_webhook_error_status(receiver: WebhookReceiver, reply: Reply, code: str, retryable: bool) -> None:
    receiver.script(reply)
    result = hook({"url": receiver.url, "json": {}})
    error = assert_failure(result, code, retryable=retryable)
    assert result.metadata["http_status"] == reply.status and result.data["status"] == reply.status
    assert f"HTTP {reply.status}" in error["message"]
    if reply.status == 429:
        assert result.metadata["retry_after"] == 1.0


def test_webhook_non_json_and_large_bodies(receiver: WebhookReceiver) -> None:
    receiver.script(MALFORMED)
    result = hook({"url": receiver.url})
    assert result.success and result.data["json"] is None and result.data["body"] == "{not json"
    receiver.script(Reply(body="x" * 70_000))
    result = hook({"url": receiver.url})
    assert result.success and len(result.data["body"]) == 64 * 1024 and result.metadata["body_truncated"] is True


@pytest.mark.parametrize(("method", "retryable"), [("POST", False), ("PATCH", False), ("GET", True), ("PUT", True)])
def test_webhook_timeout_marks_outcome_unknown(receiver: WebhookReceiver, method: str, retryable: bool) -> None:
    receiver.script(SLOW)
    result = hook({"url": receiver.url, "method": method, "timeout": FAST_TIMEOUT})
    assert_failure(result, "timeout", retryable=retryable)
    assert result.metadata["outcome_unknown"] is True
    assert len(receiver.requests) == 1


def test_webhook_connection_refused_is_retryable() -> None:
    result = hook({"url": f"http://127.0.0.1:{closed_port()}/hook", "json": {}})
    assert_failure(result, "connection_error", retryable=True)
    assert "outcome_unknown" not in result.metadata


def test_webhook_to_forbidden_address_is_blocked(receiver: WebhookReceiver) -> None:
    assert_failure(hook({"url": "http://127.0.0.2:9/", "json": {}}), "ssrf_blocked", retryable=False)
    # Loopback is refused unless allow-listed: the receiver sees no connection at all.
    result = hook({"url": receiver.url, "json": {}}, allow=[])
    assert_failure(result, "ssrf_blocked", retryable=False)
    assert receiver.requests == []


def test_webhook_redirect_to_metadata_address_is_blocked(receiver: WebhookReceiver) -> None:
    receiver.script(Reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
    assert_failure(hook({"url": receiver.url, "method": "GET"}), "ssrf_blocked", retryable=False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"url": "http://x", "json": {}, "body": "b"}, "params: cannot have all of 'json', 'body'"),
        ({"url": "http://x", "timeout": 121}, "params.timeout: 121 is greater than the maximum of 120"),
        ({"url": "http://x", "method": "HEAD"}, "params.method: 'HEAD' is not one of"),
        ({"url": "http://x", "headers": {"X-N": 1}}, "params.headers[\"X-N\"]: 1 is not of type 'string'"),
        ({"json": {}}, "params: 'url' is a required property"),
    ],
)
def test_webhook_params_validation(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        registry.validate_params("webhook", "request", params)
    assert caught.value.message.startswith(message)


# --- logic -------------------------------------------------------------------------------------


def test_logic_actions(context: ExecutionContext) -> None:
    logic = registry.get("logic")
    assert logic.execute("transform", {"template": "Test 3"}, {}, context).data == "Test 3"
    assert logic.execute("transform", {"template": {"a": [1]}}, {}, context).data == {"a": [1]}
    run = make_context(run_context={"steps": {"s": {"data": {"text": "hi", "items": []}}}})
    assert logic.execute("condition", {"expression": "steps.s.data.text"}, {}, run).data == {"result": True}
    assert logic.execute("condition", {"expression": "steps.s.data.items"}, {}, run).data == {"result": False}
    assert logic.execute("condition", {"expression": "n", "data": {"n": 0}}, {}, run).data == {"result": True}
    assert logic.execute("extract", {"expression": "steps.s.data.text"}, {}, run).data == "hi"
    assert logic.execute("extract", {"expression": "a.b", "data": {"a": {"b": [1, 2]}}}, {}, run).data == [1, 2]
    missing = logic.execute("extract", {"expression": "nothing.here"}, {}, run)
    assert missing.success and missing.data is None
    assert_failure(
        logic.execute("condition", {"expression": "a[", "data": {}}, {}, run), "expression_error", retryable=False
    )
    assert logic.test_credentials({}, context).success


class HangUpServer:
    """A loopback TCP server that reads a request, then closes the connection without answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.received: list[bytes] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(1):  # a test makes exactly one request
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(65536))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize(("method", "retryable"), [("POST", False), ("PATCH", False), ("PUT", True), ("DELETE", True)])
def test_webhook_dropped_after_sending_is_not_retried_blindly(method: str, retryable: bool) -> None:
    server = HangUpServer()
    try:
        result = hook({"url": server.url, "method": method, "json": {"n": 1}})
    finally:
        server.close()
    assert_failure(result, "connection_error", retryable=retryable)
    assert result.metadata["outcome_unknown"] is True
    assert server.received and server.received[0].startswith(method.encode())
