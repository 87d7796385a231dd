"""HTTP request to a user-supplied URL, optionally signed with HMAC-SHA256.

Signing: ``X-Pilot-Timestamp: <unix seconds>`` and
``X-Pilot-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body bytes>``, computed
over exactly the bytes sent. A receiver recomputes it and rejects stale timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any, ClassVar

from provider_registry import ActionSpec, CredentialSpec, ExecutionContext, Provider, ProviderResult
from providers._openai_compat import send, upstream_message

if TYPE_CHECKING:
    from outbound import OutboundResponse

BODY_CHARS = 64 * 1024
MAX_TIMEOUT_S = 120
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE"})
SIGNATURE_HEADER = "X-Pilot-Signature"
TIMESTAMP_HEADER = "X-Pilot-Timestamp"

_SCALAR = {"type": ["string", "number", "boolean"]}
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "minLength": 1, "description": "http(s) URL; subject to the outbound allow-list"},
        "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"], "default": "POST"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "query": {"type": "object", "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]}},
        "json": {"description": "any JSON value, sent as application/json"},
        "body": {"type": "string", "description": "raw body, sent as is"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
    },
    "required": ["url"],
    "not": {"required": ["json", "body"]},
    "additionalProperties": False,
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Pilot-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class WebhookProvider(Provider):
    """``request``: one HTTP request; success when the status is below 400."""

    name = "webhook"
    description = "HTTP request to any allowed URL, optionally HMAC-signed"
    actions: ClassVar[dict[str, ActionSpec]] = {
        "request": ActionSpec(
            "Send an HTTP request; data has status, headers, json (parsed or null) and body (text, first 64 KB)",
            REQUEST_SCHEMA,
        )
    }
    credential_types: ClassVar[dict[str, CredentialSpec]] = {
        "hmac_secret": CredentialSpec("secret for the X-Pilot-Signature HMAC-SHA256 header", required=False),
    }

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        if action != "request":
            return self.unknown_action(action)
        method = params.get("method", "POST")
        headers = dict(params.get("headers") or {})
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
