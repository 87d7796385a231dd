"""Checks every request passes before any route sees it: its Host, its query string and its JSON body.

In ``AUTH_MODE=dev`` anyone who can reach Pilot names any user, so a web page on
another site could drive a local Pilot through DNS rebinding (its name made to
resolve to 127.0.0.1; the browser then sends that name as ``Host``). Dev mode
therefore answers only loopback hosts plus those ``ALLOWED_HOSTS`` names; in
token mode a rebinding page has no bearer token to send, so the Host check
applies only when ``ALLOWED_HOSTS`` is set.

PostgreSQL's ``text`` and ``jsonb`` refuse NUL, psycopg2 cannot encode a lone
surrogate, and JSON nested without bound exhausts the stack of every recursive
consumer (the JSON parser, pydantic, JSON Schema, templating). So a body or a
query that carries any of these is refused here, once, with a 400 naming the
field, instead of failing deep inside a route with a 500. Routes and ``auth``
read the body through ``request_json()``, which parses it once per request.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from flask import Flask, g, request

from pilot.application import current_pilot
from pilot.errors import Forbidden, ValidationError
from pilot.settings import Settings

MAX_JSON_DEPTH = 100
FORBIDDEN_CHARS = re.compile("[\x00\ud800-\udfff]")
_UNSET = object()


def field_name(path: tuple[str | int, ...], root: str = "") -> str:
    """``("steps", 0, "params")`` → ``steps[0].params``: the notation validation errors use."""
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _text_problem(text: str) -> str | None:
    found = FORBIDDEN_CHARS.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain a NUL character (\\u0000)"
    return "must be valid Unicode (a lone surrogate such as \\ud800 is not)"


def _refuse(field: str, message: str, loc: list[str | int] | None = None) -> ValidationError:
    """A 400 in the one documented shape: ``details: [{loc, msg, field}]`` (``pilot.http.validation``)."""
    where = ["body"] if loc is None else loc
    return ValidationError(f"{field}: {message}", details=[{"loc": where, "msg": message, "field": field}])


def check_json_value(value: Any, root: str = "") -> None:
    """Raise a 400 naming the first string (or key) with NUL or a lone surrogate, or a container too deep.

    Walks iteratively, so the check itself never recurses; a container at depth
    ``MAX_JSON_DEPTH + 1`` (the outermost one is depth 1) is refused.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                raise _refuse(field_name(path, root), problem, ["body", *path])
            continue
        if not isinstance(item, dict | list):
            continue
        if len(path) >= MAX_JSON_DEPTH:
            raise _refuse(field_name(path, root), f"nested deeper than {MAX_JSON_DEPTH} levels", ["body", *path])
        if isinstance(item, list):
            stack.extend((child, (*path, index)) for index, child in enumerate(item))
            continue
        for key, child in item.items():
            problem = _text_problem(key)
            if problem:
                raise _refuse(field_name(path, root), f"an object key {problem}", ["body", *path])
            stack.append((child, (*path, key)))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json(raw: bytes) -> Any:
    """Parse a request body: valid JSON, no NaN/Infinity, no NUL or lone surrogate, at most 100 levels deep."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise _refuse("body", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}") from None
    check_json_value(data)
    return data


def request_json() -> Any:
    """The current request's JSON body, parsed and checked once; None without a JSON body."""
    cached = g.get("_pilot_json", _UNSET)
    if cached is not _UNSET:
        return cached
    raw = request.get_data(cache=True)
    data = load_json(raw) if raw and request.is_json else None
    g._pilot_json = data
    return data


def check_query() -> None:
    """Refuse a query string whose names or values carry NUL (PostgreSQL could not take them as parameters)."""
    for name, value in request.args.items(multi=True):
        for text in (name, value):
            problem = _text_problem(text)
            if problem:
                raise _refuse(f"query parameter {name!r}", problem, ["query", name])


HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::[0-9]{1,5})?")


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header without its port, lower-cased, IPv6 without brackets; None if malformed."""
    found = HOST_PORT.fullmatch(header.strip())
    if found is None:
        return None
    return found["host"].strip("[]").lower().removesuffix(".")


def is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1 (written as an address, not a number)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(header: str, settings: Settings) -> bool:
    """Whether this process answers a request sent to ``header`` (see the module docstring)."""
    if "*" in settings.allowed_hosts or (settings.auth_mode != "dev" and not settings.allowed_hosts):
        return True
    host = host_name(header)
    return host is not None and (is_loopback(host) or host in settings.allowed_hosts)


def check_host() -> None:
    settings = current_pilot().settings
    if not host_allowed(request.headers.get("Host", ""), settings):
        where = "AUTH_MODE=dev answers only" if settings.auth_mode == "dev" else "this server answers only"
        raise Forbidden(
            f"{where} requests addressed to localhost, 127.0.0.1 or [::1] and the names in ALLOWED_HOSTS "
            "(a defence against DNS rebinding); add this host to ALLOWED_HOSTS to serve it",
            code="host_not_allowed",
        )


def init_app(app: Flask) -> None:
    """Check every request's Host, query string and JSON body before it is routed to a view."""

    @app.before_request
    def check_input() -> None:
        check_host()  # first: a refused host learns nothing about its input
        check_query()
        request_json()
