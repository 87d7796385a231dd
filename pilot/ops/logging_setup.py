"""Structured logs: one JSON object per line, with the request id when there is one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from flask import g, has_request_context

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# APScheduler logs every execution of every job at INFO: with the scheduler's one-second tick that is
# two lines a second per process. Its warnings (missed runs, errors) still come through.
QUIET_AT_INFO = ("apscheduler.executors", "apscheduler.scheduler")


def configure_logging(level: str) -> None:
    """Send JSON lines to stderr at ``level``; idempotent, so tests can build many apps."""
    root = logging.getLogger()
    root.setLevel(level)
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    if not any(getattr(handler, "_pilot", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._pilot = True  # type: ignore[attr-defined]
        root.addHandler(handler)
