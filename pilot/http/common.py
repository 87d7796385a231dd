"""Helpers shared by the blueprints: JSON bodies, paging, serialization."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import request

from pilot.errors import NotFound, UnsupportedMediaType, ValidationError
from pilot.http.guard import request_json

MAX_DB_ID = 2**63 - 1
ASCII_INT = re.compile(r"[0-9]{1,19}")


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400/415 that says what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw:
        raise ValidationError("a JSON body is required")
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    data = request_json()
    if not isinstance(data, dict):
        raise ValidationError("the JSON body must be an object")
    return data


def optional_json_body() -> dict[str, Any]:
    return json_body() if request.get_data(cache=True) else {}


def int_arg(name: str) -> int | None:
    """A non-negative integer query parameter in ASCII digits, or None when absent.

    ``int()`` alone would also take '٣', ' 1' and '1_0', and ``str.isdigit()`` passes '¹',
    which ``int()`` then refuses.
    """
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if not ASCII_INT.fullmatch(raw) or int(raw) > MAX_DB_ID:
        raise ValidationError(f"{name} must be a non-negative integer (ASCII digits)")
    return int(raw)


def paging(default_limit: int = 100, max_limit: int = 500) -> tuple[int, int]:
    limit = int_arg("limit")
    offset = int_arg("offset")
    limit = default_limit if limit is None else limit
    offset = 0 if offset is None else offset
    if not 1 <= limit <= max_limit or not 0 <= offset <= 10_000_000:
        raise ValidationError(f"limit must be 1..{max_limit} and offset 0..10000000")
    return limit, offset


def check_id(value: int, what: str) -> int:
    if value > MAX_DB_ID:
        raise NotFound(f"{what} not found")
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):  # numeric columns (costs, budgets) answer as JSON numbers
        return float(value)
    return value


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in row.items()}
