"""Helpers shared by the blueprints: JSON bodies, ids, serialization (queries: ``pilot.http.models``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import request

from pilot.errors import NotFound, UnsupportedMediaType, ValidationError
from pilot.http.guard import request_json

MAX_DB_ID = 2**63 - 1


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
