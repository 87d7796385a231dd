"""Anthropic's Messages API (``POST {base}/v1/messages``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from pilot.errors import PilotError
from provider_registry import ActionSpec, CredentialSpec, ExecutionContext, Provider, ProviderResult, StreamItem
from providers._http import base_url, exchange, json_body, key_accepted
from providers._openai_compat import build_messages, chat_schema, model_credentials
from providers._stream import SSEEvent, failed_after, open_stream, sse_events, stream_failure

if TYPE_CHECKING:
    from collections.abc import Generator

    from pilot.security.outbound import OutboundResponse

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
TOOLS: dict[str, Any] = {
    "type": "array",
    "description": "tools the model may call: [{name, description?, input_schema}]; a tool_use block's input "
    "appears in data.content",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}, "input_schema": {"type": "object"}},
        "required": ["name", "input_schema"],
    },
    "minItems": 1,
}
TOOL_CHOICE: dict[str, Any] = {
    "type": "object",
    "description": "{type: auto}, {type: any} or {type: tool, name}",
    "properties": {"type": {"enum": ["auto", "any", "tool", "none"]}, "name": {"type": "string"}},
    "required": ["type"],
}


class AnthropicProvider(Provider):
    """``messages``: one Messages API call; ``system`` goes in the top-level ``system`` field."""

    name = "anthropic"
    description = "Anthropic Claude via the Messages API"
    default_base_url = "https://api.anthropic.com"
    default_model = "claude-3-5-haiku-latest"
    actions: ClassVar[dict[str, ActionSpec]] = {
        "messages": ActionSpec(
            f"Create a message: `prompt` or `messages` (max_tokens defaults to {DEFAULT_MAX_TOKENS}); "
            "data has text, content and stop_reason",
            chat_schema(
                default_model=default_model,
                temperature_max=1,
                roles=["user", "assistant"],  # the system prompt is the top-level `system` param
                extra={
                    "max_tokens": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_TOKENS},
                    "tools": TOOLS,
                    "tool_choice": TOOL_CHOICE,
                },
            ),
        )
    }
    credential_types: ClassVar[dict[str, CredentialSpec]] = model_credentials("Anthropic", default_base_url)

    streaming_actions: ClassVar[frozenset[str]] = frozenset({"messages"})

    def _request(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> tuple[str, dict[str, str], dict[str, Any]] | ProviderResult:
        """``(url, headers, payload)`` of the call, or the failure that stops it before any is made."""
        if action != "messages":
            return self.unknown_action(action)
        api_key = credentials.get("api_key")
        if not api_key:
            return ProviderResult.fail("missing_credentials", "no Anthropic api_key is stored")
        payload: dict[str, Any] = {
            "model": params.get("model") or self.default_model,
            "max_tokens": params.get("max_tokens", DEFAULT_MAX_TOKENS),
            "messages": build_messages(params, system_inline=False),
        }
        for key in ("system", "temperature", "tools", "tool_choice"):
            if params.get(key) is not None:
                payload[key] = params[key]
        return self._base(credentials, context) + "/v1/messages", self._headers(api_key), payload

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        request = self._request(action, params, credentials, context)
        if isinstance(request, ProviderResult):
            return request
        url, headers, payload = request
        model = payload["model"]
        # http_failure maps 529 "overloaded" like any 5xx: retryable.
        return exchange(
            context, "POST", url, "Anthropic", lambda reply: self._parse(reply, model), headers=headers, json=payload
        )

    def stream(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> Generator[StreamItem, None, None]:
        """``stream: true``: text deltas as the message events bring them, then the assembled message."""
        request = self._request(action, params, credentials, context)
        if isinstance(request, ProviderResult):
            yield request
            return
        url, headers, payload = request
        stream, failure, started = open_stream(
            context, url, "Anthropic", headers=headers, payload={**payload, "stream": True}
        )
        if stream is None:
            yield failure or ProviderResult.fail("upstream_error", "Anthropic did not answer")
            return
        message = MessageStream(payload["model"], context)
        try:
            for event in sse_events(stream.chunks()):
                yield message.take(event)
                if message.done:
                    break
        except (PilotError, ValueError) as exc:
            yield failed_after(stream_failure(exc, "Anthropic", message.text), started)
            return
        finally:
            stream.close()
        yield failed_after(message.result(stream.status), started)

    def billed_model(self, action: str, params: dict[str, Any]) -> str | None:
        """``messages`` is billed per token for its ``model`` (the provider's default when unset)."""
        return str(params.get("model") or self.default_model) if action == "messages" else None

    def _parse(self, response: OutboundResponse, model: str) -> ProviderResult:
        body, failure = json_body(response, "Anthropic")
        if failure is not None:
            return failure
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, list):
            return ProviderResult.fail(
                "invalid_response", "Anthropic reply has no content list", http_status=response.status
            )
        text = "".join(
            block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"
        )
        usage = body.get("usage") or {}
        return ProviderResult.ok(
            {"text": text, "content": content, "stop_reason": body.get("stop_reason")},
            http_status=response.status,
            model=body.get("model") or model,
            usage={key: usage.get(key) for key in ("input_tokens", "output_tokens")},
        )

    def test_credentials(self, credentials: dict[str, str], context: ExecutionContext) -> ProviderResult:
        """``GET {base}/v1/models``: success means the key is accepted."""
        api_key = credentials.get("api_key")
        if not api_key:
            return ProviderResult.fail("missing_credentials", "no Anthropic api_key is given")
        url = self._base(credentials, context) + "/v1/models"
        return exchange(context, "GET", url, "Anthropic", key_accepted, headers=self._headers(api_key))

    def _base(self, credentials: dict[str, str], context: ExecutionContext) -> str:
        return base_url(self.name, self.default_base_url, credentials, context)

    @staticmethod
    def _headers(api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": API_VERSION, "Accept": "application/json"}


class MessageStream:
    """The state of one streamed message: its content blocks so far, usage and stop reason.

    Events (Anthropic's "Streaming Messages"): ``message_start`` (model, input usage),
    ``content_block_start``/``_delta``/``_stop`` (text deltas, or a tool's input as partial
    JSON), ``message_delta`` (stop reason, output usage), ``message_stop``, ``ping``, ``error``.
    """

    def __init__(self, model: str, context: ExecutionContext) -> None:
        self.model, self.context = model, context
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial_json: dict[int, str] = {}
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.text = ""
        self.done = False

    def take(self, event: SSEEvent | None) -> str:
        """The text this event adds ("" for none); ``done`` after ``message_stop``. Raises for an error event."""
        if event is None:
            return ""
        data = event.json()
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "error":
            error = data.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else error
            raise PilotError(self.context.redactor.cut(str(message), 500), code="upstream_error")
        if kind == "message_start":
            start = data.get("message") or {}
            self.model = start.get("model") or self.model
            self.usage.update(start.get("usage") or {})
        elif kind == "content_block_start":
            self.blocks[int(data.get("index", len(self.blocks)))] = dict(data.get("content_block") or {})
        elif kind == "content_block_delta":
            return self._delta(int(data.get("index", 0)), data.get("delta") or {})
        elif kind == "content_block_stop":
            self._finish_block(int(data.get("index", 0)))
        elif kind == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True
        return ""

    def _delta(self, index: int, delta: dict[str, Any]) -> str:
        block = self.blocks.setdefault(index, {"type": "text", "text": ""})
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            block["text"] = block.get("text", "") + delta["text"]
            self.text += delta["text"]
            return str(delta["text"])
        if delta.get("type") == "input_json_delta":
            self.partial_json[index] = self.partial_json.get(index, "") + str(delta.get("partial_json", ""))
        return ""

    def _finish_block(self, index: int) -> None:
        block = self.blocks.get(index)
        if block is not None and block.get("type") == "tool_use" and index in self.partial_json:
            block["input"] = json.loads(self.partial_json.pop(index) or "{}")

    def result(self, status: int) -> ProviderResult:
        """The answer as ``_parse`` would give it for the same message; a failure when it was cut short."""
        if not self.done:
            failure = ProviderResult.fail("incomplete_response", "Anthropic stream ended before message_stop")
            failure.data = {"text": self.text} if self.text else None
            return failure
        content = [self.blocks[index] for index in sorted(self.blocks)]
        return ProviderResult.ok(
            {"text": self.text, "content": content, "stop_reason": self.stop_reason},
            http_status=status,
            model=self.model,
            usage={key: self.usage.get(key) for key in ("input_tokens", "output_tokens")},
        )
