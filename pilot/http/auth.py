"""Who is calling: the one function every route uses to learn the acting user.

``AUTH_MODE=dev`` takes ``user_id`` from the JSON body or the query string, as
the client's checklist does. ``AUTH_MODE=token`` (required in production)
takes the user the Bearer credential proves (``pilot.security.auth``); a
``user_id`` that differs from it is refused with 403.
"""

from __future__ import annotations

from typing import Any

from flask import request

from pilot.application import current_pilot
from pilot.errors import Forbidden, ValidationError
from pilot.http.guard import request_json
from pilot.security.auth import bearer_subject, valid_user_id


def _claimed_user_id() -> str | None:
    """The user_id named in the query string or the JSON body, if any (they must agree)."""
    candidates: list[Any] = []
    if "user_id" in request.args:
        candidates.append(request.args.get("user_id"))
    body = request_json()  # parsed and checked once per request (depth, NUL) by the guard
    if isinstance(body, dict) and body.get("user_id") is not None:
        candidates.append(body["user_id"])
    for value in candidates:
        if not valid_user_id(value):
            raise ValidationError("user_id must be a non-empty string of at most 255 printable characters")
    if len(set(candidates)) > 1:
        raise ValidationError("user_id in the query string and in the body differ")
    return candidates[0] if candidates else None


def current_user_id() -> str:
    """The acting user for this request; raises 400/401/403 rather than guessing."""
    pilot = current_pilot()
    claimed = _claimed_user_id()
    if pilot.settings.auth_mode == "token":
        subject = bearer_subject(request.headers.get("Authorization", ""), pilot.settings, pilot.db)
        if claimed is not None and claimed != subject:
            raise Forbidden("user_id does not match the authenticated user")
        return subject
    if claimed is None:
        raise ValidationError("user_id is required (in the JSON body or the query string) when AUTH_MODE=dev")
    return claimed
