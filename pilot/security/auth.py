"""Who is calling: one function every route uses to learn the acting user.

``AUTH_MODE=dev`` takes ``user_id`` from the JSON body or the query string, as
the client's checklist does. ``AUTH_MODE=token`` (required in production)
takes the subject of a Bearer JWT (HS256 with ``JWT_SECRET`` or RS256 from
``JWKS_URL``) or the owner of a Pilot API token (a Bearer value starting with
``pilot_``, see ``tokens.py``); a ``user_id`` that differs from it is refused
with 403.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jwt
from flask import current_app, request

from pilot.errors import Forbidden, Unauthorized, ValidationError
from pilot.http.guard import request_json
from pilot.security import tokens
from pilot.settings import Settings

USER_ID_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,255}")  # always fullmatch: '$' also matches before a final \n


def valid_user_id(value: Any) -> bool:
    """A non-empty string of at most 255 printable characters without leading or trailing whitespace."""
    return isinstance(value, str) and USER_ID_PATTERN.fullmatch(value) is not None and value.strip() == value


def _claimed_user_id() -> str | None:
    """The user_id named in the query string or the JSON body, if any (they must agree)."""
    candidates: list[Any] = []
    if "user_id" in request.args:
        candidates.append(request.args.get("user_id"))
    body = request_json()  # parsed and checked once per request (depth, NUL) by routes.guard
    if isinstance(body, dict) and body.get("user_id") is not None:
        candidates.append(body["user_id"])
    for value in candidates:
        if not valid_user_id(value):
            raise ValidationError("user_id must be a non-empty string of at most 255 printable characters")
    if len(set(candidates)) > 1:
        raise ValidationError("user_id in the query string and in the body differ")
    return candidates[0] if candidates else None


@cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300)


def _token_subject(settings: Settings) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an Authorization: Bearer token is required")
    token = token.strip()
    if tokens.is_api_token(token):
        owner = tokens.authenticate(current_app.extensions["pilot"].db, token)
        if owner is None:
            raise Unauthorized("the API token is not valid or has been revoked")
        return owner
    claims = _decode_jwt(token, settings)
    subject = claims.get("sub")
    if not valid_user_id(subject):
        raise Unauthorized("the bearer token has no usable subject")
    return str(subject)


def _decode_jwt(token: str, settings: Settings) -> dict[str, Any]:
    """The claims of a JWT signed by the configured key, unexpired, for our audience and issuer.

    Without ``JWT_AUDIENCE`` only tokens that name no audience are accepted: any
    audience would let in a token the same issuer minted for another service.
    """
    required = ["sub", "exp"] + (["aud"] if settings.jwt_audience else []) + (["iss"] if settings.jwt_issuer else [])
    checks: dict[str, Any] = {
        "options": {"require": required},
        "audience": list(settings.jwt_audience) or None,
        "issuer": settings.jwt_issuer,
    }
    try:
        if settings.jwks_url:
            key: Any = _jwks_client(settings.jwks_url).get_signing_key_from_jwt(token).key
            return dict(jwt.decode(token, key, algorithms=["RS256"], **checks))
        if settings.jwt_secret:
            return dict(jwt.decode(token, settings.jwt_secret, algorithms=["HS256"], **checks))
    except jwt.InvalidAudienceError as exc:
        hint = "" if settings.jwt_audience else "; set JWT_AUDIENCE to the audience Pilot's tokens carry"
        raise Unauthorized(f"the bearer token is not for this audience{hint}") from exc
    except jwt.InvalidIssuerError as exc:
        raise Unauthorized("the bearer token is from another issuer") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("the bearer token is not valid") from exc
    raise Unauthorized("token authentication is not configured (set JWT_SECRET or JWKS_URL)")


def current_user_id() -> str:
    """The acting user for this request; raises 400/401/403 rather than guessing."""
    settings: Settings = current_app.config["PILOT_SETTINGS"]
    claimed = _claimed_user_id()
    if settings.auth_mode == "token":
        subject = _token_subject(settings)
        if claimed is not None and claimed != subject:
            raise Forbidden("user_id does not match the authenticated user")
        return subject
    if claimed is None:
        raise ValidationError("user_id is required (in the JSON body or the query string) when AUTH_MODE=dev")
    return claimed
