"""Groq chat completions, which speak the OpenAI wire protocol."""

from __future__ import annotations

from typing import ClassVar

from provider_registry import ActionSpec, CredentialSpec
from providers._openai_compat import OpenAICompatProvider, chat_action, model_credentials


class GroqProvider(OpenAICompatProvider):
    """``chat_completion`` against ``POST {base}/chat/completions`` (default https://api.groq.com/openai/v1)."""

    name = "groq"
    description = "Groq chat completions (OpenAI-compatible API)"
    vendor = "Groq"
    default_base_url = "https://api.groq.com/openai/v1"
    default_model = "llama-3.1-8b-instant"
    actions: ClassVar[dict[str, ActionSpec]] = chat_action(default_model)
    credential_types: ClassVar[dict[str, CredentialSpec]] = model_credentials(vendor, default_base_url)
