"""Shared HTTP plumbing for the network providers, and the OpenAI chat-completions wire protocol.

``send`` makes one call through ``context.http`` and turns transport failures into
``ProviderResult.fail``; ``http_failure`` maps an upstream error status to Pilot's codes.
``OpenAICompatProvider`` is the whole of the ``openai`` and ``groq`` providers, which differ
only in name, default endpoint and default model. This module starts with ``_`` so the
registry does not treat it as a provider.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pilot.errors import PilotError
from provider_registry import ActionSpec, CredentialSpec, ExecutionContext, Provider, ProviderResult

if TYPE_CHECKING:
    from pilot.security.outbound import OutboundResponse
    from pilot.security.redaction import Redactor

UPSTREAM_MESSAGE_CHARS = 500


def message_schema(roles: list[str]) -> dict[str, Any]:
    """One chat message: a role and its content (text, or the vendor's list of content parts)."""
    return {
        "type": "object",
        "properties": {"role": {"enum": roles}, "content": {"type": ["string", "array", "null"]}},
        "required": ["role", "content"],
    }


OPENAI_ROLES = ["system", "developer", "user", "assistant", "tool"]


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


def base_url(provider: str, default: str, credentials: dict[str, str], context: ExecutionContext) -> str:
    """The user's ``base_url`` credential, else the server's default for ``provider``, else ``default``."""
    return (credentials.get("base_url") or context.base_urls.get(provider) or default).rstrip("/")


def upstream_message(response: OutboundResponse, redactor: Redactor) -> str:
    """The error text an upstream put in its body (OpenAI and Anthropic shapes), redacted, then shortened.

    Upstreams echo the key they were sent: cutting first would leave a piece of it that
    redaction by value no longer recognises, so ``redactor.cut`` redacts before it cuts.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or body.get("message") or body.get("detail")
    if not isinstance(message, str) or not message:
        # Decoding a window (not the whole body) bounds the work; a key cut by the window is
        # a piece at the end of the text, which the redactor also removes.
        message = response.content[: UPSTREAM_MESSAGE_CHARS * 8].decode("utf-8", "replace")
    return redactor.cut(message.strip(), UPSTREAM_MESSAGE_CHARS).strip()


def http_failure(response: OutboundResponse, label: str, redactor: Redactor) -> ProviderResult:
    """Map an upstream status >= 400 to a failure: credentials, rate limit, server or request error."""
    status = response.status
    detail = upstream_message(response, redactor)
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return ProviderResult.fail(
            "invalid_credentials", f"{label} refused the credentials ({status}){suffix}", http_status=status
        )
    if status == 429:
        meta: dict[str, Any] = {"http_status": status}
        retry_after = response.retry_after()
        if retry_after is not None:
            meta["retry_after"] = retry_after
        return ProviderResult.fail("rate_limited", f"{label} rate limit reached{suffix}", retryable=True, **meta)
    if status >= 500 or status == 408:
        return ProviderResult.fail(
            "upstream_error", f"{label} failed with HTTP {status}{suffix}", retryable=True, http_status=status
        )
    return ProviderResult.fail(
        "upstream_rejected", f"{label} rejected the request ({status}){suffix}", http_status=status
    )


def send(
    context: ExecutionContext, method: str, url: str, **kwargs: Any
) -> tuple[OutboundResponse | ProviderResult, float]:
    """One call through ``context.http``: ``(response, ms)``, or ``(failure, ms)`` when it raised.

    Outbound errors (``ssrf_blocked``, ``timeout``, ``connection_error``, ``invalid_url``, …)
    keep their code and retryability; one raised after the request may have reached the
    server is marked ``metadata["outcome_unknown"]``.
    """
    kwargs.setdefault("timeout", context.timeout_s)
    started = time.perf_counter()
    try:
        response = context.http.request(method, url, **kwargs)
    except PilotError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        failure = ProviderResult.fail(exc.code, exc.message, retryable=bool(getattr(exc, "retryable", False)))
        if getattr(exc, "request_sent", False):
            failure.metadata["outcome_unknown"] = True
        failure.latency_ms = elapsed
        return failure, elapsed
    return response, (time.perf_counter() - started) * 1000


def exchange(
    context: ExecutionContext,
    method: str,
    url: str,
    vendor: str,
    parse: Callable[[OutboundResponse], ProviderResult],
    **kwargs: Any,
) -> ProviderResult:
    """One model API call: transport failures and HTTP errors mapped, otherwise ``parse`` the reply."""
    reply, elapsed = send(context, method, url, **kwargs)
    if isinstance(reply, ProviderResult):
        return reply
    result = http_failure(reply, vendor, context.redactor) if reply.status >= 400 else parse(reply)
    result.latency_ms = elapsed
    return result


def key_accepted(response: OutboundResponse) -> ProviderResult:
    """The result of a credentials check whose request the upstream accepted."""
    return ProviderResult.ok({"valid": True}, http_status=response.status)


def json_body(response: OutboundResponse, label: str) -> tuple[Any, ProviderResult | None]:
    """The parsed body, or an ``invalid_response`` failure when it is not JSON."""
    try:
        return response.json(), None
    except ValueError:
        return None, ProviderResult.fail(
            "invalid_response", f"{label} returned a body that is not JSON", http_status=response.status
        )


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

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        if action != "chat_completion":
            return self.unknown_action(action)
        api_key = credentials.get("api_key")
        if not api_key:
            return ProviderResult.fail("missing_credentials", f"no {self.vendor} api_key is stored")
        model = params.get("model") or self.default_model
        payload: dict[str, Any] = {"model": model, "messages": build_messages(params, system_inline=True)}
        for key in ("temperature", "max_tokens"):
            if key in params:
                payload[key] = params[key]
        url = base_url(self.name, self.default_base_url, credentials, context) + "/chat/completions"
        return exchange(
            context,
            "POST",
            url,
            self.vendor,
            lambda reply: self._parse(reply, model),
            headers=self._headers(api_key),
            json=payload,
        )

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
            chat_schema(default_model=default_model, temperature_max=2, roles=OPENAI_ROLES),
        )
    }
