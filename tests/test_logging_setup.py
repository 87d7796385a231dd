"""pilot/ops/logging_setup.py: one JSON object per line, with the request id inside a request."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest
from flask import Flask, g

from pilot.ops.logging_setup import JsonFormatter, configure_logging


def record(message: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("pilot.test")
    return logger.makeRecord(logger.name, level, __file__, 1, message, args, None, extra=extra)


def test_a_line_is_one_json_object_with_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("hello %s", "world", level=logging.WARNING))
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "pilot.test", "hello world")
    assert datetime.fromisoformat(entry["ts"]).utcoffset() is not None  # an aware ISO 8601 time


def test_extra_fields_are_kept_and_values_json_cannot_hold_are_written_as_text() -> None:
    entry = json.loads(JsonFormatter().format(record("x", code="busy", when=datetime(2026, 1, 2))))
    assert entry["code"] == "busy" and entry["when"] == "2026-01-02 00:00:00"


def test_the_request_id_is_added_inside_a_request_only() -> None:
    app = Flask(__name__)
    assert "request_id" not in json.loads(JsonFormatter().format(record("outside")))
    with app.test_request_context("/"):
        g.request_id = "rid-123"
        assert json.loads(JsonFormatter().format(record("inside")))["request_id"] == "rid-123"


def test_an_exception_is_logged_with_its_traceback_in_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.getLogger("pilot.test").makeRecord(
            "pilot.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc_info"]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored (level and handlers) after the test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def test_configure_logging_adds_one_handler_however_often_it_is_called(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    root_logger.handlers[:] = [h for h in root_logger.handlers if not getattr(h, "_pilot", False)]
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("WARNING")
    configure_logging("DEBUG")  # a second app in the same process
    ours = [h for h in root_logger.handlers if getattr(h, "_pilot", False)]
    assert len(ours) == 1 and root_logger.level == logging.DEBUG
    logging.getLogger("pilot.test").debug("once")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["message"] for entry in lines] == ["once"]


def test_the_schedulers_per_tick_lines_are_not_logged_at_info() -> None:
    # Levels, not captured output: the handler writes to the stderr of whichever test configured it first.
    configure_logging("INFO")
    executor = logging.getLogger("apscheduler.executors.default")
    assert not executor.isEnabledFor(logging.INFO)  # "Running job pilot-tick", twice a second per process
    assert executor.isEnabledFor(logging.WARNING)  # missed runs and job errors still come through
    assert logging.getLogger("pilot").isEnabledFor(logging.INFO)
