"""The OpenAI chat-completions wire protocol, and the chat params schema the model providers share.

``OpenAICompatProvider`` is the whole of the ``openai`` and ``groq`` providers, which differ
only in name, default endpoint and default model. The HTTP plumbing lives in ``_http.py``.
This module starts with ``_`` so the registry does not treat it as a provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pilot.errors import PilotError
from provider_registry import ActionSpec, CredentialSpec, ExecutionContext, Provider, ProviderResult, StreamItem
from providers._http import base_url, exchange, json_body, key_accepted
from providers._stream import SSEEvent, failed_after, open_stream, sse_events, stream_failure

if TYPE_CHECKING:
    from collections.abc import Generator

    from pilot.security.outbound import OutboundResponse


def message_schema(roles: list[str]) -> dict[str, Any]:
    """One chat message: a role and its content (text, or the vendor's list of content parts)."""
    return {
        "type": "object",
        "properties": {"role": {"enum": roles}, "content": {"type": ["string", "array", "null"]}},
        "required": ["role", "content"],
    }


OPENAI_ROLES = ["system", "developer", "user", "assistant", "tool"]


RESPONSE_FORMAT: dict[str, Any] = {
    "type": "object",
    "description": "structured output: {type: text}, {type: json_object} or {type: json_schema, json_schema: "
    "{name, schema, strict?}}, sent as the vendor's response_format",
    "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}},
    "required": ["type"],
}


def chat_schema(
    *, default_model: str, temperature_max: float, roles: list[str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Params schema shared by the chat actions: ``prompt`` xor ``messages``, model, sampling."""
    properties: dict[str, Any] = {
        "prompt": {"type": "string", "minLength": 1, "description": "a single user message"},
        "messages": {"type": "array", "items": message_schema(roles), "minItems": 1},
        "model": {"type": "string", "minLength": 1, "default": default_model},
        "system": {"type": "string", "description": "system prompt, sent before the messages"},
        "temperature": {"type": "number", "minimum": 0, "maximum": temperature_max},
        "max_tokens": {"type": "integer", "minimum": 1},
        **(extra or {}),
    }
    return {
        "type": "object",
        "properties": properties,
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
        "additionalProperties": False,
    }


def model_credentials(vendor: str, default_base_url: str) -> dict[str, CredentialSpec]:
    """The credential fields every model provider takes."""
    return {
        "api_key": CredentialSpec(f"{vendor} API key", required=True),
        "base_url": CredentialSpec(
            f"endpoint override for a compatible server (default {default_base_url})", required=False, secret=False
        ),
    }


def build_messages(params: dict[str, Any], *, system_inline: bool) -> list[dict[str, Any]]:
    """``messages`` as given, or ``prompt`` as one user message; ``system`` first when inline."""
    messages = (
        [dict(m) for m in params["messages"]]
        if "messages" in params
        else [{"role": "user", "content": params["prompt"]}]
    )
    if system_inline and params.get("system"):
        messages.insert(0, {"role": "system", "content": params["system"]})
    return messages


class OpenAICompatProvider(Provider):
    """A provider speaking OpenAI's ``POST /chat/completions``; subclasses set the defaults below."""

    vendor: ClassVar[str] = "OpenAI"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    default_model: ClassVar[str] = "gpt-4o-mini"
    streaming_actions: ClassVar[frozenset[str]] = frozenset({"chat_completion"})

    def _request(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> tuple[str, dict[str, str], dict[str, Any]] | ProviderResult:
        """``(url, headers, payload)`` of the call, or the failure that stops it before any is made."""
        if action != "chat_completion":
            return self.unknown_action(action)
        api_key = credentials.get("api_key")
        if not api_key:
            return ProviderResult.fail("missing_credentials", f"no {self.vendor} api_key is stored")
        payload: dict[str, Any] = {
            "model": params.get("model") or self.default_model,
            "messages": build_messages(params, system_inline=True),
        }
        for key in ("temperature", "max_tokens", "response_format"):
            if key in params:
                payload[key] = params[key]
        url = base_url(self.name, self.default_base_url, credentials, context) + "/chat/completions"
        return url, self._headers(api_key), payload

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        request = self._request(action, params, credentials, context)
        if isinstance(request, ProviderResult):
            return request
        url, headers, payload = request
        model = payload["model"]
        return exchange(
            context, "POST", url, self.vendor, lambda reply: self._parse(reply, model), headers=headers, json=payload
        )

    def stream(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> Generator[StreamItem, None, None]:
        """``stream: true`` with ``stream_options.include_usage``: content deltas, then the assembled answer."""
        request = self._request(action, params, credentials, context)
        if isinstance(request, ProviderResult):
            yield request
            return
        url, headers, payload = request
        payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        stream, failure, started = open_stream(context, url, self.vendor, headers=headers, payload=payload)
        if stream is None:
            yield failure or ProviderResult.fail("upstream_error", f"{self.vendor} did not answer")
            return
        answer = ChatStream(self.vendor, payload["model"], context)
        try:
            for event in sse_events(stream.chunks()):
                yield answer.take(event)
                if answer.done:
                    break
        except (PilotError, ValueError) as exc:
            yield failed_after(stream_failure(exc, self.vendor, answer.text), started)
            return
        finally:
            stream.close()
        yield failed_after(answer.result(stream.status), started)

    def billed_model(self, action: str, params: dict[str, Any]) -> str | None:
        """``chat_completion`` is billed per token for its ``model`` (the provider's default when unset)."""
        return str(params.get("model") or self.default_model) if action == "chat_completion" else None

    def _parse(self, response: OutboundResponse, model: str) -> ProviderResult:
        body, failure = json_body(response, self.vendor)
        if failure is not None:
            return failure
        try:
            choice = body["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            return ProviderResult.fail(
                "invalid_response", f"{self.vendor} reply has no choices[0].message", http_status=response.status
            )
        usage = body.get("usage") or {}
        return ProviderResult.ok(
            {"text": text, "message": message, "finish_reason": choice.get("finish_reason")},
            http_status=response.status,
            model=body.get("model") or model,
            usage={key: usage.get(key) for key in ("prompt_tokens", "completion_tokens", "total_tokens")},
        )

    def test_credentials(self, credentials: dict[str, str], context: ExecutionContext) -> ProviderResult:
        """``GET {base}/models``: success means the key is accepted."""
        api_key = credentials.get("api_key")
        if not api_key:
            return ProviderResult.fail("missing_credentials", f"no {self.vendor} api_key is given")
        url = base_url(self.name, self.default_base_url, credentials, context) + "/models"
        return exchange(context, "GET", url, self.vendor, key_accepted, headers=self._headers(api_key))

    @staticmethod
    def _headers(api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}


def chat_action(default_model: str) -> dict[str, ActionSpec]:
    """The ``chat_completion`` action of an OpenAI-compatible provider."""
    return {
        "chat_completion": ActionSpec(
            "Chat completion: `prompt` or `messages`; data has text, message and finish_reason",
            chat_schema(
                default_model=default_model,
                temperature_max=2,
                roles=OPENAI_ROLES,
                extra={"response_format": RESPONSE_FORMAT},
            ),
        )
    }


class ChatStream:
    """The state of one streamed chat completion: the text so far, and what the final chunks say."""

    def __init__(self, vendor: str, model: str, context: ExecutionContext) -> None:
        self.vendor, self.model, self.context = vendor, model, context
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.done = False

    def take(self, event: SSEEvent | None) -> str:
        """The text this event adds ("" for none); ``done`` once ``[DONE]`` arrives. Raises for an error event."""
        if event is None:
            return ""
        if event.data.strip() == "[DONE]":
            self.done = True
            return ""
        chunk = event.json()
        if not isinstance(chunk, dict):
            raise ValueError("a chunk is not a JSON object")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise PilotError(self.context.redactor.cut(str(message), 500), code="upstream_error")
        self.model = chunk.get("model") or self.model
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")  # Groq puts it in x_groq
        if isinstance(usage, dict):
            self.usage = usage
        piece = ""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                piece += content
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.text += piece
        return piece

    def result(self, status: int) -> ProviderResult:
        """The answer as ``_parse`` would give it for the same completion; a failure when it was cut short."""
        if not self.done and self.finish_reason is None:
            failure = ProviderResult.fail("incomplete_response", f"{self.vendor} stream ended before the answer did")
            failure.data = {"text": self.text} if self.text else None
            return failure
        message = {"role": "assistant", "content": self.text}
        return ProviderResult.ok(
            {"text": self.text, "message": message, "finish_reason": self.finish_reason},
            http_status=status,
            model=self.model,
            usage={key: self.usage.get(key) for key in ("prompt_tokens", "completion_tokens", "total_tokens")},
        )
