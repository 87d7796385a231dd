"""The one path for every outbound HTTP call, with SSRF protection (the address policy is in ``ssrf.py``).

For each hop (the first request and every redirect) ``OutboundClient`` parses the URL,
resolves the host once, refuses the hop unless every resolved address is public or
allow-listed, and then connects to exactly the address it checked: the URL handed to
urllib3 names the IP, while the original name travels in the ``Host`` header and is
used for TLS SNI and certificate verification. No second DNS lookup happens, so a
rebinding DNS server cannot swap the address between check and connect.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import ipaddress
import json as jsonlib
import os
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError

from pilot.errors import ConfigurationError, ValidationError
from pilot.security.ssrf import (
    HOSTNAME,
    IPAddress,
    OutboundError,
    OutboundPolicy,
    SSRFBlocked,
    check_address,
    ip_literal,
)

__all__ = [
    "Headers",
    "IPAddress",
    "InvalidURL",
    "OutboundClient",
    "OutboundConnectionError",
    "OutboundError",
    "OutboundPolicy",
    "OutboundResponse",
    "OutboundStream",
    "OutboundTimeout",
    "ResponseTooLarge",
    "SSRFBlocked",
    "TooManyRedirects",
    "check_address",
    "resolve",
]

Resolver = Callable[[str, int], list[IPAddress]]


class InvalidURL(OutboundError, ValidationError):
    code = "invalid_url"


class OutboundTimeout(OutboundError):
    code, retryable = "timeout", True


class OutboundConnectionError(OutboundError):
    """A connection failed; ``upstream_fault`` when the upstream refused, reset or dropped it (the
    circuit breaker counts those), not for DNS, TLS or an unreachable route of ours."""

    code, retryable = "connection_error", True
    upstream_fault = False


class ResponseTooLarge(OutboundError):
    code = "response_too_large"


class TooManyRedirects(OutboundError):
    code = "too_many_redirects"


_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f\\]")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SAFE_ACROSS_ORIGINS = frozenset(
    {"accept", "accept-encoding", "accept-language", "cache-control", "content-language", "content-type", "user-agent"}
)
_BODY_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding"})
_CHUNK = 65_536


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` stands for, in resolver order, without duplicates.

    IP literals, including the spellings inet_aton accepts (``2130706433``,
    ``0x7f000001``, ``0177.0.0.1``, ``127.1``), are normalized without a lookup; names
    go through ``socket.getaddrinfo``. Raises OutboundConnectionError when it fails.
    """
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        retry = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
        raise OutboundConnectionError(
            f"could not resolve host {host!r}", retryable=retry, details={"host": host}
        ) from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        addr = ipaddress.ip_address(sockaddr[0])
        if addr not in found:
            found.append(addr)
    return found


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def same_origin(self, other: _Target) -> bool:
        upgrade = (self.scheme, self.port, other.scheme, other.port) == ("http", 80, "https", 443)
        return self.host == other.host and (upgrade or (self.scheme, self.port) == (other.scheme, other.port))


def _parse_url(url: str) -> _Target:
    if not isinstance(url, str) or len(url) > 8192 or _UNSAFE_URL.search(url):
        raise InvalidURL("the URL is too long or contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii").lower()
    except (ValueError, UnicodeError):
        raise InvalidURL("the URL is malformed") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise InvalidURL(f"only http and https URLs are allowed, not {parts.scheme or 'a URL without scheme'!r}")
    if "@" in parts.netloc:
        raise InvalidURL("credentials in the URL (user:pass@) are not allowed; send them in a header")
    if not host or (ip_literal(host) is None and (":" in host or not HOSTNAME.fullmatch(host))):
        raise InvalidURL("the URL has no valid host")
    if port is not None and not 0 < port < 65536:
        raise InvalidURL(f"port {port} is out of range")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, host, port or _DEFAULT_PORTS[parts.scheme], path)


