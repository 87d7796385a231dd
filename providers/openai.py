"""OpenAI chat completions; any OpenAI-compatible server through the ``base_url`` credential."""

from __future__ import annotations

from typing import ClassVar

from provider_registry import ActionSpec, CredentialSpec
from providers._openai_compat import OpenAICompatProvider, chat_action, model_credentials


class OpenAIProvider(OpenAICompatProvider):
    """``chat_completion`` against ``POST {base}/chat/completions`` (default https://api.openai.com/v1)."""

    name = "openai"
    description = "OpenAI chat completions (or any OpenAI-compatible server via base_url)"
    vendor = "OpenAI"
    default_base_url = "https://api.openai.com/v1"
    default_model = "gpt-4o-mini"
    actions: ClassVar[dict[str, ActionSpec]] = chat_action(default_model)
    credential_types: ClassVar[dict[str, CredentialSpec]] = model_credentials(vendor, default_base_url)
