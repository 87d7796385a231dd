"""``Idempotency-Key`` on POST routes: a repeated request gets the first answer, not a second execution.

Decorate a view with ``@idempotent`` (below its route decorator): that is all a route
needs. A request without the header runs as before. With it, the key is claimed for
(user, key) in ``idempotency_keys`` (under RLS, like every user table) before the view
runs, and the answer the view gives (status, body, Content-Type and Location) is stored
with it. Within ``RETENTION_HOURS`` of the first request:

- the same key with the same request (method, path, query and JSON body, compared by
  a SHA-256 fingerprint; key order and spacing in the JSON do not matter) gets the
  stored answer with ``Idempotent-Replayed: true``, without executing again;
- the same key with another request gets 422 ``idempotency_key_reused``;
- a request whose key is still being executed gets 409 ``idempotency_key_in_use``
  with ``Retry-After``: concurrent duplicates execute once.

An answer of 500 or more, or a 429, is not stored (nor is an exception): the key is released, so
the same request may be sent again with it. A key whose request died with its process
stays claimed for ``LOCK_SECONDS``, then the same request may take it over. Keys are
per user; ``prune-logs`` deletes keys older than ``RETENTION_HOURS``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Response, current_app, request

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import PilotError, Unprocessable, ValidationError
from pilot.http.auth import current_user_id
from pilot.http.errors import error_response, status_for
from pilot.http.guard import request_json

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
RETENTION_HOURS = 24
LOCK_SECONDS = 3600  # a request still running after this long is presumed dead with its process
IN_USE_RETRY_AFTER_S = 1
KEPT_HEADERS = ("Content-Type", "Location")
_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")  # printable ASCII, no edge spaces
CLAIM_TRIES = 3
F = TypeVar("F", bound=Callable[..., Any])


def idempotent(view: F) -> F:
    """Make a POST view honour ``Idempotency-Key`` (module docstring)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        raw = request.headers.get(HEADER)
        if raw is None:
            return view(*args, **kwargs)
        key = _valid_key(raw)
        user_id = current_user_id()
        fingerprint = request_fingerprint()
        token = secrets.token_hex(16)
        stored = _claim(user_id, key, fingerprint, token)
        if stored is not None:
            return _answer_stored(stored, fingerprint)
        return _execute(user_id, key, token, lambda: view(*args, **kwargs))

    wrapper.pilot_idempotent = True  # type: ignore[attr-defined]  # read by @validate for the document
    return cast(F, wrapper)


def _valid_key(raw: str) -> str:
    if not _KEY.fullmatch(raw):
        raise ValidationError(
            f"the {HEADER} header must be 1 to 255 printable ASCII characters (a UUID is a good choice)",
            code="invalid_idempotency_key",
        )
    return raw


def request_fingerprint() -> str:
    """SHA-256 of what makes two requests the same: method, path, query and body (JSON compared as data)."""
    digest = hashlib.sha256()
    body = request_json()
    if body is not None:
        content = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    else:
        content = request.get_data(cache=True)
    query = sorted(request.args.items(multi=True))
    for part in (request.method, request.path, json.dumps(query, ensure_ascii=False)):
        digest.update(part.encode("utf-8") + b"\x00")
    digest.update(content)
    return digest.hexdigest()


def _claim(user_id: str, key: str, fingerprint: str, token: str) -> dict[str, Any] | None:
    """None when this request now holds the key; else the stored row of the request that does or did."""
    db = current_pilot().db
    for _ in range(CLAIM_TRIES):  # a holder that released its key between our two statements: claim again
        with db.transaction(user_id) as cur:
            claimed = store.claim_idempotency_key(
                cur,
                user_id,
                key,
                fingerprint=fingerprint,
                method=request.method,
                path=request.path[:2048],
                token=token,
                lock_seconds=LOCK_SECONDS,
                retention_hours=RETENTION_HOURS,
            )
            if claimed:
                return None
            row = store.get_idempotency_key(cur, user_id, key)
        if row is not None:
            return row
    return {"fingerprint": fingerprint, "state": "in_progress"}  # still contended: answer as in use


def _answer_stored(row: dict[str, Any], fingerprint: str) -> Response:
    if row["fingerprint"] != fingerprint:
        raise Unprocessable(
            f"this {HEADER} was already used, within the last {RETENTION_HOURS} hours, for a different request "
            "(another method, path, query or body); send a new key for a new request",
            code="idempotency_key_reused",
        )
    if row["state"] != "done":
        response, status = error_response(
            "idempotency_key_in_use",
            f"a request with this {HEADER} is still being executed; retry shortly to get its answer",
            409,
        )
        response.status_code = status
        response.headers["Retry-After"] = str(IN_USE_RETRY_AFTER_S)
        return response
    headers = {name: value for name, value in (row["response_headers"] or {}).items() if name in KEPT_HEADERS}
    replay = Response(bytes(row["response_body"] or b""), status=row["response_status"], headers=headers)
    replay.headers[REPLAYED_HEADER] = "true"
    return replay


def _execute(user_id: str, key: str, token: str, view: Callable[[], Any]) -> Response:
    """Run the view holding the key; store its answer below 500, release the key otherwise."""
    db = current_pilot().db
    try:
        response = current_app.make_response(view())
    except PilotError as exc:
        status = status_for(exc)
        if status >= 500 or status == 429:  # try again later: the same key may be sent again
            _release(user_id, key, token)
            raise
        response = current_app.make_response(error_response(exc.code, exc.message, status, exc.details))
    except BaseException:
        _release(user_id, key, token)
        raise
    if response.status_code >= 500 or response.is_streamed:
        _release(user_id, key, token)
        return response
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    try:
        with db.transaction(user_id) as cur:
            store.complete_idempotency_key(
                cur, user_id, key, token, status=response.status_code, headers=headers, body=response.get_data()
            )
    except PilotError as exc:  # the work is done: answer it; the key stays claimed until its lock lapses
        log.warning("the answer for an idempotency key could not be stored: %s", exc.message)
    return response


def _release(user_id: str, key: str, token: str) -> None:
    try:
        with current_pilot().db.transaction(user_id) as cur:
            store.release_idempotency_key(cur, user_id, key, token)
    except PilotError as exc:
        log.warning("an idempotency key could not be released: %s", exc.message)
