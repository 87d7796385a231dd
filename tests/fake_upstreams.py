"""Loopback fakes of the services providers call: OpenAI, Anthropic and a webhook receiver.

Each fake is a real werkzeug HTTP server on ``127.0.0.1`` (a free port) in a daemon thread,
so providers are tested through the real ``OutboundClient`` and ``requests``. Every request is
recorded in ``.requests``; replies are scripted in order with ``.script(...)`` and fall back
to a success once the script is used up::

    with FakeOpenAI() as fake:
        fake.script(RATE_LIMITED, SUCCESS)   # 429 with Retry-After: 1, then a completion
        ... base_url=fake.base_url ...

Behaviours: SUCCESS, UNAUTHORIZED (401), RATE_LIMITED (429, Retry-After: 1), SERVER_ERROR
(500), OVERLOADED (529), SLOW (success after SLOW_SECONDS, for client timeouts), MALFORMED
(200 with a body that is not JSON), ECHO_KEY (401 whose message repeats the api key, for
redaction tests). A ``Reply`` scripts any other response.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

SUCCESS = "success"
UNAUTHORIZED = "unauthorized"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
OVERLOADED = "overloaded"
SLOW = "slow"
MALFORMED = "malformed"
ECHO_KEY = "echo_key"
SLOW_SECONDS = 1.5


@dataclass
class Reply:
    """A scripted response; ``delay`` seconds pass before it is sent (cut short on close)."""

    status: int = 200
    json: Any = None
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class RecordedRequest:
    """What the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        return next((value for key, value in self.headers.items() if key.lower() == name.lower()), None)


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        """Keep test output clean: no access log lines."""


class FakeServer:
    """A scripted HTTP server on 127.0.0.1; subclasses turn behaviour names into replies."""

    default: str | Reply = SUCCESS

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._script: deque[str | Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()

    def script(self, *behaviours: str | Reply) -> Self:
        """Queue the next replies, in order."""
        with self._lock:
            self._script.extend(behaviours)
        return self

    def close(self) -> None:
        """Stop serving; slow replies still pending are cut short."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply:
        """The reply a behaviour name stands for; subclasses add their API's bodies."""
        raise NotImplementedError(behaviour)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query={key: request.args.getlist(key) for key in request.args},
            headers=dict(request.headers.items()),
            body=request.get_data(),
        )
        with self._lock:
            self.requests.append(recorded)
            behaviour = self._script.popleft() if self._script else self.default
        reply = behaviour if isinstance(behaviour, Reply) else self.reply_for(behaviour, recorded)
        if reply.delay:
            self._closing.wait(reply.delay)
        if reply.json is not None:
            response = Response(json.dumps(reply.json), reply.status, content_type="application/json")
        else:
            response = Response(reply.body, reply.status, content_type="text/plain")
        for key, value in reply.headers.items():
            response.headers[key] = value
        return response(environ, start_response)


class _ModelFake(FakeServer):
    """Shared behaviours of the model APIs; subclasses give the success and error bodies."""

    def success(self, request: RecordedRequest) -> Reply:
        raise NotImplementedError

    def error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
        raise NotImplementedError

    def api_key(self, request: RecordedRequest) -> str:
        raise NotImplementedError

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply:
        if behaviour == SUCCESS:
            return self.success(request)
        if behaviour == SLOW:
            reply = self.success(request)
            reply.delay = SLOW_SECONDS
            return reply
        if behaviour == UNAUTHORIZED:
            return self.error(401, "authentication_error", "Incorrect API key provided")
        if behaviour == ECHO_KEY:
            return self.error(401, "authentication_error", f"Incorrect API key provided: {self.api_key(request)}")
        if behaviour == RATE_LIMITED:
            return self.error(429, "rate_limit_error", "Rate limit reached", {"Retry-After": "1"})
        if behaviour == SERVER_ERROR:
            return self.error(500, "api_error", "The server had an error while processing your request")
        if behaviour == OVERLOADED:
            return self.error(529, "overloaded_error", "Overloaded")
        if behaviour == MALFORMED:
            return Reply(200, body=b'{"choices": [', headers={"Content-Type": "application/json"})
        raise ValueError(f"unknown behaviour {behaviour!r}")


def _last_user_text(payload: Any) -> str:
    messages = payload.get("messages") if isinstance(payload, dict) else None
    for message in reversed(messages or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


class FakeOpenAI(_ModelFake):
    """OpenAI's ``POST /v1/chat/completions`` and ``GET /v1/models``; use ``base_url``."""

    reply_text: str | None = None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def api_key(self, request: RecordedRequest) -> str:
        return (request.header("Authorization") or "").removeprefix("Bearer ")

    def success(self, request: RecordedRequest) -> Reply:
        if request.path.endswith("/models"):
            return Reply(json={"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        if not request.path.endswith("/chat/completions"):
            return self.error(404, "not_found", f"no route {request.path}")
        payload = request.json
        text = self.reply_text if self.reply_text is not None else "echo: " + _last_user_text(payload)
        return Reply(
            json={
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": payload.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        )

    def error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, json={"error": {"message": message, "type": kind, "code": None}}, headers=headers or {})


class FakeAnthropic(_ModelFake):
    """Anthropic's ``POST /v1/messages`` and ``GET /v1/models``; ``base_url`` has no ``/v1``."""

    reply_text: str | None = None

    @property
    def base_url(self) -> str:
        return self.url

    def api_key(self, request: RecordedRequest) -> str:
        return request.header("x-api-key") or ""

    def success(self, request: RecordedRequest) -> Reply:
        if request.path == "/v1/models":
            return Reply(json={"data": [{"id": "claude-3-5-haiku-latest", "type": "model"}], "has_more": False})
        if request.path != "/v1/messages":
            return self.error(404, "not_found_error", f"no route {request.path}")
        payload = request.json
        text = self.reply_text if self.reply_text is not None else "echo: " + _last_user_text(payload)
        half = len(text) // 2
        return Reply(
            json={
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": payload.get("model"),
                "content": [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 11, "output_tokens": 5},
            }
        )

    def error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, json={"type": "error", "error": {"type": kind, "message": message}}, headers=headers or {})


class WebhookReceiver(FakeServer):
    """Accepts any request and answers ``{"received": true}``; script ``Reply``s or SLOW/SERVER_ERROR/…"""

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply:
        replies = {
            SUCCESS: Reply(json={"received": True, "method": request.method}),
            SLOW: Reply(json={"received": True}, delay=SLOW_SECONDS),
            SERVER_ERROR: Reply(500, body="receiver failed"),
            RATE_LIMITED: Reply(429, body="slow down", headers={"Retry-After": "1"}),
            MALFORMED: Reply(200, body=b"{not json", headers={"Content-Type": "application/json"}),
        }
        return replies[behaviour]


def verify_signature(request: RecordedRequest, secret: str) -> bool:
    """What a receiver does: recompute HMAC-SHA256 over ``timestamp.body`` and compare in constant time."""
    timestamp = request.header("X-Pilot-Timestamp")
    signature = request.header("X-Pilot-Signature")
    if not timestamp or not signature:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, f"sha256={expected}")
