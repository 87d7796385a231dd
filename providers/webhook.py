"""HTTP request to a user-supplied URL, optionally signed with HMAC-SHA256 and authenticated
with a stored credential.

Signing: ``X-Pilot-Timestamp: <unix seconds>`` and
``X-Pilot-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body bytes>``, computed
over exactly the bytes sent. A receiver recomputes it and rejects stale timestamps.

Header auth: a step's ``auth`` names stored (encrypted) credentials to send: ``bearer_token``
(``Authorization: Bearer …``), ``basic_auth`` (``user:password``, sent as
``Authorization: Basic …``) or ``header:<Name>`` (sent as the ``<Name>`` header). Nothing
stored is sent unless the step names it, and the outbound client drops such headers on a
redirect to another origin. The engine redacts every form of these values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar

from pilot.errors import ValidationError
from provider_registry import (
    HEADER_CREDENTIAL,
    ActionSpec,
    CredentialSpec,
    ExecutionContext,
    Provider,
    ProviderResult,
)
from providers._http import send, upstream_message

if TYPE_CHECKING:
    from pilot.security.outbound import OutboundResponse

BODY_CHARS = 64 * 1024
MAX_TIMEOUT_S = 120
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE"})
SIGNATURE_HEADER = "X-Pilot-Signature"
TIMESTAMP_HEADER = "X-Pilot-Timestamp"

# Headers a stored credential may not set: they frame the request or carry Pilot's own signature.
RESERVED_HEADERS = frozenset(
    {
        *("host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"),
        *("proxy-connection", "expect", SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()),
    }
)
_VISIBLE = re.compile(r"[\x21-\x7e]+")  # a token: printable ASCII, no spaces
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")  # printable, no edge spaces
_NO_CONTROLS = re.compile(r"[^\x00-\x1f\x7f]+")
AUTH_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": r"^(bearer_token|basic_auth|header:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$",
}
AUTH_SCHEMA: dict[str, Any] = {
    "description": "stored credentials to send: 'bearer_token' (Authorization: Bearer), 'basic_auth' "
    "(user:password, as Authorization: Basic) or 'header:<Name>' (the <Name> header), or a list of them; "
    "store them first with POST /api/provider-credentials/webhook. They override an inline header of the "
    "same name and are never sent to another origin on a redirect",
    "anyOf": [AUTH_NAME, {"type": "array", "items": AUTH_NAME, "minItems": 1, "maxItems": 8, "uniqueItems": True}],
}
_SCALAR = {"type": ["string", "number", "boolean"]}
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "minLength": 1, "description": "http(s) URL; subject to the outbound allow-list"},
        "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"], "default": "POST"},
        "headers": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "sent as written; values of secret-looking names (authorization, *key*, *token*, "
            "*secret*, cookie, …) are redacted in logs and answers: prefer `auth` with a stored credential",
        },
        "auth": AUTH_SCHEMA,
        "query": {"type": "object", "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]}},
        "json": {"description": "any JSON value, sent as application/json"},
        "body": {"type": "string", "description": "raw body, sent as is"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
    },
    "required": ["url"],
    "not": {"required": ["json", "body"]},
    "additionalProperties": False,
}


def _basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode("utf-8")).decode("ascii")


def _auth_header(name: str, value: str) -> tuple[str, str]:
    """``(header, value sent)`` for the stored credential ``name``."""
    if name == "bearer_token":
        return "Authorization", f"Bearer {value}"
    if name == "basic_auth":
        return "Authorization", _basic(value)
    return name.removeprefix(HEADER_CREDENTIAL), value


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Pilot-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class WebhookProvider(Provider):
    """``request``: one HTTP request; success when the status is below 400."""

    name = "webhook"
    description = "HTTP request to any allowed URL, optionally HMAC-signed and authenticated with stored credentials"
    actions: ClassVar[dict[str, ActionSpec]] = {
        "request": ActionSpec(
            "Send an HTTP request; data has status, headers, json (parsed or null) and body (text, first 64 KB)",
            REQUEST_SCHEMA,
        )
    }
    credential_types: ClassVar[dict[str, CredentialSpec]] = {
        "hmac_secret": CredentialSpec("secret for the X-Pilot-Signature HMAC-SHA256 header", required=False),
        "bearer_token": CredentialSpec(
            "token sent as 'Authorization: Bearer <token>' by steps with auth: bearer_token", required=False
        ),
        "basic_auth": CredentialSpec(
            "'user:password' sent as 'Authorization: Basic …' by steps with auth: basic_auth", required=False
        ),
        "header:<Name>": CredentialSpec(
            "a header value, e.g. type 'header:X-Api-Key', sent as that header by steps with auth: 'header:X-Api-Key'",
            required=False,
        ),
    }

    def check_credential(self, type_: str, value: str) -> None:
        """Header credentials must be sendable as they are: a valid, unreserved name and a clean value."""
        if type_ == "bearer_token" and not _VISIBLE.fullmatch(value):
            raise ValidationError("a bearer token is printable ASCII without spaces")
        if type_ == "basic_auth" and (":" not in value or not _NO_CONTROLS.fullmatch(value)):
            raise ValidationError("basic_auth is 'user:password' (a ':' after the user, no control characters)")
        if type_.startswith(HEADER_CREDENTIAL):
            header = type_.removeprefix(HEADER_CREDENTIAL)
            if header.lower() in RESERVED_HEADERS:
                raise ValidationError(f"the {header} header cannot come from a stored credential")
            if not _HEADER_VALUE.fullmatch(value):
                raise ValidationError("a header value is printable ASCII, without line breaks or edge spaces")

    def credentials_schema(self) -> dict[str, Any]:
        """``check_credential`` as JSON Schema: header types (not reserved ones), and the values' forms."""
        reserved = "|".join(
            "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in name) for name in sorted(RESERVED_HEADERS)
        )
        return {
            "propertyNames": {"not": {"pattern": f"^header:(?:{reserved})$"}},
            "properties": {
                "bearer_token": {"pattern": f"^{_VISIBLE.pattern}$"},
                "basic_auth": {"pattern": r"^[^\x00-\x1f\x7f]*:[^\x00-\x1f\x7f]*$"},
            },
            "patternProperties": {"^header:": {"pattern": f"^{_HEADER_VALUE.pattern}$"}},
        }

    def secret_values(self, credentials: dict[str, str]) -> list[str]:
        """The stored values, plus what basic_auth becomes on the wire (and its password alone)."""
        values = super().secret_values(credentials)
        basic = credentials.get("basic_auth")
        if basic:
            values += [basic.partition(":")[2], _basic(basic).removeprefix("Basic ")]
        return values

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        if action != "request":
            return self.unknown_action(action)
        method = params.get("method", "POST")
        auth = self._auth_headers(params.get("auth"), credentials)
        if isinstance(auth, ProviderResult):
            return auth
        taken = {name.lower() for name in auth}
        headers = {k: v for k, v in (params.get("headers") or {}).items() if k.lower() not in taken}
        headers.update(auth)
        body = self._body(params)
        if "json" in params and not any(key.lower() == "content-type" for key in headers):
            headers["Content-Type"] = "application/json"
        secret = credentials.get("hmac_secret")
        if secret:
            headers = {
                k: v
                for k, v in headers.items()
                if k.lower() not in {SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()}
            }
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        reply, elapsed = send(
            context,
            method,
            params["url"],
            headers=headers,
            params=params.get("query") or None,
            data=body or None,
            timeout=float(params.get("timeout", context.timeout_s)),
        )
        if isinstance(reply, ProviderResult):
            if reply.error and reply.metadata.get("outcome_unknown"):
                # The receiver may have acted on it: only an idempotent method may be retried.
                reply.error["retryable"] = reply.error["retryable"] and method in IDEMPOTENT_METHODS
            return reply
        text = reply.text
        data = {
            "status": reply.status,
            "headers": dict(reply.headers),
            "json": self._json(reply),
            "body": context.redactor.cut(text, BODY_CHARS),  # redacted before it is cut
        }
        meta: dict[str, Any] = {"http_status": reply.status, "body_truncated": len(text) > BODY_CHARS}
        if reply.status < 400:
            result = ProviderResult.ok(data, **meta)
        else:
            result = self._failure(reply, meta, context)
            result.data = data
        result.latency_ms = elapsed
        return result

    def _auth_headers(self, auth: Any, credentials: dict[str, str]) -> dict[str, str] | ProviderResult:
        """The headers the step's ``auth`` names, from stored credentials; a failure when one is missing."""
        names = [auth] if isinstance(auth, str) else list(auth or [])
        headers: dict[str, str] = {}
        for name in names:
            value = credentials.get(name)
            if value is None:
                return ProviderResult.fail(
                    "missing_credentials",
                    f"no webhook {name} is stored; POST /api/provider-credentials/webhook "
                    f'{{"credentials": {{"{name}": "…"}}}} first',
                )
            try:
                self.check_credential(name, value)
            except ValidationError as exc:
                return ProviderResult.fail("invalid_credentials", f"the stored webhook {name}: {exc.message}")
            header, sent = _auth_header(name, value)
            if header.lower() in {taken.lower() for taken in headers}:
                return ProviderResult.fail("invalid_params", f"params.auth: {name!r} sets {header} a second time")
            headers[header] = sent
        return headers

    @staticmethod
    def _body(params: dict[str, Any]) -> bytes:
        """The exact bytes sent (and signed): compact UTF-8 JSON, the raw body, or nothing."""
        if "json" in params:
            return json.dumps(params["json"], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return params.get("body", "").encode("utf-8")

    @staticmethod
    def _json(reply: OutboundResponse) -> Any:
        if not reply.content:
            return None
        try:
            return reply.json()
        except ValueError:
            return None

    @staticmethod
    def _failure(reply: OutboundResponse, meta: dict[str, Any], context: ExecutionContext) -> ProviderResult:
        status = reply.status
        detail = upstream_message(reply, context.redactor)
        message = f"webhook returned HTTP {status}" + (f": {detail}" if detail else "")
        if status == 429:
            retry_after = reply.retry_after()
            if retry_after is not None:
                meta["retry_after"] = retry_after
            return ProviderResult.fail("rate_limited", message, retryable=True, **meta)
        if status >= 500:
            return ProviderResult.fail("upstream_error", message, retryable=True, **meta)
        return ProviderResult.fail("upstream_rejected", message, **meta)
