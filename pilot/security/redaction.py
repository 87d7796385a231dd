"""Redaction by value: secrets are replaced before anything is stored, logged or returned.

Upstream errors often echo the key that was sent ("Incorrect API key provided:
sk-..."), so the engine builds a ``Redactor`` from the decrypted credential
values of each call, and also masks strings shaped like well-known key formats.

Header values whose names look secret (authorization, cookie, *key*, *token*, *secret*, …)
are replaced wherever a ``headers`` object appears (a webhook's params as logged, a reply's
headers), even when the value was written inline and is not a stored credential.

Text is redacted *before* it is cut: ``Redactor.cut`` redacts, then shortens. A piece of
a secret at either end of a string (what a cut made before redaction leaves behind) is
redacted too, as is a well-known key prefix cut short at the end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 6  # shorter values would mangle ordinary text and protect nothing
MIN_FRAGMENT_CHARS = 6  # a piece of a secret at least this long, left at a cut, is redacted too
MIN_PIECE_ANYWHERE = 8  # the same anywhere in a text (history only: a shorter piece is too likely by chance)
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
SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|passw|credential|session", re.IGNORECASE)
# What a key of a known shape looks like when a cut leaves only its beginning.
_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_KEY_PREFIXES = (
    *("sk-", "gsk_", "AKIA", "AIza"),
    *("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"),
    *("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
)


def _occurrences(haystack: str, needle: str) -> Iterable[int]:
    start = haystack.find(needle)
    while start != -1:
        yield start
        start = haystack.find(needle, start + 1)


def _prefix_at_end(text: str, secret: str, shortest: int) -> int:
    """Length of the longest proper prefix of ``secret`` (at least ``shortest``) that ends ``text``."""
    tail = text[-shortest:]
    best = 0
    if len(tail) == shortest:
        for position in _occurrences(secret, tail):  # the prefix ends where the tail occurs in the secret
            length = position + shortest
            if best < length < len(secret) and text.endswith(secret[:length]):
                best = length
    return best


def _suffix_at_start(text: str, secret: str, shortest: int) -> int:
    """Length of the longest proper suffix of ``secret`` (at least ``shortest``) that starts ``text``."""
    head = text[:shortest]
    best = 0
    if len(head) == shortest:
        for position in _occurrences(secret, head):
            length = len(secret) - position
            if best < length < len(secret) and text.startswith(secret[position:]):
                best = length
    return best


def _pieces_inside(text: str, secret: str, shortest: int) -> list[tuple[int, int]]:
    """Spans of ``text`` holding a proper prefix or suffix of ``secret`` at least ``shortest`` long, anywhere."""
    spans = []
    for start in _occurrences(text, secret[:shortest]):
        length, most = shortest, min(len(secret) - 1, len(text) - start)
        while length < most and text[start + length] == secret[length]:
            length += 1
        spans.append((start, start + length))
    for start in _occurrences(text, secret[-shortest:]):
        end, length = start + shortest, shortest
        most = min(len(secret) - 1, end)
        while length < most and text[end - length - 1] == secret[-length - 1]:
            length += 1
        spans.append((end - length, end))
    return spans


def _replace_spans(text: str, spans: list[tuple[int, int]]) -> str:
    out, position = [], 0
    for start, end in sorted(spans):
        if end <= position:
            continue
        out.append(text[position : max(start, position)])
        if start >= position:
            out.append(REDACTED)
        position = end
    out.append(text[position:])
    return "".join(out)


def _cut_key_at_end(text: str) -> int:
    """Length of a known key prefix, with what follows of the key, that ends ``text`` (0 if none)."""
    head = text.rstrip(_KEY_CHARS)  # C speed: no backtracking regex over long runs of key characters
    tail = text[len(head) :]
    if tail.startswith(_KEY_PREFIXES) and len(tail) >= 8:
        return len(tail)
    if len(tail) >= 2 and head.rstrip().lower().endswith("bearer") and head[-1:].isspace():
        return len(tail)
    return 0


class Redactor:
    """Replaces the given secret values, then key-shaped strings, anywhere in a JSON-like value.

    With ``pieces_anywhere`` (for rows written before redaction came before every cut, where
    a piece of a key may sit anywhere in a stored preview) a prefix or suffix of a secret at
    least ``MIN_PIECE_ANYWHERE`` long is redacted wherever it appears, not only at an end.
    """

    def __init__(self, secrets: Iterable[str] = (), *, pieces_anywhere: bool = False) -> None:
        self._anywhere = pieces_anywhere
        values = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in self._secrets)) if values else None
        self._longest = len(self._secrets[0]) if self._secrets else 0

    def text(self, value: str) -> str:
        """``value`` with every secret and key-shaped string replaced, and the pieces of them at its ends."""
        if self._pattern is not None:
            value = self._pattern.sub(REDACTED, value)
        if self._anywhere:
            spans = [span for secret in self._secrets for span in _pieces_inside(value, secret, MIN_PIECE_ANYWHERE)]
            value = _replace_spans(value, spans) if spans else value
        return self._edges(KEY_SHAPES.sub(REDACTED, value))

    def cut(self, text: str, limit: int) -> str:
        """At most ``limit`` characters of ``text`` after redaction (a trailing piece of a secret redacted).

        A ``[REDACTED]`` marker that starts before ``limit`` is kept whole, so the result
        may end up to ``len(REDACTED) - 1`` characters longer.

        Only a window of ``text`` a little longer than ``limit`` is redacted: what lies
        beyond it would be cut anyway, and a secret straddling the window's end is a piece
        at the end of the window, which is redacted as well.
        """
        clean = self.text(text[: limit + self._longest + len(REDACTED) + 64])
        if len(clean) <= limit:
            return clean
        marker = clean.find(REDACTED, max(limit - len(REDACTED) + 1, 0), limit + len(REDACTED) - 1)
        if -1 < marker < limit:  # keep a marker whole rather than leave "[REDAC"
            limit = marker + len(REDACTED)
        return self._edges(clean[:limit])

    def _edges(self, value: str) -> str:
        for secret in self._secrets:
            length = _prefix_at_end(value, secret, MIN_FRAGMENT_CHARS)
            if length:
                value = value[:-length] + REDACTED
            length = _suffix_at_start(value, secret, MIN_FRAGMENT_CHARS)
            if length:
                value = REDACTED + value[length:]
        length = _cut_key_at_end(value)
        return value[:-length] + REDACTED if length else value

    def value(self, value: Any) -> Any:
        """A copy of ``value`` with every string (keys included) redacted, and secret-named header values."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.text(str(k)): self.headers(v) if str(k).lower() == "headers" else self.value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def headers(self, value: Any) -> Any:
        """``value`` redacted; when it is a mapping of header names, secret-looking names' values replaced whole."""
        if not isinstance(value, dict):
            return self.value(value)
        return {
            self.text(str(name)): REDACTED if secret_header(str(name)) and v not in (None, "") else self.value(v)
            for name, v in value.items()
        }


