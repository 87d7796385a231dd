"""HTTP plumbing shared by the network providers (openai, groq, anthropic, webhook).

``send`` makes one call through ``context.http`` and turns transport failures into
``ProviderResult.fail``; ``http_failure`` maps an upstream error status to Pilot's codes;
``exchange`` is one model API call with both; ``upstream_message`` digs the error text
out of a reply, redacted before it is shortened. This module starts with ``_`` so the
registry does not treat it as a provider.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pilot.errors import PilotError
from pilot.security.breaker import CircuitOpen, Outcome, error_outcome, status_outcome
from provider_registry import ExecutionContext, ProviderResult

if TYPE_CHECKING:
    from pilot.security.outbound import OutboundResponse
    from pilot.security.redaction import Redactor

UPSTREAM_MESSAGE_CHARS = 500


def base_url(provider: str, default: str, credentials: dict[str, str], context: ExecutionContext) -> str:
    """The user's ``base_url`` credential, else the server's default for ``provider``, else ``default``."""
    return (credentials.get("base_url") or context.base_urls.get(provider) or default).rstrip("/")


def upstream_message(response: OutboundResponse, redactor: Redactor) -> str:
    """The error text an upstream put in its body (OpenAI and Anthropic shapes), redacted, then shortened.

    Upstreams echo the key they were sent: cutting first would leave a piece of it that
    redaction by value no longer recognises, so ``redactor.cut`` redacts before it cuts.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or body.get("message") or body.get("detail")
    if not isinstance(message, str) or not message:
        # Decoding a window (not the whole body) bounds the work; a key cut by the window is
        # a piece at the end of the text, which the redactor also removes.
        message = response.content[: UPSTREAM_MESSAGE_CHARS * 8].decode("utf-8", "replace")
    return redactor.cut(message.strip(), UPSTREAM_MESSAGE_CHARS).strip()


def http_failure(response: OutboundResponse, label: str, redactor: Redactor) -> ProviderResult:
    """Map an upstream status >= 400 to a failure: credentials, rate limit, server or request error."""
    status = response.status
    detail = upstream_message(response, redactor)
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return ProviderResult.fail(
            "invalid_credentials", f"{label} refused the credentials ({status}){suffix}", http_status=status
        )
    if status == 429:
        meta: dict[str, Any] = {"http_status": status}
        retry_after = response.retry_after()
        if retry_after is not None:
            meta["retry_after"] = retry_after
        return ProviderResult.fail("rate_limited", f"{label} rate limit reached{suffix}", retryable=True, **meta)
    if status >= 500 or status == 408:
        return ProviderResult.fail(
            "upstream_error", f"{label} failed with HTTP {status}{suffix}", retryable=True, http_status=status
        )
    return ProviderResult.fail(
        "upstream_rejected", f"{label} rejected the request ({status}){suffix}", http_status=status
    )


def send(
    context: ExecutionContext, method: str, url: str, **kwargs: Any
) -> tuple[OutboundResponse | ProviderResult, float]:
    """One call through ``context.http``: ``(response, ms)``, or ``(failure, ms)`` when it raised.

    Outbound errors (``ssrf_blocked``, ``timeout``, ``connection_error``, ``invalid_url``, …)
    keep their code and retryability; one raised after the request may have reached the
    server is marked ``metadata["outcome_unknown"]``. With ``context.breakers`` the call
    passes the circuit of (provider, host) first: an open circuit fails with
    ``circuit_open`` and no request; the call's outcome is then reported to it.
    """
    kwargs.setdefault("timeout", context.timeout_s)
    breakers = context.breakers
    try:
        ticket = breakers.admit(context.provider, url) if breakers is not None else None
    except CircuitOpen as exc:
        return ProviderResult.fail(exc.code, exc.message, retry_after=exc.details["retry_after"]), 0.0
    outcome = Outcome.NEUTRAL
    started = time.perf_counter()
    try:
        response = context.http.request(method, url, **kwargs)
        outcome = status_outcome(response.status)
    except PilotError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        outcome = error_outcome(exc, float(kwargs["timeout"]), context.default_timeout_s)
        failure = ProviderResult.fail(exc.code, exc.message, retryable=bool(getattr(exc, "retryable", False)))
        if getattr(exc, "request_sent", False):
            failure.metadata["outcome_unknown"] = True
        failure.latency_ms = elapsed
        return failure, elapsed
    finally:
        if breakers is not None:
            breakers.settle(ticket, outcome)
    return response, (time.perf_counter() - started) * 1000


def exchange(
    context: ExecutionContext,
    method: str,
    url: str,
    vendor: str,
    parse: Callable[[OutboundResponse], ProviderResult],
    **kwargs: Any,
) -> ProviderResult:
    """One model API call: transport failures and HTTP errors mapped, otherwise ``parse`` the reply."""
    reply, elapsed = send(context, method, url, **kwargs)
    if isinstance(reply, ProviderResult):
        return reply
    result = http_failure(reply, vendor, context.redactor) if reply.status >= 400 else parse(reply)
    result.latency_ms = elapsed
    return result


def key_accepted(response: OutboundResponse) -> ProviderResult:
    """The result of a credentials check whose request the upstream accepted."""
    return ProviderResult.ok({"valid": True}, http_status=response.status)


def json_body(response: OutboundResponse, label: str) -> tuple[Any, ProviderResult | None]:
    """The parsed body, or an ``invalid_response`` failure when it is not JSON."""
    try:
        return response.json(), None
    except ValueError:
        return None, ProviderResult.fail(
            "invalid_response", f"{label} returned a body that is not JSON", http_status=response.status
        )
