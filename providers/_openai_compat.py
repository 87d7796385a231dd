"""The OpenAI chat-completions wire protocol, and the chat params schema the model providers share.

``OpenAICompatProvider`` is the whole of the ``openai`` and ``groq`` providers, which differ
only in name, default endpoint and default model. The HTTP plumbing lives in ``_http.py``.
This module starts with ``_`` so the registry does not treat it as a provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from provider_registry import ActionSpec, CredentialSpec, ExecutionContext, Provider, ProviderResult
from providers._http import base_url, exchange, json_body, key_accepted

if TYPE_CHECKING:
    from pilot.security.outbound import OutboundResponse


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
            chat_schema(default_model=default_model, temperature_max=2, roles=OPENAI_ROLES),
        )
    }
