"""Redaction by value: secrets are replaced before anything is stored, logged or returned.

Upstream errors often echo the key that was sent ("Incorrect API key provided:
sk-..."), so the engine builds a ``Redactor`` from the decrypted credential
values of each call, and also masks strings shaped like well-known key formats.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 6  # shorter values would mangle ordinary text and protect nothing
KEY_SHAPES = re.compile(
    "|".join(
        [
            r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic
            r"gsk_[A-Za-z0-9]{20,}",  # Groq
            r"xox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack
            r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
            r"AKIA[0-9A-Z]{16}",  # AWS access key id
            r"AIza[0-9A-Za-z_\-]{35}",  # Google API key
            r"(?i:bearer)\s+[A-Za-z0-9._~+/\-]{16,}=*",  # Authorization headers
        ]
    )
)


class Redactor:
    """Replaces the given secret values, then key-shaped strings, anywhere in a JSON-like value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret that contains another is replaced whole.
        self._pattern = (
            re.compile("|".join(re.escape(s) for s in sorted(values, key=len, reverse=True))) if values else None
        )

    def text(self, value: str) -> str:
        if self._pattern is not None:
            value = self._pattern.sub(REDACTED, value)
        return KEY_SHAPES.sub(REDACTED, value)

    def value(self, value: Any) -> Any:
        """A copy of ``value`` with every string (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
