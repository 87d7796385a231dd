"""Server-Sent Events out: the wire format, the response, and whether a request asked for a stream.

The format is the WHATWG HTML standard's ``text/event-stream``: an event is ``id:``,
``event:`` and ``data:`` lines and a blank line; a line starting with ``:`` is a comment.
Data here is always one line of JSON. ``stream_response`` wraps any iterable of encoded
events in a response that proxies do not buffer (``X-Accel-Buffering: no``) or cache.
The server writes each piece as the iterable yields it, in the request's own thread, and
closes the iterable when the client goes away (the write fails): a generator learns of a
disconnect as ``GeneratorExit`` at its next ``yield`` after it. A run's event stream
(``GET /api/runs/<id>/events``) uses the same pieces, with ``id:`` for ``Last-Event-ID``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flask import Response, request

MEDIA_TYPE = "text/event-stream"
TRUE_WORDS = frozenset({"1", "true", "yes"})


def event(name: str | None, data: Any, *, id: str | None = None) -> bytes:
    """One event: ``data`` as one line of JSON, with its ``event`` name and ``id`` when given."""
    lines = []
    if id is not None:
        lines.append(f"id: {_one_line(id)}")
    if name is not None:
        lines.append(f"event: {_one_line(name)}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def comment(text: str = "") -> bytes:
    """A comment line: ignored by clients; keeps proxies from timing out and shows whether the client is there."""
    return f": {_one_line(text)}\n\n".encode()


def _one_line(text: str) -> str:
    # A CR or LF would end the field early and let the rest be read as another field.
    return text.replace("\r", " ").replace("\n", " ")


def stream_response(pieces: Iterable[bytes], status: int = 200) -> Response:
    """A streamed ``text/event-stream`` response of ``pieces``, unbuffered and uncached."""
    response = Response(pieces, status=status, mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = "no-cache, no-transform"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def wants_stream() -> bool:
    """Whether the request asked for events: ``?stream=true``, or ``Accept`` prefers ``text/event-stream``."""
    if request.args.get("stream", "").lower() in TRUE_WORDS:
        return True
    # Equal preference (``*/*``, or both listed) means JSON, the server's first choice.
    return request.accept_mimetypes.best_match(["application/json", MEDIA_TYPE]) == MEDIA_TYPE