class Headers(dict[str, str]):
    """Response headers with case-insensitive lookup (keys are stored lower-case)."""

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((k.lower(), v) for k, v in (items.items() if isinstance(items, Mapping) else items))

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass
class OutboundResponse:
    """A fully read response; ``url`` is the final URL after redirects."""

    status: int
    headers: dict[str, str]
    content: bytes
    url: str

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def text(self) -> str:
        """The body decoded with the declared charset (UTF-8 when none), invalid bytes replaced."""
        match = re.search(r"charset=[\"']?([\w.:-]+)", self.headers.get("content-type", ""), re.IGNORECASE)
        try:
            return self.content.decode(match.group(1) if match else "utf-8", errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return jsonlib.loads(self.content)

    def retry_after(self, now: datetime | None = None) -> float | None:
        """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP-date, never negative), else None."""
        value = self.headers.get("retry-after", "").strip()
        if re.fullmatch(r"\d{1,10}(\.\d+)?", value):
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _PinnedRequest(requests.PreparedRequest):
    """A request whose URL names the checked IP; ``server_hostname`` is the name it stands for."""

    server_hostname: str | None = None


class _PinnedAdapter(HTTPAdapter):
    """Keys pools by the original name too and uses it for TLS SNI and certificate checks."""

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: str | tuple[str, str] | None = None
    ) -> tuple[Any, Any]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        name = getattr(request, "server_hostname", None)
        if host_params["scheme"] == "https" and name:
            # Only server_hostname: assert_hostname would make urllib3 flip check_hostname off on the shared context.
            return host_params, {**pool_kwargs, "server_hostname": name}
        return host_params, pool_kwargs


def _cause(exc: BaseException) -> str:
    """A short reason from the exception chain; never the URL, which may carry secrets."""
    current: BaseException | None = exc
    for _ in range(12):  # exception chains are short; bound the walk anyway
        if current is None:
            break
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or "certificate verification failed"
        if isinstance(current, OSError) and not isinstance(current, requests.RequestException) and current.strerror:
            return str(current.strerror)
        first = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__ or first
    return type(exc).__name__


_PEER_FAILURES = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    http.client.RemoteDisconnected,
    ProtocolError,
)


def _peer_failed(exc: BaseException) -> bool:
    """Whether the exception chain shows the peer refused, reset or dropped the connection."""
    current: BaseException | None = exc
    for _ in range(12):  # exception chains are short; bound the walk anyway
        if current is None:
            return False
        if isinstance(current, _PEER_FAILURES):
            return True
        first = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__ or first
    return False


def _connection_error(message: str, exc: BaseException, **kwargs: Any) -> OutboundConnectionError:
    error = OutboundConnectionError(message, **kwargs)
    error.upstream_fault = _peer_failed(exc)
    return error


def _translate(exc: requests.RequestException, target: _Target, sent: bool) -> OutboundError:
    where, details = f"{target.host}:{target.port}", {"host": target.host}
    if isinstance(exc, requests.Timeout):
        return OutboundTimeout(f"{where} did not answer within the timeout", details=details, request_sent=sent)
    if isinstance(exc, requests.exceptions.SSLError):
        return OutboundConnectionError(f"TLS with {where} failed: {_cause(exc)}", retryable=False, details=details)
    return _connection_error(f"connection to {where} failed: {_cause(exc)}", exc, details=details, request_sent=sent)


