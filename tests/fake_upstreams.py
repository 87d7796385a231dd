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

Streaming: a model request with ``"stream": true`` is answered (for SUCCESS) in the vendor's
Server-Sent Events wire format, with the shapes of the vendors' documentation: OpenAI's
``chat.completion.chunk`` lines (``usage`` in a last chunk with empty ``choices`` when
``stream_options.include_usage`` is set) ending in ``data: [DONE]``; Anthropic's
``message_start``, ``content_block_start``/``_delta``/``_stop``, ``ping``, ``message_delta``,
``message_stop`` events. A ``StreamReply`` scripts the pieces, their pacing and a cut-off;
``stream_cancelled`` is set when the client closed the connection before the stream ended.
``connections`` counts accepted TCP connections (requests on a kept-alive connection share one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import deque
from collections.abc import Iterator
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
class StreamReply:
    """A streamed answer: ``pieces`` of text, ``gap`` seconds apart after ``first_delay`` (cut short on close).

    ``complete=False`` ends the stream without its closing events (an upstream that broke off).
    """

    pieces: list[str]
    gap: float = 0.0
    first_delay: float = 0.0
    complete: bool = True


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
        self._script: deque[str | Reply | StreamReply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self.connections = 0
        self.stream_cancelled = threading.Event()
        accept = self._server.get_request

        def counted_accept() -> Any:
            accepted = accept()
            with self._lock:
                self.connections += 1
            return accepted

        self._server.get_request = counted_accept  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()

    def script(self, *behaviours: str | Reply | StreamReply) -> Self:
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

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply | StreamReply:
        """The reply a behaviour name stands for; subclasses add their API's bodies."""
        raise NotImplementedError(behaviour)

    def stream_events(self, reply: StreamReply, request: RecordedRequest) -> Iterator[tuple[bytes, str | None]]:
        """``(encoded event, piece or None)`` in order; the piece marks events that carry text (paced)."""
        raise NotImplementedError

    def _paced(self, reply: StreamReply, events: Iterator[tuple[bytes, str | None]]) -> Iterator[bytes]:
        finished = False
        try:
            if reply.first_delay:
                self._closing.wait(reply.first_delay)
            first = True
            for data, piece in events:
                if piece is not None and not first and reply.gap:
                    self._closing.wait(reply.gap)
                first = first and piece is None
                yield data
            finished = True
        finally:
            if not finished and not self._closing.is_set():
                self.stream_cancelled.set()  # the server closed us: the client's connection is gone

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
        reply = behaviour if isinstance(behaviour, Reply | StreamReply) else self.reply_for(behaviour, recorded)
        if isinstance(reply, StreamReply):
            events = self._paced(reply, self.stream_events(reply, recorded))
            return Response(events, 200, content_type="text/event-stream")(environ, start_response)
        if reply.delay:
            self._closing.wait(reply.delay)
        if reply.json is not None:
            response = Response(json.dumps(reply.json), reply.status, content_type="application/json")
        else:
            response = Response(reply.body, reply.status, content_type="text/plain")
        for key, value in reply.headers.items():
            response.headers[key] = value
        return response(environ, start_response)


def sse(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event as the vendors send it: ``event:`` (Anthropic) and one ``data:`` line."""
    text = data if isinstance(data, str) else json.dumps(data)
    return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()


def _wants_stream(request: RecordedRequest) -> bool:
    payload = request.json if request.body else None
    return isinstance(payload, dict) and payload.get("stream") is True


class _ModelFake(FakeServer):
    """Shared behaviours of the model APIs; subclasses give the success and error bodies."""

    reply_text: str | None = None

    def success(self, request: RecordedRequest) -> Reply | StreamReply:
        if _wants_stream(request):
            text = self.reply_text if self.reply_text is not None else "echo: " + _last_user_text(request.json)
            return StreamReply([text[i : i + 4] for i in range(0, len(text), 4)])
        return self.complete(request)

    def complete(self, request: RecordedRequest) -> Reply:
        raise NotImplementedError

    def error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
        raise NotImplementedError

    def api_key(self, request: RecordedRequest) -> str:
        raise NotImplementedError

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply | StreamReply:
        if behaviour == SUCCESS:
            return self.success(request)
        if behaviour == SLOW:
            reply = self.success(request)
            if isinstance(reply, StreamReply):
                reply.first_delay = SLOW_SECONDS
            else:
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

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def api_key(self, request: RecordedRequest) -> str:
        return (request.header("Authorization") or "").removeprefix("Bearer ")

    def success(self, request: RecordedRequest) -> Reply | StreamReply:
        if request.path.endswith("/models"):
            return Reply(json={"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        if not request.path.endswith("/chat/completions"):
            return self.error(404, "not_found", f"no route {request.path}")
        return super().success(request)

    def complete(self, request: RecordedRequest) -> Reply:
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

    def stream_events(self, reply: StreamReply, request: RecordedRequest) -> Iterator[tuple[bytes, str | None]]:
        payload = request.json
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1694268190}
        base |= {"model": payload.get("model"), "system_fingerprint": "fp_fake"}
        usage = (payload.get("stream_options") or {}).get("include_usage") is True
        extra = {"usage": None} if usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse({**base, "choices": [choice], **extra})

        yield chunk({"role": "assistant", "content": "", "refusal": None}), None
        for piece in reply.pieces:
            yield chunk({"content": piece}), piece
        if not reply.complete:
            return
        yield chunk({}, "stop"), None
        if usage:
            counts = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}  # as ``complete`` says
            yield sse({**base, "choices": [], "usage": counts}), None
        yield sse("[DONE]"), None


class FakeAnthropic(_ModelFake):
    """Anthropic's ``POST /v1/messages`` and ``GET /v1/models``; ``base_url`` has no ``/v1``.

    Text comes in two content blocks (the first half, then the rest), streamed or not.
    """

    @property
    def base_url(self) -> str:
        return self.url

    def api_key(self, request: RecordedRequest) -> str:
        return request.header("x-api-key") or ""

    def success(self, request: RecordedRequest) -> Reply | StreamReply:
        if request.path == "/v1/models":
            return Reply(json={"data": [{"id": "claude-3-5-haiku-latest", "type": "model"}], "has_more": False})
        if request.path != "/v1/messages":
            return self.error(404, "not_found_error", f"no route {request.path}")
        return super().success(request)

    def complete(self, request: RecordedRequest) -> Reply:
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

    @staticmethod
    def _block_change(index: int, block: int) -> Iterator[tuple[bytes, str | None]]:
        if index >= 0:
            yield sse({"type": "content_block_stop", "index": index}, "content_block_stop"), None
        start = {"type": "content_block_start", "index": block, "content_block": {"type": "text", "text": ""}}
        yield sse(start, "content_block_start"), None
        if block == 0:
            yield sse({"type": "ping"}, "ping"), None

    def stream_events(self, reply: StreamReply, request: RecordedRequest) -> Iterator[tuple[bytes, str | None]]:
        """Two text blocks, as ``complete`` gives them: pieces before the text's middle in block 0."""
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": request.json.get("model"),
        }
        message |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 1}}
        yield sse({"type": "message_start", "message": message}, "message_start"), None
        half = len("".join(reply.pieces)) // 2
        position, index = 0, -1
        for piece in reply.pieces:
            split = min(max(half - position, 0), len(piece))
            for block, part in ((0, piece[:split]), (1, piece[split:])):
                if not part:
                    continue
                if block != index:
                    yield from self._block_change(index, block)
                    index = block
                delta = {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": part}}
                yield sse(delta, "content_block_delta"), part
            position += len(piece)
        if not reply.complete:
            return
        yield sse({"type": "content_block_stop", "index": index}, "content_block_stop"), None
        end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        yield sse({**end, "usage": {"output_tokens": 5}}, "message_delta"), None
        yield sse({"type": "message_stop"}, "message_stop"), None


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
