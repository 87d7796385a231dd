"""pilot/security/redaction.py: secrets replaced by value, by key shape and by header name, before any cut.

Checked against plain rules written here: every occurrence of a secret is gone, no run of
``MIN_FRAGMENT_CHARS`` characters of it is left at either end of a text, and ``cut`` never
returns more than its limit.
"""

from __future__ import annotations

import random
import string
from typing import Any

import pytest

from pilot.security.redaction import (
    MAX_HELD_CHARS,
    MIN_FRAGMENT_CHARS,
    MIN_SECRET_CHARS,
    REDACTED,
    Redactor,
    StreamRedactor,
    secret_header,
)

SECRET = "s3cr3t-Value-0123456789"


def leaks(text: str, secret: str) -> bool:
    """The reference: ``secret`` anywhere, or a piece of it of MIN_FRAGMENT_CHARS or more at an end of ``text``."""
    lengths = range(MIN_FRAGMENT_CHARS, len(secret))
    at_end = any(text.endswith(secret[:n]) for n in lengths)  # what a cut leaves of a secret's beginning
    at_start = any(text.startswith(secret[-n:]) for n in lengths)  # what a window leaves of its end
    return secret in text or at_end or at_start


def test_every_occurrence_of_a_secret_is_replaced() -> None:
    text = f"key {SECRET} sent; again: {SECRET}."
    assert Redactor([SECRET]).text(text) == f"key {REDACTED} sent; again: {REDACTED}."


def test_a_secret_containing_another_is_replaced_whole() -> None:
    inner = "0123456789"
    assert Redactor([inner, SECRET]).text(f"<{SECRET}>") == f"<{REDACTED}>"


def test_values_too_short_to_be_secrets_are_left_alone() -> None:
    short = "x" * (MIN_SECRET_CHARS - 1)
    assert Redactor([short]).text(f"a {short} b") == f"a {short} b"


@pytest.mark.parametrize(
    "key",
    [
        "sk-proj-" + "A" * 24,
        "sk-ant-" + "b" * 30,
        "gsk_" + "C" * 24,
        "xoxb-" + "1" * 12,
        "ghp_" + "d" * 36,
        "AKIA" + "E" * 16,
        "AIza" + "f" * 35,
    ],
)
def test_key_shaped_strings_are_replaced_without_being_stored_credentials(key: str) -> None:
    assert Redactor().text(f"upstream said: bad key {key}!") == f"upstream said: bad key {REDACTED}!"


def test_a_bearer_token_is_replaced() -> None:
    assert Redactor().text("Authorization: Bearer abcdefghijklmnop1234") == f"Authorization: {REDACTED}"


@pytest.mark.parametrize("cut_at", range(MIN_FRAGMENT_CHARS, len(SECRET)))
def test_a_piece_of_a_secret_at_either_end_is_replaced(cut_at: int) -> None:
    redactor = Redactor([SECRET])
    assert not leaks(redactor.text("error: " + SECRET[:cut_at]), SECRET)
    assert not leaks(redactor.text(SECRET[-cut_at:] + " was refused"), SECRET)


def test_cut_redacts_before_it_shortens_and_keeps_the_limit() -> None:
    redactor = Redactor([SECRET])
    rng = random.Random(8)
    for _ in range(300):
        filler = "".join(rng.choice(string.ascii_letters + " ") for _ in range(rng.randint(0, 80)))
        text = filler + SECRET + filler
        limit = rng.randint(1, len(text) + 5)
        cut = redactor.cut(text, limit)
        # At most ``limit`` characters, or up to len(REDACTED) - 1 more to keep a marker that starts before it whole.
        assert len(cut) < limit + len(REDACTED), (text, limit, cut)
        assert len(cut) <= limit or cut.endswith(REDACTED), (text, limit, cut)
        assert not leaks(cut, SECRET), (text, limit, cut)
        assert "[REDAC" not in cut.replace(REDACTED, ""), cut  # a marker is kept whole or not at all