class OutboundClient:
    """Sends HTTP requests to destinations the policy permits; safe to share between threads.

    ``ca_bundle`` adds a CA file (a private CA); ``resolver`` replaces DNS (tests, caching).
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        max_redirects: int = 5,
        max_bytes: int = 5_000_000,
        user_agent: str = "Pilot/0.1",
        ca_bundle: str | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        if max_redirects < 0 or max_bytes < 1:
            raise ValueError("max_redirects must be >= 0 and max_bytes >= 1")
        if ca_bundle is not None and not os.path.exists(ca_bundle):
            raise ConfigurationError(f"CA bundle {ca_bundle!r} does not exist")
        self.policy, self.max_redirects, self.max_bytes = policy, max_redirects, max_bytes
        self.user_agent, self._verify, self._resolver = user_agent, ca_bundle or True, resolver
        self._local, self._lock = threading.local(), threading.Lock()
        self._adapters: weakref.WeakSet[HTTPAdapter] = weakref.WeakSet()

    def _adapter(self) -> HTTPAdapter:
        adapter: HTTPAdapter | None = getattr(self._local, "adapter", None)
        if adapter is None:  # one connection pool per thread
            adapter = self._local.adapter = _PinnedAdapter()
            with self._lock:
                self._adapters.add(adapter)
        return adapter

    def close(self) -> None:
        """Close pooled connections of every thread; call when no request is in flight."""
        with self._lock:
            adapters = list(self._adapters)
        for adapter in adapters:
            adapter.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        timeout: float = 30.0,
    ) -> OutboundResponse:
        """Send one request, following redirects, and return the whole response.

        Every hop is resolved once, checked (all of its addresses) and connected to the
        checked address. At most ``max_redirects`` redirects are followed (303, and 301/302
        after POST, become GET without body); a redirect to another origin forwards only
        harmless headers (no Authorization, Cookie or API-key headers). No single connect
        or read waits longer than ``timeout``, and the exchange is abandoned once ``timeout``
        has elapsed overall. Bodies above ``max_bytes`` raise ResponseTooLarge.
        """
        resp, target, final_url, deadline = self._open(method, url, headers, params, json, data, timeout)
        return self._read(resp, target, final_url, deadline)

    def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        timeout: float = 30.0,
    ) -> OutboundStream:
        """Send one request like ``request`` and return once the status and headers have arrived.

        The body is read piece by piece from ``OutboundStream.chunks()`` as the server sends
        it (Server-Sent Events from a model API): the same address checks, redirect rules,
        size cap and overall ``timeout`` apply. The caller must ``close()`` the stream; closing
        it early closes the connection, which is how an upstream call is cancelled.
        """
        sent = {"Accept-Encoding": "identity", **(headers or {})}  # no decoder buffering between events
        resp, target, final_url, deadline = self._open(method, url, sent, None, json, data, timeout)
        return OutboundStream(self, resp, target, final_url, deadline)

    def _open(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Any,
        timeout: float,
    ) -> tuple[requests.Response, _Target, str, float]:
        """Send the request and follow redirects; the final response (body unread), its target and URL, the deadline."""
        if not timeout > 0:
            raise ValidationError("timeout must be a positive number of seconds")
        deadline, method = time.monotonic() + timeout, method.upper()
        target = _parse_url(url)
        sent = {"User-Agent": self.user_agent, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
        sent.update({k: v for k, v in (headers or {}).items() if k.lower() != "host"})
        for _ in range(self.max_redirects + 1):
            resp, final_url = self._send(method, target, sent, {"params": params, "json": json, "data": data}, deadline)
            location = resp.headers.get("location") if resp.status_code in _REDIRECTS else None
            if not location:
                return resp, target, final_url, deadline
            resp.close()
            with_body = resp.status_code in (307, 308) or (resp.status_code != 303 and method != "POST")
            if not with_body:
                method = "HEAD" if method == "HEAD" else "GET"
                json = data = None
                sent = {k: v for k, v in sent.items() if k.lower() not in _BODY_HEADERS}
            with contextlib.suppress(UnicodeError):  # as requests does for raw UTF-8 in headers
                location = location.encode("latin1").decode("utf-8")
            nxt = _parse_url(urljoin(final_url, location))
            if not target.same_origin(nxt):
                sent = {k: v for k, v in sent.items() if k.lower() in _SAFE_ACROSS_ORIGINS}
            target, params = nxt, None
        raise TooManyRedirects(f"more than {self.max_redirects} redirects from {target.host!r}")

    def _send(
        self,
        method: str,
        target: _Target,
        headers: dict[str, str],
        body: dict[str, Any],
        deadline: float,
    ) -> tuple[requests.Response, str]:
        addresses = self._resolver(target.host, target.port)
        if not addresses:
            raise OutboundConnectionError(f"host {target.host!r} has no address", details={"host": target.host})
        for addr in addresses:  # every address must pass: the resolver's order is not ours to trust
            check_address(addr, self.policy, host=target.host)
        for index, addr in enumerate(addresses):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OutboundTimeout(f"{target.host}:{target.port} did not answer within the timeout")
            ip = f"[{addr}]" if addr.version == 6 else str(addr)
            prepared = _PinnedRequest()
            try:
                prepared.prepare(
                    method=method,
                    url=f"{target.scheme}://{ip}:{target.port}{target.path}",
                    headers={**headers, "Host": target.netloc},
                    **body,
                )
            except requests.RequestException as exc:
                raise ValidationError(f"cannot build the request: {_cause(exc)}") from None
            prepared.server_hostname = None if ip_literal(target.host) else target.host
            try:
                resp = self._adapter().send(
                    prepared, stream=True, timeout=(remaining, remaining), verify=self._verify, proxies={}
                )
                return resp, f"{target.scheme}://{target.netloc}{prepared.path_url}"
            except requests.RequestException as exc:
                reason = getattr(exc.args[0] if exc.args else None, "reason", None)
                never_connected = isinstance(exc, requests.ConnectTimeout) or isinstance(reason, NewConnectionError)
                if never_connected and index + 1 < len(addresses):
                    continue  # nothing was sent; try the next checked address
                # Refused or never connected: nothing was sent. Anything later (a dropped
                # connection, no answer in time) may have reached the server.
                raise _translate(exc, target, sent=not never_connected) from None
        raise AssertionError("unreachable: the loop returns or raises")

    def _read(self, resp: requests.Response, target: _Target, url: str, deadline: float) -> OutboundResponse:
        body = bytearray()
        try:
            for chunk in self._chunks(resp, target, deadline):
                body += chunk
        finally:
            resp.close()
        return OutboundResponse(resp.status_code, Headers(resp.headers.items()), bytes(body), url)

    def _chunks(self, resp: requests.Response, target: _Target, deadline: float) -> Iterator[bytes]:
        """The body as it arrives, at most ``max_bytes`` in all and within ``deadline``; errors translated."""
        where, details = f"{target.host}:{target.port}", {"host": target.host}
        too_large = ResponseTooLarge(
            f"the response from {where} exceeds {self.max_bytes} bytes", details={**details, "limit": self.max_bytes}
        )
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        size = 0
        try:
            for _ in range(self.max_bytes + 1):  # each pass adds at least one byte or ends
                chunk = resp.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    return
                size += len(chunk)
                if size > self.max_bytes:
                    raise too_large
                if time.monotonic() > deadline:
                    raise OutboundTimeout(
                        f"{where} did not finish sending within the timeout", details=details, request_sent=True
                    )
                yield chunk
        except ReadTimeoutError:
            raise OutboundTimeout(
                f"{where} did not answer within the timeout", details=details, request_sent=True
            ) from None
        except (Urllib3Error, OSError) as exc:
            raise _connection_error(
                f"reading from {where} failed: {_cause(exc)}", exc, details=details, request_sent=True
            ) from None


class OutboundStream:
    """A response whose body is read as it arrives (``OutboundClient.stream``); close it when done."""

    def __init__(
        self, client: OutboundClient, resp: requests.Response, target: _Target, url: str, deadline: float
    ) -> None:
        self.status = resp.status_code
        self.headers = Headers(resp.headers.items())
        self.url = url
        self._client, self._resp, self._target, self._deadline = client, resp, target, deadline

    def chunks(self) -> Iterator[bytes]:
        """The body's bytes as the server sends them; OutboundError subclasses on failure (see ``request``)."""
        return self._client._chunks(self._resp, self._target, self._deadline)

    def read(self) -> OutboundResponse:
        """The rest of the body at once, as ``request`` returns it (for an error status), then closed."""
        return self._client._read(self._resp, self._target, self.url, self._deadline)

    def close(self) -> None:
        """Close the connection (not returned to the pool: an unfinished body cannot be reused)."""
        self._resp.close()