def secret_header(name: str) -> bool:
    """Whether a header of this name carries a secret (authorization, cookies, keys, tokens, …)."""
    return SECRET_HEADER.search(name) is not None


# What may still grow into a key of a known shape at the end of a text: a known prefix (or the
# start of one) in a run of key characters, or "bearer" (or its start) and a token after it.
_BEARER_TAIL = re.compile(r"(?i)(?:bearer\s+[A-Za-z0-9._~+/\-]*=*|bearer\s*|beare|bear|bea|be|b)\Z")
_BEARER_CHARS = _KEY_CHARS + "._~+/="
MAX_HELD_CHARS = 4096  # a tail held longer than this is let out (redacted, with its end cut as a key's)


class StreamRedactor:
    """Redacts text that arrives in pieces (a model's streamed answer), so no secret passes split.

    ``feed`` returns the part of the text so far that is safe to show, redacted; it holds back
    the shortest tail that could be the beginning of a secret or of a key-shaped string
    (which the next piece might complete), and never cuts through one. ``flush`` returns
    the rest at the end. The pieces returned, joined, are the whole text redacted.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = ""
        self._dropping = ""  # after a forced cut through a key: the characters that continue it

    def feed(self, piece: str) -> str:
        """The text now safe to show (possibly ""), redacted."""
        if self._dropping:
            kept = piece.lstrip(self._dropping)  # the rest of a key already shown as [REDACTED]
            self._dropping = "" if kept else self._dropping
            piece = kept
        self._pending += piece
        cut = self._safe_end(self._pending)
        if len(self._pending) - cut > MAX_HELD_CHARS:
            # A run held too long is let out with its end redacted as a cut key, and the rest
            # of that run is dropped as it arrives, as whole-text redaction would replace it.
            shown, self._pending = self._pending, ""
            bearer = _BEARER_TAIL.search(shown, max(0, len(shown) - MAX_HELD_CHARS - 16))
            self._dropping = _BEARER_CHARS if bearer else _KEY_CHARS
            return self._redactor.text(shown)
        shown, self._pending = self._pending[:cut], self._pending[cut:]
        return self._whole(shown) if shown else ""

    def flush(self) -> str:
        """Whatever is still held, redacted; the stream has ended."""
        shown, self._pending = self._pending, ""
        return self._redactor.text(shown) if shown else ""

    def _whole(self, text: str) -> str:
        """``text`` with every whole secret and key-shaped string replaced (no edge pieces: the text goes on)."""
        pattern = self._redactor._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return KEY_SHAPES.sub(REDACTED, text)

    def _safe_end(self, text: str) -> int:
        """Where ``text`` may be cut: before any tail a later piece could turn into a secret or a key."""
        cut = len(text)
        for secret in self._redactor._secrets:
            for length in range(min(len(secret) - 1, len(text)), 0, -1):
                if text.endswith(secret[:length]):
                    cut = min(cut, len(text) - length)
                    break
        run_start = len(text.rstrip(_KEY_CHARS))  # C speed, as in _cut_key_at_end
        for offset in range(run_start, len(text)):
            rest = text[offset:]
            if any(prefix.startswith(rest) or rest.startswith(prefix) for prefix in _KEY_PREFIXES):
                cut = min(cut, offset)
                break
        window = max(0, len(text) - MAX_HELD_CHARS - 16)  # a bearer token held longer is let out anyway
        bearer = _BEARER_TAIL.search(text, window)
        if bearer is not None:
            cut = min(cut, bearer.start())
        return self._not_through_a_match(text, cut)

    def _not_through_a_match(self, text: str, cut: int) -> int:
        """``cut`` moved back to the start of any secret or key-shaped match it would split."""
        pattern = self._redactor._pattern
        spans = [m.span() for m in KEY_SHAPES.finditer(text)]
        if pattern is not None:
            spans += [m.span() for m in pattern.finditer(text)]
        for _ in range(len(spans) + 1):  # each pass moves the cut back past one span, or ends
            inside = [start for start, end in spans if start < cut < end]
            if not inside:
                break
            cut = min(inside)
        return cut
