"""pilot/http/sse.py: events on the wire as the WHATWG HTML standard reads them, and who asked for a stream."""

from __future__ import annotations

import json

from flask import Flask

from pilot.http import sse
from providers._stream import sse_events


def read(wire: bytes) -> list[tuple[str, str]]:
    return [(event.event, event.data) for event in sse_events([wire]) if event is not None]


def test_an_event_is_one_line_of_json_whatever_its_data() -> None:
    data = {"text": "two\nlines\r\nand a CR\r", "n": [1, 2]}
    wire = sse.event("delta", data)
    assert wire.endswith(b"\n\n") and wire.count(b"\n") == 3  # event:, data:, blank line
    assert read(wire) == [("delta", json.dumps(data, separators=(",", ":")))]
    assert json.loads(read(wire)[0][1]) == data


def test_names_and_ids_cannot_inject_fields() -> None:
    wire = sse.event("run\ndata: forged", {"ok": True}, id="7\r\nevent: forged")
    lines = wire.decode().split("\n")
    assert lines[0] == "id: 7  event: forged" and lines[1] == "event: run data: forged"
    assert read(wire) == [("run data: forged", '{"ok":true}')]
    assert read(sse.comment("a\nb")) == []  # a comment is never an event


def test_wants_stream_reads_the_query_then_accept() -> None:
    app = Flask(__name__)
    cases = [
        ("/?stream=true", "application/json", True),
        ("/?stream=1", None, True),
        ("/", "text/event-stream", True),
        ("/", "*/*", False),
        ("/", "application/json, text/event-stream", False),
        ("/", "text/event-stream;q=0.9, application/json;q=0.5", True),
        ("/?stream=no", None, False),
    ]
    for path, accept, expected in cases:
        headers = {"Accept": accept} if accept else {}
        with app.test_request_context(path, headers=headers):
            assert sse.wants_stream() is expected, (path, accept)
