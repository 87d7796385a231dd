"""Who a credential says the caller is: user ids, Bearer JWTs and Pilot API tokens, without HTTP.

``bearer_subject`` takes the ``Authorization`` header's value and returns the user it
proves: the subject of a JWT (HS256 with ``JWT_SECRET`` or RS256 from ``JWKS_URL``)
or the owner of a Pilot API token (a Bearer value starting with ``pilot_``, see
``tokens.py``). ``pilot.http.auth`` reads the request and calls it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jwt

from database import DatabaseManager
from pilot.errors import Unauthorized
from pilot.security import tokens
from pilot.settings import Settings

USER_ID_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,255}")  # always fullmatch: '$' also matches before a final \n


def valid_user_id(value: Any) -> bool:
    """A non-empty string of at most 255 printable characters without leading or trailing whitespace."""
    return isinstance(value, str) and USER_ID_PATTERN.fullmatch(value) is not None and value.strip() == value


@cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300)


def bearer_subject(authorization: str, settings: Settings, db: DatabaseManager) -> str:
    """The user an ``Authorization: Bearer …`` value proves; Unauthorized when it proves none."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an Authorization: Bearer token is required")
    token = token.strip()
    if tokens.is_api_token(token):
        owner = tokens.authenticate(db, token)
        if owner is None:
            raise Unauthorized("the API token is not valid or has been revoked")
        return owner
    claims = decode_jwt(token, settings)
    subject = claims.get("sub")
    if not valid_user_id(subject):
        raise Unauthorized("the bearer token has no usable subject")
    return str(subject)


def decode_jwt(token: str, settings: Settings) -> dict[str, Any]:
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
