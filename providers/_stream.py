"""Reading a model API's streamed answer: Server-Sent Events in, text deltas and one result out.

``sse_events`` parses the ``text/event-stream`` format as the WHATWG HTML standard
defines it (lines end in CRLF, LF or CR; ``data:`` lines of one event are joined with
``\\n``; lines starting with ``:`` are comments; a blank line ends an event).
``open_stream`` makes the call through ``context.http.stream`` and maps transport
failures and error statuses exactly as the non-streamed ``exchange`` does, so a
streamed step fails with the same codes. This module starts with ``_`` so the registry
does not treat it as a provider.
"""

from __future__ import annotations

import codecs
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pilot.errors import PilotError
from pilot.security.breaker import CircuitOpen, Outcome, error_outcome, status_outcome
from provider_registry import ExecutionContext, ProviderResult, StreamItem
from providers._http import http_failure

if TYPE_CHECKING:
    from pilot.security.outbound import OutboundStream

_EOL = re.compile(r"\r\n|\r|\n")
MAX_LINE_CHARS = 1_000_000  # one event's line; the whole stream is capped by the client's max_bytes


@dataclass(frozen=True)
class SSEEvent:
    """One event: its ``event`` name (``message`` when none was given) and its ``data``."""

    event: str
    data: str

    def json(self) -> Any:
        """``data`` parsed as JSON; ValueError when it is not."""
        return json.loads(self.data)


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Decoded lines (without their end) from byte chunks, whatever the chunk boundaries."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        start = 0
        for end in _EOL.finditer(pending):
            if end.group() == "\r" and end.end() == len(pending):
                break  # the CR may be the first half of a CRLF split between chunks
            yield pending[start : end.start()]
            start = end.end()
        pending = pending[start:]
        if len(pending) > MAX_LINE_CHARS:
            raise ValueError(f"an event-stream line is longer than {MAX_LINE_CHARS} characters")
    pending += decoder.decode(b"", final=True)
    yield from _EOL.split(pending.removesuffix("\r"))


def sse_events(chunks: Iterable[bytes]) -> Iterator[SSEEvent | None]:
    """The events of a stream, in order; ``None`` for each comment line (a sign of life, e.g. a ping)."""
    data: list[str] = []
    event = ""
    for line in _lines(chunks):
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            data, event = [], ""
            continue
        if line.startswith(":"):
            yield None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:  # a stream cut before its final blank line: what arrived is still an event
        yield SSEEvent(event or "message", "\n".join(data))


def open_stream(
    context: ExecutionContext, url: str, vendor: str, *, headers: dict[str, str], payload: dict[str, Any]
) -> tuple[OutboundStream | None, ProviderResult | None, float]:
    """``(stream, None, started)`` once the upstream answered 2xx; ``(None, failure, started)`` otherwise.

    Failures are those of the non-streamed call: transport errors keep their code and
    retryability, error statuses go through ``http_failure`` (the body read whole, bounded).
    """
    breakers = context.breakers
    try:
        ticket = breakers.admit(context.provider, url) if breakers is not None else None
    except CircuitOpen as exc:
        return (
            None,
            ProviderResult.fail(exc.code, exc.message, retry_after=exc.details["retry_after"]),
            time.perf_counter(),
        )
    outcome = Outcome.NEUTRAL
    started = time.perf_counter()
    try:
        stream = context.http.stream(
            "POST", url, headers={**headers, "Accept": "text/event-stream"}, json=payload, timeout=context.timeout_s
        )
        outcome = status_outcome(stream.status)
    except PilotError as exc:
        outcome = error_outcome(exc, context.timeout_s, context.default_timeout_s)
        failure = ProviderResult.fail(exc.code, exc.message, retryable=bool(getattr(exc, "retryable", False)))
        if getattr(exc, "request_sent", False):
            failure.metadata["outcome_unknown"] = True
        return None, failed_after(failure, started), started
    finally:
        if breakers is not None:
            breakers.settle(ticket, outcome)
    if stream.status >= 400:
        try:
            reply = stream.read()
        except PilotError as exc:
            return None, failed_after(ProviderResult.fail(exc.code, exc.message, retryable=True), started), started
        return None, failed_after(http_failure(reply, vendor, context.redactor), started), started
    return stream, None, started


def failed_after(result: ProviderResult, started: float) -> ProviderResult:
    """``result`` with its latency set from ``started`` (a ``time.perf_counter()`` value)."""
    result.latency_ms = (time.perf_counter() - started) * 1000
    return result


def stream_failure(exc: Exception, vendor: str, text: str) -> ProviderResult:
    """A stream that broke after it started: the transport's code (not retried: text was already sent)."""
    if isinstance(exc, PilotError):
        result = ProviderResult.fail(exc.code, f"{vendor} stream broke off: {exc.message}")
    else:
        result = ProviderResult.fail("invalid_response", f"{vendor} sent a malformed event stream ({exc})")
    if text:
        result.data = {"text": text}
    return result


__all__ = ["SSEEvent", "StreamItem", "failed_after", "open_stream", "sse_events", "stream_failure"]