def test_value_redacts_keys_values_and_nested_containers_without_changing_the_input() -> None:
    original: dict[str, Any] = {"outer": [{SECRET: f"x {SECRET}"}, ("t", SECRET)], "n": 3, "none": None}
    redacted = Redactor([SECRET]).value(original)
    assert redacted == {"outer": [{REDACTED: f"x {REDACTED}"}, ["t", REDACTED]], "n": 3, "none": None}
    assert original["outer"][0] == {SECRET: f"x {SECRET}"}


def test_secret_named_headers_are_replaced_whole_wherever_headers_appear() -> None:
    logged = {
        "params": {
            "headers": {"X-Api-Key": "inline-not-stored", "Accept": "application/json", "Cookie": "", "Token": None}
        }
    }
    assert Redactor().value(logged) == {
        "params": {"headers": {"X-Api-Key": REDACTED, "Accept": "application/json", "Cookie": "", "Token": None}}
    }


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("X-Api-Key", True),
        ("x-auth-token", True),
        ("Set-Cookie", True),
        ("X-Client-Secret", True),
        ("Proxy-Password", True),
        ("X-Session-Id", True),
        ("Content-Type", False),
        ("Accept", False),
        ("X-Request-ID", False),
    ],
)
def test_secret_header_names(name: str, secret: bool) -> None:
    assert secret_header(name) is secret


def test_pieces_anywhere_finds_a_stored_piece_in_the_middle_of_a_text() -> None:
    piece = SECRET[:10]
    text = f"preview ... {piece}... more text"
    assert piece in Redactor([SECRET]).text(text)  # at neither end: left alone by default
    assert piece not in Redactor([SECRET], pieces_anywhere=True).text(text)


# --- StreamRedactor: text that arrives in pieces -----------------------------------------------

STREAMED_TEXTS = [
    f"Your key is {SECRET}, keep it.",
    f"{SECRET}{SECRET} twice, then sk-proj-ABCDEFGHIJKLMNOPQRSTUV and tasks-done.",
    "Authorization: Bearer abcdefghijklmnop.qrstuvwx/yz== sent; bearer",
    "no secrets here at all, just text ending in s",
    f"ghp_{'a' * 36} and AKIA{'B' * 16} and plain words",
]


def pieces_of(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(12, len(text) - 1))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("text", STREAMED_TEXTS)
def test_streamed_pieces_join_to_the_whole_text_redacted_and_none_leaks(text: str) -> None:
    """Against the reference: however the text is split, what is shown equals ``Redactor.text`` of the whole,
    and no piece shown holds a secret or any run of MIN_FRAGMENT_CHARS of it."""
    redactor = Redactor([SECRET])
    fragments = {SECRET[i : i + MIN_FRAGMENT_CHARS] for i in range(len(SECRET) - MIN_FRAGMENT_CHARS + 1)}
    rng = random.Random(text)
    for _ in range(300):
        stream = StreamRedactor(redactor)
        shown = [stream.feed(piece) for piece in pieces_of(text, rng)] + [stream.flush()]
        assert "".join(shown) == redactor.text(text)
        assert not [piece for piece in shown if any(fragment in piece for fragment in fragments)]


def test_streamed_text_is_held_only_while_it_could_become_a_secret() -> None:
    stream = StreamRedactor(Redactor([SECRET]))
    assert stream.feed("Hello world. ") == "Hello world. "  # nothing held back
    assert stream.feed("Key: " + SECRET[:5]) == "Key: "  # the start of the secret waits
    assert stream.feed(SECRET[5:] + " done") == REDACTED + " done"
    assert stream.feed("ask") == "a"  # 'sk' may begin a key ('sk-…'); 'a' cannot
    assert stream.feed(" me") == "sk me"
    assert stream.flush() == ""


def test_a_run_that_never_ends_is_let_out_redacted_after_the_hold_limit() -> None:
    stream = StreamRedactor(Redactor([SECRET]))
    shown = stream.feed("sk-" + "x" * (MAX_HELD_CHARS + 100))
    assert shown == REDACTED  # a key-shaped run cut by the limit is redacted, not shown in part
    assert stream.feed("xxxx") == ""  # the rest of that key is dropped as it arrives
    assert stream.feed("xx and more") + stream.flush() == " and more"
    assert Redactor([SECRET]).text("sk-" + "x" * (MAX_HELD_CHARS + 106) + " and more") == REDACTED + " and more"
