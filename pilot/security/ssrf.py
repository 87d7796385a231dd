"""SSRF policy: which addresses an outbound call may reach.

Loopback, private, link-local, CGNAT, multicast, unspecified, reserved and cloud
metadata addresses are refused (IPv4 and IPv6, including IPv4-mapped, 6to4,
NAT64 and the numeric spellings inet_aton accepts) unless the operator's
``OUTBOUND_ALLOWLIST`` names them. ``outbound.OutboundClient`` applies this to
every address it is about to connect to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pilot.errors import ConfigurationError, PilotError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutboundError(PilotError):
    """Base of outbound-call failures.

    ``retryable`` says whether trying again may help; ``request_sent`` that the
    request may have reached the server before the failure, so its effect is unknown.
    """

    code = "outbound_error"
    retryable = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, details: Any = None, request_sent: bool = False
    ) -> None:
        super().__init__(message, details=details)
        if retryable is not None:
            self.retryable = retryable
        self.request_sent = request_sent


class SSRFBlocked(OutboundError):
    code = "ssrf_blocked"


_METADATA_REASON = "a cloud metadata address"
_METADATA = frozenset(
    map(ipaddress.ip_address, ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))
)
_BLOCKED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for why, nets in {  # order matters only for the broadcast address, inside 240.0.0.0/4
        "an unspecified address": "0.0.0.0/8 ::/128",
        "a loopback address": "127.0.0.0/8 ::1/128",
        "a private address": "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fec0::/10",
        "a shared (CGNAT) address": "100.64.0.0/10",
        "a link-local address": "169.254.0.0/16 fe80::/10",
        "a unique-local address": "fc00::/7",
        "a multicast address": "224.0.0.0/4 ff00::/8",
        "the broadcast address": "255.255.255.255/32",
        "a reserved address": "240.0.0.0/4",
    }.items()
    for net in nets.split()
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_V4_TRANSLATED = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))
HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")  # fullmatch only
_LEGACY_PART = re.compile(r"0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*")


def _legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse the forms inet_aton accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``)."""
    parts = text.lower().split(".")
    if not 1 <= len(parts) <= 4 or not all(_LEGACY_PART.fullmatch(p) for p in parts):
        return None
    values = [int(p[2:] or "0", 16) if p.startswith("0x") else int(p, 8 if p.startswith("0") else 10) for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    return ipaddress.IPv4Address(sum(v << (8 * (3 - i)) for i, v in enumerate(head)) + last)


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return _legacy_ipv4(host)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, -compatible, 6to4 or NAT64 address reaches, if any."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if any(ip in net for net in _V4_TRANSLATED) or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop any %scope
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return _forbidden_reason(embedded)
    if ip in _METADATA:
        return _METADATA_REASON
    for net, why in _BLOCKED:
        if ip in net:
            return why
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "a reserved address"
    return None if ip.is_global else "a non-public (reserved) address"


@dataclass(frozen=True)
class OutboundPolicy:
    """Non-public destinations the operator permits (``OUTBOUND_ALLOWLIST``).

    ``hosts`` holds exact names (``localhost``) and ``*.suffix`` wildcards; ``networks``
    holds CIDRs (a bare IP is a /32 or /128). A listed host name permits whatever it
    resolves to except cloud metadata addresses, which only a listed network unlocks.
    """

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> OutboundPolicy:
        """Parse allow-list entries; raises ConfigurationError for one that is neither a name nor a CIDR."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            literal = None if "/" in entry else ip_literal(entry)
            try:
                if "/" in entry or literal is not None:
                    networks.append(ipaddress.ip_network(entry if literal is None else literal, strict=False))
                    continue
            except ValueError as exc:
                raise ConfigurationError(f"OUTBOUND_ALLOWLIST entry {raw!r} is not a valid CIDR: {exc}") from None
            name = entry.removeprefix("*.")
            if ":" in entry or re.fullmatch(r"[0-9.]+", name) or not HOSTNAME.fullmatch(name):
                raise ConfigurationError(f"OUTBOUND_ALLOWLIST entry {raw!r} is not a host name, IP address or CIDR")
            hosts.add(entry.rstrip("."))
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return name in self.hosts or any(e.startswith("*.") and name.endswith(e[1:]) for e in self.hosts)

    def allows_address(self, ip: IPAddress) -> bool:
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            candidates += [ipaddress.IPv6Address(int(ip))] + [e for e in [_embedded_ipv4(ip)] if e]
        return any(c in net for c in candidates for net in self.networks)


def check_address(ip: IPAddress | str, policy: OutboundPolicy, host: str | None = None) -> None:
    """Return if Pilot may connect to ``ip`` (reached as ``host``); raise SSRFBlocked otherwise.

    Public addresses pass; others pass only when inside an allow-listed network or when
    ``host`` is an allow-listed name (metadata addresses excepted). The message names
    the host and the kind of address, never a URL, and never the address a name resolved
    to (that would let users map internal DNS). A malformed ``ip`` string raises ValueError.
    """
    addr = ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else ipaddress.ip_address(ip)
    reason = _forbidden_reason(addr)
    if reason is None or policy.allows_address(addr):
        return
    if host is not None and reason != _METADATA_REASON and policy.allows_host(host):
        return
    if host is None or ip_literal(host) is not None:
        message = f"outbound request to {addr} refused: it is {reason}"
    else:
        message = f"outbound request to {host!r} refused: the host resolves to {reason}"
    details = {"host": host or str(addr), "reason": reason.split(" ", 1)[1]}
    raise SSRFBlocked(f"{message}; the operator can permit it in OUTBOUND_ALLOWLIST", details=details)
