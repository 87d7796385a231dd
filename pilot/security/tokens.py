"""Pilot API tokens: long-lived Bearer credentials for scripts and services.

A token is ``pilot_`` followed by 32 random bytes (URL-safe base64). It is
shown once, when created, and stored only as its SHA-256 hex digest: a copy
of the database does not yield usable tokens. Tokens carry 256 bits of
randomness, so a fast hash is enough (no salt or slow KDF is needed to resist
guessing). Authentication looks the digest up through the SECURITY DEFINER
function ``pilot_token_user`` because the user is not known yet.
"""

from __future__ import annotations

import hashlib
import secrets

from database import DatabaseManager
from pilot.data import store
from pilot.errors import ConfigurationError, NotFound

PREFIX = "pilot_"
MAX_TOKEN_CHARS = 200  # real tokens are 49 characters; anything much longer is not one of ours
LOOKUP_FUNCTION = "pilot_token_user"


def generate() -> str:
    """A new random token (not stored)."""
    return PREFIX + secrets.token_urlsafe(32)


def is_api_token(value: str) -> bool:
    """Whether a Bearer value is a Pilot API token rather than a JWT."""
    return value.startswith(PREFIX)


def digest(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(db: DatabaseManager, user_id: str, name: str = "") -> tuple[int, str]:
    """Store a new token for ``user_id``; returns ``(id, token)``. The token is never retrievable again.

    Raises ConfigurationError, before storing anything, when the lookup function
    is missing or its owner does not bypass row-level security: such a token
    could never authenticate.
    """
    with db.transaction(None, as_app=False) as cur:
        if not store.function_owner_bypasses_rls(cur, LOOKUP_FUNCTION):
            raise ConfigurationError(
                f"{LOOKUP_FUNCTION}() is missing or owned by a role that does not bypass row-level security: "
                "run `flask --app app migrate` as a superuser or a BYPASSRLS role"
            )
    token = generate()
    with db.transaction(user_id) as cur:
        row = store.insert_api_token(cur, user_id, name, digest(token))
    return int(row["id"]), token


def authenticate(db: DatabaseManager, token: str) -> str | None:
    """The user an active token belongs to, or None (unknown, revoked or malformed)."""
    if not is_api_token(token) or len(token) > MAX_TOKEN_CHARS:
        return None
    with db.transaction(None) as cur:
        return store.token_user(cur, digest(token))


def revoke(db: DatabaseManager, user_id: str, token_id: int) -> None:
    """Revoke ``user_id``'s token ``token_id``; NotFound if it is not theirs or already revoked."""
    with db.transaction(user_id) as cur:
        if not store.revoke_api_token(cur, user_id, token_id):
            raise NotFound(f"no active token {token_id} for user {user_id!r}")


def list_for(db: DatabaseManager, user_id: str) -> list[store.Row]:
    """``user_id``'s tokens (id, name, created_at, last_used_at, revoked_at); never the token or its hash."""
    with db.transaction(user_id) as cur:
        return store.list_api_tokens(cur, user_id)
