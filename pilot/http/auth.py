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


def _claimed_user_ids() -> list[str]:
    """The user_id values named in the query string and the JSON body, each checked for form."""
    candidates: list[Any] = []
    if "user_id" in request.args:
        candidates.append(request.args.get("user_id"))
    body = request_json()  # parsed and checked once per request (depth, NUL) by the guard
    if isinstance(body, dict) and body.get("user_id") is not None:
        candidates.append(body["user_id"])
    for value in candidates:
        if not valid_user_id(value):
            raise ValidationError("user_id must be a non-empty string of at most 255 printable characters")
    return candidates


def current_user_id() -> str:
    """The acting user for this request; raises 400/401/403 rather than guessing.

    Token mode: every user_id named (query or body) must be the token's user, else 403.
    Dev mode: the user_id named; the query's and the body's must agree (else 400).
    """
    pilot = current_pilot()
    claimed = _claimed_user_ids()
    if pilot.settings.auth_mode == "token":
        subject = bearer_subject(request.headers.get("Authorization", ""), pilot.settings, pilot.db)
        if any(value != subject for value in claimed):
            raise Forbidden("user_id does not match the authenticated user")
        return subject
    if len(set(claimed)) > 1:
        raise ValidationError("user_id in the query string and in the body differ")
    if not claimed:
        raise ValidationError("user_id is required (in the JSON body or the query string) when AUTH_MODE=dev")
    return claimed[0]
