"""Helpers shared by the blueprints: JSON bodies, paging, serialization."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import request

from errors import NotFound, UnsupportedMediaType, ValidationError

MAX_DB_ID = 2**63 - 1


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400/415 that says what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw:
        raise ValidationError("a JSON body is required")
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationError("the JSON body must be an object")
    return data


def optional_json_body() -> dict[str, Any]:
    return json_body() if request.get_data(cache=True) else {}


def paging(default_limit: int = 100, max_limit: int = 500) -> tuple[int, int]:
    try:
        limit = int(request.args.get("limit", default_limit))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise ValidationError("limit and offset must be integers") from None
    if not 1 <= limit <= max_limit or not 0 <= offset <= 10_000_000:
        raise ValidationError(f"limit must be 1..{max_limit} and offset 0..10000000")
    return limit, offset


def check_id(value: int, what: str) -> int:
    if value > MAX_DB_ID:
        raise NotFound(f"{what} not found")
    return value


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}
