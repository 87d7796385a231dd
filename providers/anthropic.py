"""Anthropic's Messages API (``POST {base}/v1/messages``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from provider_registry import ActionSpec, CredentialSpec, ExecutionContext, Provider, ProviderResult
from providers._http import base_url, exchange, json_body, key_accepted
from providers._openai_compat import build_messages, chat_schema, model_credentials

if TYPE_CHECKING:
    from pilot.security.outbound import OutboundResponse

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024


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
                extra={"max_tokens": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_TOKENS}},
            ),
        )
    }
    credential_types: ClassVar[dict[str, CredentialSpec]] = model_credentials("Anthropic", default_base_url)

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        if action != "messages":
            return self.unknown_action(action)
        api_key = credentials.get("api_key")
        if not api_key:
            return ProviderResult.fail("missing_credentials", "no Anthropic api_key is stored")
        model = params.get("model") or self.default_model
        payload: dict[str, Any] = {
            "model": model,
            "max_tokens": params.get("max_tokens", DEFAULT_MAX_TOKENS),
            "messages": build_messages(params, system_inline=False),
        }
        if params.get("system"):
            payload["system"] = params["system"]
        if "temperature" in params:
            payload["temperature"] = params["temperature"]
        url = self._base(credentials, context) + "/v1/messages"
        # http_failure maps 529 "overloaded" like any 5xx: retryable.
        return exchange(
            context,
            "POST",
            url,
            "Anthropic",
            lambda reply: self._parse(reply, model),
            headers=self._headers(api_key),
            json=payload,
        )

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
