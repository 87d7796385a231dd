"""Tests for outbound.py: address checks, then real requests against loopback servers only.

No test sends traffic to a non-loopback address: public addresses are only checked,
and host names other than ``localhost`` go through an injected resolver.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pilot.errors import ConfigurationError, PilotError, ValidationError
from pilot.http.errors import status_for
from pilot.security.outbound import (
    Headers,
    InvalidURL,
    IPAddress,
    OutboundClient,
    OutboundConnectionError,
    OutboundPolicy,
    OutboundResponse,
    OutboundTimeout,
    ResponseTooLarge,
    SSRFBlocked,
    TooManyRedirects,
    check_address,
    resolve,
)
from pilot.settings import load_settings

EMPTY = OutboundPolicy()
LOOPBACK_1 = OutboundPolicy.from_entries(["127.0.0.1/32"])
LOOPBACK_8 = OutboundPolicy.from_entries(["127.0.0.0/8"])


def _server(host: str = "127.0.0.1", **kwargs: object) -> Iterator[HTTPServer]:
    server = HTTPServer(host=host, port=0, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@pytest.fixture(scope="module")
def _second_server() -> Iterator[HTTPServer]:
    yield from _server("127.0.0.2")


@pytest.fixture
def second(_second_server: HTTPServer) -> HTTPServer:
    """A server on 127.0.0.2: loopback, but outside the 127.0.0.1/32 allow-list."""
    _second_server.clear()
    return _second_server


@pytest.fixture(scope="module")
def _threaded_server() -> Iterator[HTTPServer]:
    yield from _server(threaded=True)


@pytest.fixture
def slow(_threaded_server: HTTPServer) -> HTTPServer:
    """A threaded server for handlers that sleep, so they never hold up the shared one."""
    _threaded_server.clear()
    return _threaded_server


@pytest.fixture
def server(httpserver_ipv4: HTTPServer) -> HTTPServer:
    return httpserver_ipv4


@pytest.fixture
def make_client() -> Iterator[type[OutboundClient]]:
    clients: list[OutboundClient] = []

    class Tracked(OutboundClient):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            clients.append(self)

    yield Tracked
    for client in clients:
        client.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- address checks: no connection is ever attempted -------------------------------------

FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("100.100.100.200", "metadata"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - checked only, never bound
    ("224.0.0.1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "reserved"),
    ("198.18.0.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fd00::1", "unique-local"),
    ("fc00::1", "unique-local"),
    ("fd00:ec2::254", "metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "reserved"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:10.0.0.1", "private"),
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::", "metadata"),  # 6to4 of 169.254.169.254
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
]


@pytest.mark.parametrize(("address", "kind"), FORBIDDEN)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    with pytest.raises(SSRFBlocked) as info:
        check_address(address, EMPTY)
    assert kind in info.value.message
    assert (status_for(info.value), info.value.code, info.value.retryable) == (400, "ssrf_blocked", False)
    assert "OUTBOUND_ALLOWLIST" in info.value.message


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    check_address(address, EMPTY)  # a check only: nothing connects to these


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "0x7f.0.0.1"])
def test_numeric_spellings_of_loopback_are_normalized_then_refused(spelling: str) -> None:
    addresses = resolve(spelling, 80)
    assert [str(a) for a in addresses] == ["127.0.0.1"]
    with pytest.raises(SSRFBlocked, match="loopback"):
        check_address(addresses[0], EMPTY, host=spelling)


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1"])
def test_normalization_agrees_with_the_c_library(spelling: str) -> None:
    try:  # AI_NUMERICHOST: never a DNS query
        infos = socket.getaddrinfo(spelling, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pytest.skip("this C library rejects the legacy spelling")
    assert {str(a) for a in resolve(spelling, 80)} == {info[4][0] for info in infos}


def test_resolving_localhost_gives_loopback_addresses() -> None:
    addresses = resolve("localhost", 80)
    assert addresses and all(a.is_loopback for a in addresses)


def test_allow_list_parsing_and_matching() -> None:
    policy = OutboundPolicy.from_entries([" Localhost ", "", "10.0.0.0/8", "192.168.1.5", "::1", "*.corp.example"])
    assert policy.hosts == {"localhost", "*.corp.example"}
    assert [str(n) for n in policy.networks] == ["10.0.0.0/8", "192.168.1.5/32", "::1/128"]
    check_address("10.9.8.7", policy)
    check_address("192.168.1.5", policy)
    check_address("::1", policy)
    check_address("127.0.0.1", policy, host="localhost")
    check_address("172.16.0.1", policy, host="db.corp.example")
    with pytest.raises(SSRFBlocked):
        check_address("192.168.1.6", policy)
    with pytest.raises(SSRFBlocked):
        check_address("172.16.0.1", policy, host="corp.example.evil")


def test_allow_list_reads_the_settings_tuple(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOUND_ALLOWLIST", "localhost, 127.0.0.0/8")
    settings = load_settings()
    policy = OutboundPolicy.from_entries(settings.outbound_allowlist)
    check_address("127.0.0.2", policy)
    check_address("::ffff:127.0.0.1", policy)  # the mapped form is inside 127.0.0.0/8 too


@pytest.mark.parametrize(
    "entry", ["10.0.0.0/33", "300.1.1.1", "10.0.0.0/8/8", "localhost:8080", "not a host", "fe80::zz"]
)
def test_bad_allow_list_entries_stop_startup(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="OUTBOUND_ALLOWLIST"):
        OutboundPolicy.from_entries([entry])


def test_an_allow_listed_name_does_not_unlock_cloud_metadata() -> None:
    policy = OutboundPolicy.from_entries(["metadata.internal"])
    check_address("10.0.0.1", policy, host="metadata.internal")
    with pytest.raises(SSRFBlocked, match="metadata"):
        check_address("169.254.169.254", policy, host="metadata.internal")
    check_address("169.254.169.254", OutboundPolicy.from_entries(["169.254.169.254"]))


def test_refusal_names_the_host_but_not_the_address_it_resolves_to() -> None:
    with pytest.raises(SSRFBlocked) as info:
        check_address("10.1.2.3", EMPTY, host="db.internal")
    assert "db.internal" in info.value.message and "10.1.2.3" not in info.value.message
    assert info.value.details == {"host": "db.internal", "reason": "private address"}
    assert isinstance(info.value, PilotError)


def test_error_classes_carry_status_code_and_retryable() -> None:
    expected = {
        OutboundTimeout: ("timeout", True),
        OutboundConnectionError: ("connection_error", True),
        ResponseTooLarge: ("response_too_large", False),
        TooManyRedirects: ("too_many_redirects", False),
        InvalidURL: ("invalid_url", False),
    }
    for cls, (code, retryable) in expected.items():
        error = cls("x")
        assert isinstance(error, PilotError)
        assert (error.code, error.retryable) == (code, retryable)
    assert status_for(InvalidURL("x")) == 400 and isinstance(InvalidURL("x"), ValidationError)


# --- responses ---------------------------------------------------------------------------


def _response(headers: dict[str, str], content: bytes = b"") -> OutboundResponse:
    return OutboundResponse(200, Headers(headers), content, "http://example.test/")


def test_retry_after_seconds_and_http_date() -> None:
    now = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
    later = email.utils.format_datetime(now + dt.timedelta(seconds=90), usegmt=True)
    earlier = email.utils.format_datetime(now - dt.timedelta(seconds=90), usegmt=True)
    assert _response({"Retry-After": "120"}).retry_after() == 120.0
    assert _response({"retry-after": " 1.5 "}).retry_after() == 1.5
    assert _response({"Retry-After": later}).retry_after(now=now) == 90.0
    assert _response({"Retry-After": earlier}).retry_after(now=now) == 0.0
    for value in ["-5", "soon", ""]:
        assert _response({"Retry-After": value}).retry_after() is None
    assert _response({}).retry_after() is None


def test_headers_are_case_insensitive_and_a_plain_dict() -> None:
    headers = Headers({"Content-Type": "text/plain", "X-Thing": "1"})
    assert headers["content-type"] == headers["CONTENT-TYPE"] == "text/plain"
    assert "x-THING" in headers and headers.get("X-Missing") is None
    assert isinstance(headers, dict) and dict(headers) == {"content-type": "text/plain", "x-thing": "1"}


def test_text_uses_the_declared_charset_and_json_rejects_garbage() -> None:
    assert _response({"Content-Type": "text/plain; charset=latin-1"}, "é".encode("latin-1")).text == "é"
    assert _response({}, "é".encode()).text == "é"
    with pytest.raises(ValueError):
        _response({}, b"{not json").json()


# --- URLs refused before any resolution --------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_x",
        "javascript:alert(1)",
        "//127.0.0.1/",
        "http:///path",
        "http://user:hunter2@127.0.0.1/",
        "http://user@127.0.0.1/",
        "http://127.0.0.1:80@127.0.0.2/",
        "http://127.0.0.1\\@127.0.0.2/",
        "http://exa mple.test/",
        "http://example.test/\r\nX-Injected: 1",
        "http://127.0.0.1:99999/",
        "http://[::1/",
        "http://bad_host!.test/",
    ],
)
def test_invalid_urls_are_refused(url: str) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return []

    client = OutboundClient(LOOPBACK_8, resolver=resolver)
    with pytest.raises(InvalidURL) as info:
        client.request("GET", url)
    assert status_for(info.value) == 400 and calls == []
    assert "hunter2" not in info.value.message


# --- end to end, loopback only -----------------------------------------------------------


def test_loopback_is_refused_without_allow_list_and_nothing_is_sent(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/hook").respond_with_data("hi")
    with pytest.raises(SSRFBlocked) as info:
        make_client(EMPTY).request("GET", server.url_for("/hook?token=SECRET"))
    assert server.log == []
    assert "127.0.0.1" in info.value.message
    assert "SECRET" not in info.value.message and "SECRET" not in str(info.value.details)


@pytest.mark.parametrize("entries", [["127.0.0.1"], ["127.0.0.0/8"]])
def test_allow_listed_loopback_is_reached(server: HTTPServer, make_client: type, entries: list[str]) -> None:
    server.expect_request("/hook", query_string="a=1&b=2").respond_with_json({"ok": True}, headers={"X-Reply": "yes"})
    resp = make_client(OutboundPolicy.from_entries(entries)).request(
        "GET", server.url_for("/hook?a=1"), params={"b": "2"}, headers={"Authorization": "Bearer t"}, timeout=5
    )
    assert (resp.status, resp.ok, resp.json()) == (200, True, {"ok": True})
    assert resp.headers["x-reply"] == resp.headers["X-Reply"] == "yes"
    assert resp.url == server.url_for("/hook?a=1&b=2")
    request = server.log[0][0]
    assert request.headers["User-Agent"] == "Pilot/0.1" and request.headers["Authorization"] == "Bearer t"
    assert request.headers["Host"] == f"127.0.0.1:{server.port}"


def test_post_json_body(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/in", method="POST", json={"x": 1}).respond_with_data("created", status=201)
    resp = make_client(LOOPBACK_1).request("post", server.url_for("/in"), json={"x": 1}, timeout=5)
    assert (resp.status, resp.text) == (201, "created")


def test_localhost_is_allowed_only_when_listed(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/").respond_with_data("hi")
    url = f"http://localhost:{server.port}/"
    with pytest.raises(SSRFBlocked, match="'localhost'"):
        make_client(EMPTY).request("GET", url)
    assert server.log == []
    resp = make_client(OutboundPolicy.from_entries(["localhost"])).request("GET", url, timeout=5)
    assert resp.text == "hi"
    assert server.log[0][0].headers["Host"] == f"localhost:{server.port}"


def test_numeric_spelling_in_a_url_is_checked_as_the_address_it_means(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/").respond_with_data("hi")
    with pytest.raises(SSRFBlocked, match="loopback"):
        make_client(EMPTY).request("GET", f"http://2130706433:{server.port}/")
    assert server.log == []
    assert make_client(LOOPBACK_1).request("GET", f"http://0x7f.1:{server.port}/", timeout=5).text == "hi"


def test_connects_to_the_checked_address_without_a_second_lookup(second: HTTPServer, make_client: type) -> None:
    """The name resolves (once, via the injected resolver) to 127.0.0.2, where the system would never send it."""
    second.expect_request("/").respond_with_data("pinned")
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return resolve("127.0.0.2", port) if len(calls) == 1 else resolve("10.0.0.1", port)  # a rebinding answer

    client = make_client(OutboundPolicy.from_entries(["127.0.0.2"]), resolver=resolver)
    resp = client.request("GET", f"http://service.test:{second.port}/", timeout=5)
    assert resp.text == "pinned" and calls == ["service.test"]
    assert second.log[0][0].headers["Host"] == f"service.test:{second.port}"
    assert resp.url == f"http://service.test:{second.port}/"


def test_any_forbidden_address_refuses_the_whole_host(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/").respond_with_data("hi")
    client = make_client(LOOPBACK_1, resolver=lambda host, port: resolve("127.0.0.1", 0) + resolve("10.0.0.1", 0))
    with pytest.raises(SSRFBlocked, match="private"):
        client.request("GET", f"http://mixed.test:{server.port}/")
    assert server.log == []


def test_an_unreachable_address_falls_through_to_the_next_checked_one(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/").respond_with_data("second address")
    client = make_client(LOOPBACK_8, resolver=lambda host, port: resolve("127.0.0.3", 0) + resolve("127.0.0.1", 0))
    assert client.request("GET", f"http://two.test:{server.port}/", timeout=5).text == "second address"


def test_redirect_to_a_forbidden_address_is_refused_before_connecting(
    server: HTTPServer, second: HTTPServer, make_client: type
) -> None:
    second.expect_request("/internal").respond_with_data("secret")
    target = f"http://127.0.0.2:{second.port}/internal"
    server.expect_request("/go").respond_with_data("", status=302, headers={"Location": target})
    with pytest.raises(SSRFBlocked, match=re.escape("127.0.0.2")):
        make_client(LOOPBACK_1).request("GET", server.url_for("/go"), timeout=5)
    assert len(server.log) == 1 and second.log == []


def test_redirect_to_a_non_http_scheme_is_refused(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/go").respond_with_data("", status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(InvalidURL, match="http and https"):
        make_client(LOOPBACK_1).request("GET", server.url_for("/go"), timeout=5)


@pytest.mark.parametrize(
    ("status", "method", "expected_method", "keeps_body"),
    [(302, "POST", "GET", False), (301, "POST", "GET", False), (303, "PUT", "GET", False), (307, "POST", "POST", True)],
)
def test_redirect_method_and_body_rules(
    server: HTTPServer, make_client: type, status: int, method: str, expected_method: str, keeps_body: bool
) -> None:
    server.expect_request("/from").respond_with_data("", status=status, headers={"Location": "/to?x=1"})
    server.expect_request("/to", method=expected_method, query_string="x=1").respond_with_data("landed")
    resp = make_client(LOOPBACK_1).request(method, server.url_for("/from"), json={"k": "v"}, timeout=5)
    assert (resp.text, resp.url) == ("landed", server.url_for("/to?x=1"))
    landed = server.log[1][0]
    assert landed.get_data() == (b'{"k": "v"}' if keeps_body else b"")
    assert ("Content-Type" in landed.headers) is keeps_body


def test_cross_origin_redirect_drops_credentials(server: HTTPServer, second: HTTPServer, make_client: type) -> None:
    second.expect_request("/elsewhere").respond_with_data("ok")
    server.expect_request("/same").respond_with_data("", status=302, headers={"Location": "/go"})
    location = f"http://127.0.0.2:{second.port}/elsewhere"
    server.expect_request("/go").respond_with_data("", status=302, headers={"Location": location})
    secrets = {"Authorization": "Bearer t", "X-Api-Key": "k", "Cookie": "s=1", "Accept-Language": "fr"}
    resp = make_client(LOOPBACK_8).request("GET", server.url_for("/same"), headers=secrets, timeout=5)
    assert resp.text == "ok"
    assert server.log[1][0].headers["Authorization"] == "Bearer t"  # same origin keeps it
    headers = second.log[0][0].headers
    assert "Authorization" not in headers and "X-Api-Key" not in headers and "Cookie" not in headers
    assert headers["Accept-Language"] == "fr" and headers["User-Agent"] == "Pilot/0.1"


@pytest.mark.parametrize("max_redirects", [0, 3])
def test_redirect_cap(server: HTTPServer, make_client: type, max_redirects: int) -> None:
    server.expect_request("/loop").respond_with_data("", status=302, headers={"Location": "/loop"})
    with pytest.raises(TooManyRedirects):
        make_client(LOOPBACK_1, max_redirects=max_redirects).request("GET", server.url_for("/loop"), timeout=5)
    assert len(server.log) == max_redirects + 1


def test_response_size_cap_with_content_length(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/big").respond_with_data(b"x" * 1001)
    server.expect_request("/fits").respond_with_data(b"x" * 1000)
    client = make_client(LOOPBACK_1, max_bytes=1000)
    with pytest.raises(ResponseTooLarge) as info:
        client.request("GET", server.url_for("/big"), timeout=5)
    assert info.value.details["limit"] == 1000
    assert client.request("GET", server.url_for("/fits"), timeout=5).content == b"x" * 1000


def test_response_size_cap_while_streaming(server: HTTPServer, make_client: type) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):  # 100 KiB with no Content-Length
            yield b"y" * 1024

    server.expect_request("/stream").respond_with_response(Response(chunks()))
    with pytest.raises(ResponseTooLarge):
        make_client(LOOPBACK_1, max_bytes=10_000).request("GET", server.url_for("/stream"), timeout=5)


def test_response_size_cap_counts_decompressed_bytes(server: HTTPServer, make_client: type) -> None:
    bomb = gzip.compress(b"\0" * 2_000_000)
    assert len(bomb) < 10_000
    server.expect_request("/gz").respond_with_data(bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(ResponseTooLarge):
        make_client(LOOPBACK_1, max_bytes=100_000).request("GET", server.url_for("/gz"), timeout=5)


def test_gzip_body_is_decoded(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/gz").respond_with_data(gzip.compress(b'{"a": 1}'), headers={"Content-Encoding": "gzip"})
    assert make_client(LOOPBACK_1).request("GET", server.url_for("/gz"), timeout=5).json() == {"a": 1}


def test_timeout_against_a_sleeping_handler(slow: HTTPServer, make_client: type) -> None:
    def sleepy(request: Request) -> Response:
        time.sleep(1.0)
        return Response("late")

    slow.expect_request("/sleep").respond_with_handler(sleepy)
    started = time.monotonic()
    with pytest.raises(OutboundTimeout) as info:
        make_client(LOOPBACK_1).request("GET", slow.url_for("/sleep?token=SECRET"), timeout=0.3)
    assert time.monotonic() - started < 0.9
    assert info.value.retryable and status_for(info.value) == 504 and "SECRET" not in info.value.message


def test_overall_timeout_against_a_slow_drip(slow: HTTPServer, make_client: type) -> None:
    def drip() -> Iterator[bytes]:
        for _ in range(10):  # every read arrives within the timeout, the whole body does not
            time.sleep(0.1)
            yield b"."

    slow.expect_request("/drip").respond_with_response(Response(drip()))
    started = time.monotonic()
    with pytest.raises(OutboundTimeout):
        make_client(LOOPBACK_1).request("GET", slow.url_for("/drip"), timeout=0.4)
    assert time.monotonic() - started < 0.9


def test_connection_refused_is_retryable_and_keeps_the_query_secret(make_client: type) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x?token=SECRET"
    with pytest.raises(OutboundConnectionError) as info:
        make_client(LOOPBACK_1).request("GET", url, timeout=2)
    assert info.value.retryable and "refused" in info.value.message.lower()
    assert "SECRET" not in info.value.message and info.value.__cause__ is None


def test_malformed_json_and_retry_after_from_a_real_response(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/limited").respond_with_data("{oops", status=429, headers={"Retry-After": "7"})
    resp = make_client(LOOPBACK_1).request("GET", server.url_for("/limited"), timeout=5)
    assert (resp.status, resp.ok, resp.retry_after()) == (429, False, 7.0)
    with pytest.raises(ValueError):
        resp.json()


def test_environment_proxies_are_ignored(
    server: HTTPServer, make_client: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server.expect_request("/").respond_with_data("direct")
    assert make_client(LOOPBACK_1).request("GET", server.url_for("/"), timeout=5).text == "direct"


def test_cookies_are_never_carried_between_requests(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/set").respond_with_data("", headers={"Set-Cookie": "session=abc; Path=/"})
    server.expect_request("/next").respond_with_data("")
    client = make_client(LOOPBACK_1)
    client.request("GET", server.url_for("/set"), timeout=5)
    client.request("GET", server.url_for("/next"), timeout=5)
    assert "Cookie" not in server.log[1][0].headers


def test_one_client_shared_by_threads(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/n").respond_with_handler(lambda request: Response(request.args["i"]))
    client = make_client(LOOPBACK_1)
    with ThreadPoolExecutor(max_workers=6) as pool:
        texts = list(pool.map(lambda i: client.request("GET", server.url_for(f"/n?i={i}"), timeout=5).text, range(30)))
    assert texts == [str(i) for i in range(30)]


def test_timeout_must_be_positive(make_client: type) -> None:
    with pytest.raises(ValidationError):
        make_client(LOOPBACK_1).request("GET", "http://127.0.0.1:1/", timeout=0)


# --- TLS: the pinned IP is dialled, the name is verified ---------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and two leaf certificates: one for localhost/127.0.0.1, one for another name."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pilot test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    sans = {"good": [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]}
    sans["other"] = [x509.DNSName("other.test")]
    for label, names in sans.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (folder / f"{label}.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return {"ca": folder / "ca.pem", "good": folder / "good.pem", "other": folder / "other.pem"}


def _tls_server(certfile: Path, seen_names: list[str | None]) -> Iterator[HTTPServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile)
    context.sni_callback = lambda sock, name, ctx: seen_names.append(name)
    yield from _server(ssl_context=context, threaded=True)


def test_https_dials_the_ip_but_verifies_and_sends_the_name(tls: dict[str, Path], make_client: type) -> None:
    names: list[str | None] = []
    for https in _tls_server(tls["good"], names):
        https.expect_request("/").respond_with_data("secure")
        client = make_client(OutboundPolicy.from_entries(["localhost"]), ca_bundle=str(tls["ca"]))
        assert client.request("GET", f"https://localhost:{https.port}/", timeout=5).text == "secure"
        assert names == ["localhost"]
        assert https.log[0][0].headers["Host"] == f"localhost:{https.port}"
        ip_client = make_client(LOOPBACK_1, ca_bundle=str(tls["ca"]))
        assert ip_client.request("GET", f"https://127.0.0.1:{https.port}/", timeout=5).text == "secure"


def test_https_refuses_a_certificate_for_another_name(tls: dict[str, Path], make_client: type) -> None:
    names: list[str | None] = []
    for https in _tls_server(tls["other"], names):
        https.expect_request("/").respond_with_data("wrong")
        client = make_client(OutboundPolicy.from_entries(["localhost"]), ca_bundle=str(tls["ca"]))
        with pytest.raises(OutboundConnectionError) as info:
            client.request("GET", f"https://localhost:{https.port}/", timeout=5)
        assert not info.value.retryable and "TLS" in info.value.message
        assert https.log == []


def test_thread_local_adapters_are_closed(server: HTTPServer, make_client: type) -> None:
    server.expect_request("/ping").respond_with_data("pong")
    client = make_client(LOOPBACK_1)
    adapters: list[Any] = []

    def call() -> None:
        assert client.request("GET", server.url_for("/ping"), timeout=10).text == "pong"
        adapters.append(client._adapter())

    call()
    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=30)
    assert len(adapters) == 2 and adapters[0] is not adapters[1]  # one pool per thread ...
    assert [len(adapter.poolmanager.pools) for adapter in adapters] == [1, 1]  # ... each holding its connection
    client.close()
    assert [len(adapter.poolmanager.pools) for adapter in adapters] == [0, 0]  # both closed, not only this thread's
