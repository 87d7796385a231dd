"""The credential vault: Fernet encryption bound to the row a value belongs to.

``FERNET_KEY`` is a comma-separated list used through ``MultiFernet``: the first
key encrypts, every key decrypts, so keys rotate without downtime. Fernet has
no associated data, so the plaintext is wrapped in a small envelope naming the
user, provider and type; a ciphertext copied into another row fails to decrypt.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from pilot.errors import ConfigurationError, PilotError
from pilot.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE_NAME = "fernet.key"
ENVELOPE_VERSION = 1


class CredentialDecryptError(PilotError):
    """A stored credential cannot be decrypted with the configured keys, or belongs to another row.

    The request is fine, the stored value is not; storing it again (or deleting it)
    resolves it.
    """

    code = "credential_unreadable"


def unreadable_credentials(provider: str, failures: dict[str, CredentialDecryptError]) -> CredentialDecryptError:
    """One error naming every unreadable credential type of ``provider`` and what to do about it."""
    types = sorted(failures)
    reasons = "; ".join(failures[type_].message for type_ in types)
    them = "it" if len(types) == 1 else "them"
    return CredentialDecryptError(
        f"{reasons}. Store {them} again or delete {them}", details={"provider": provider, "types": types}
    )


class Vault:
    """Encrypts and decrypts credential values for one (user, provider, type) row at a time."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigurationError("no Fernet key configured")
        try:
            self._fernets = [Fernet(key.encode() if isinstance(key, str) else key) for key in keys]
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "FERNET_KEY is malformed: each comma-separated key must be 32 url-safe base64-encoded bytes"
            ) from exc
        self._multi = MultiFernet(self._fernets)

    def encrypt(self, user_id: str, provider: str, type_: str, plaintext: str) -> str:
        envelope = {"v": ENVELOPE_VERSION, "u": user_id, "p": provider, "t": type_, "s": plaintext}
        return self._multi.encrypt(json.dumps(envelope, separators=(",", ":")).encode()).decode()

    def decrypt(self, user_id: str, provider: str, type_: str, token: str) -> str:
        """Return the plaintext, or raise CredentialDecryptError if the token is not this row's."""
        try:
            envelope = json.loads(self._multi.decrypt(token.encode()))
        except (InvalidToken, ValueError) as exc:
            raise CredentialDecryptError(
                f"the stored {provider} {type_} cannot be decrypted with the configured FERNET_KEY"
            ) from exc
        if not isinstance(envelope, dict) or (envelope.get("u"), envelope.get("p"), envelope.get("t")) != (
            user_id,
            provider,
            type_,
        ):
            raise CredentialDecryptError(f"the stored {provider} {type_} does not belong to this record")
        return str(envelope["s"])

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the first key (the envelope, and so the binding, is unchanged)."""
        try:
            return self._multi.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise CredentialDecryptError("a stored credential cannot be decrypted with any configured key") from exc

    def encrypted_with_primary(self, token: str) -> bool:
        try:
            self._fernets[0].decrypt(token.encode())
        except InvalidToken:
            return False
        return True


def masked(vault: Vault, user_id: str, row: dict[str, Any]) -> str | None:
    """The display form of a stored credential row's value, or None when it cannot be decrypted."""
    try:
        return mask(vault.decrypt(user_id, row["provider"], row["type"], row["encrypted_value"]))
    except CredentialDecryptError:
        return None


def mask(secret: str) -> str:
    """A display form that never reveals more than a recognisable prefix and the last four characters."""
    if len(secret) >= 16:
        prefix = secret[:3] if secret[:3].isascii() else ""
        return f"{prefix}…{secret[-4:]}"
    if len(secret) >= 8:
        return f"…{secret[-4:]}"
    return "…"


def generate_key() -> str:
    return Fernet.generate_key().decode()


def load_keys(settings: Settings) -> tuple[str, ...]:
    """FERNET_KEY's keys; outside production a missing key is generated once into the data dir (0600)."""
    if settings.fernet_keys:
        return settings.fernet_keys
    if settings.production:
        raise ConfigurationError("FERNET_KEY is required when PILOT_ENV=production")
    path: Path = settings.data_dir / KEY_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return (path.read_text(encoding="ascii").strip(),)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(generate_key() + "\n")
    log.warning("FERNET_KEY is not set: generated a development key in %s; set FERNET_KEY in production", path)
    return (path.read_text(encoding="ascii").strip(),)
