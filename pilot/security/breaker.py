"""Circuit breakers per (provider, upstream host): while an upstream is down, calls fail fast.

A circuit is ``closed`` (calls pass) until ``failures`` consecutive calls that the
upstream caused to fail (an answer of 5xx, a connection refused or reset, a timeout
longer than the provider's default) happen within ``window_s`` seconds. It is then
``open``: calls fail at once with ``circuit_open``, without a request, for ``cooldown_s``
seconds. The first call after that is the probe (``half_open``; other calls still fail
fast): its success closes the circuit, its failure opens it for another cooldown.

What counts is chosen so that one user cannot open a circuit for everyone: an
answer below 500 (a 4xx included) shows the upstream is up, and resets the count;
refused addresses (SSRF), malformed URLs, DNS and TLS failures and a timeout the
step itself made short (``timeout_s`` below the provider's default) count neither way.

State is per process (``CircuitBreakers`` is one per engine), bounded in size, and
shared by every thread; ``admit`` and ``settle`` hold a lock only for bookkeeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from pilot.errors import PilotError
from pilot.security.ssrf import OutboundError

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_LEVELS = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the gauge's values: the worse, the higher
OTHER_HOSTS = "other"  # the metrics label of every host that is not a provider's default
MAX_CIRCUITS = 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Outcome(Enum):
    """What a call tells the breaker about its upstream."""

    SUCCESS = "success"  # the upstream answered below 500
    FAILURE = "failure"  # the upstream failed: 5xx, refused or reset, a long timeout
    NEUTRAL = "neutral"  # nothing about the upstream (our refusal, a short timeout, DNS, TLS)


class CircuitOpen(OutboundError):
    """The upstream's circuit is open: the call was not made."""

    code = "circuit_open"
    retryable = False


def host_key(url: str) -> str | None:
    """``host`` or ``host:port`` (a non-default port) of ``url``, lower case; None when it has none."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        return f"{host}:{port}"
    return host


def _tenths_up(seconds: float) -> float:
    """Seconds rounded up to a tenth: 0 only once the wait is really over."""
    return math.ceil(seconds * 10) / 10


def status_outcome(status: int) -> Outcome:
    """An HTTP answer: 5xx is the upstream's failure, anything else shows it is up."""
    return Outcome.FAILURE if status >= 500 else Outcome.SUCCESS


def error_outcome(exc: PilotError, timeout_s: float, default_timeout_s: float) -> Outcome:
    """A call that raised: a refused or reset connection counts; a timeout only when the call was
    allowed at least the provider's default timeout (a step's short ``timeout_s`` never opens a
    circuit); everything else (SSRF refusal, bad URL, DNS, TLS, too large) says nothing of the upstream."""
    if getattr(exc, "code", None) == "timeout":
        return Outcome.FAILURE if timeout_s >= default_timeout_s else Outcome.NEUTRAL
    return Outcome.FAILURE if getattr(exc, "upstream_fault", False) else Outcome.NEUTRAL


@dataclass(frozen=True)
class Ticket:
    """Leave to make one call; ``probe`` when it is the call that decides a half-open circuit."""

    provider: str
    host: str
    probe: bool


@dataclass
class _Circuit:
    state: str = CLOSED
    failures: deque[float] = field(default_factory=deque)  # times of the consecutive failures
    opened_at: float = 0.0
    opened_wall: datetime | None = None
    probing: bool = False
    used: float = 0.0


# (provider, host label, the state the circuit entered, the worst state of any circuit with that label)
StateListener = Callable[[str, str, str, str], None]
RejectListener = Callable[[str, str], None]  # (provider, host label)


class CircuitBreakers:
    """Every circuit of one process, by (provider, host); ``failures`` 0 disables them all."""

    def __init__(
        self,
        failures: int,
        window_s: float,
        cooldown_s: float,
        *,
        public_hosts: Mapping[str, Iterable[str]] | None = None,
        on_state: StateListener | None = None,
        on_reject: RejectListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_circuits: int = MAX_CIRCUITS,
    ) -> None:
        self.failures, self.window_s, self.cooldown_s = failures, window_s, cooldown_s
        # Hosts shown by name (in /api/providers/<name> and metrics): each provider's default
        # endpoints. Any other host was named by some user and is only counted, never shown.
        self.public_hosts = {name: frozenset(hosts) for name, hosts in (public_hosts or {}).items()}
        self._on_state, self._on_reject = on_state, on_reject
        self._clock, self._max = clock, max_circuits
        self._circuits: dict[tuple[str, str], _Circuit] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.failures > 0

    def label(self, provider: str, host: str) -> str:
        """The host as metrics and the API may show it: a default endpoint's, else ``other``."""
        return host if host in self.public_hosts.get(provider, ()) else OTHER_HOSTS

    def admit(self, provider: str, url: str) -> Ticket | None:
        """Leave for one call to ``url``; CircuitOpen when its circuit is open (or being probed).

        None when breakers are disabled or the URL has no host (the outbound client refuses it).
        """
        host = host_key(url)
        if not self.enabled or host is None:
            return None
        with self._lock:
            now = self._clock()
            circuit = self._circuit(provider, host, now)
            half_opened = circuit.state == OPEN and now - circuit.opened_at >= self.cooldown_s
            if half_opened:
                circuit.state = HALF_OPEN
            ticket: Ticket | None = None
            if circuit.state == CLOSED:
                ticket = Ticket(provider, host, probe=False)
            elif circuit.state == HALF_OPEN and not circuit.probing:
                circuit.probing = True
                ticket = Ticket(provider, host, probe=True)
            state, wait = circuit.state, max(0.0, self.cooldown_s - (now - circuit.opened_at))
        if half_opened:
            self._notify(provider, host)
        if ticket is not None:
            return ticket
        if self._on_reject:
            self._on_reject(provider, self.label(provider, host))
        wait = wait if state == OPEN else 1.0  # half-open: the probe is under way
        raise CircuitOpen(
            f"{provider} calls to {host} fail fast: its circuit is {state.replace('_', '-')} after "
            f"{self.failures} consecutive upstream failures; retry in {math.ceil(wait)} s",
            details={"provider": provider, "host": host, "state": state, "retry_after": _tenths_up(wait)},
        )

    def settle(self, ticket: Ticket | None, outcome: Outcome) -> None:
        """Record what the call ``ticket`` allowed told of its upstream; a probe decides its circuit."""
        if ticket is None:
            return
        changed = False
        with self._lock:
            now = self._clock()
            circuit = self._circuit(ticket.provider, ticket.host, now)
            if ticket.probe:
                circuit.probing = False
                if outcome is Outcome.SUCCESS:
                    changed = self._close(circuit)
                elif outcome is Outcome.FAILURE:
                    changed = self._open(circuit, now)
            elif circuit.state == CLOSED:  # a call admitted before the circuit opened decides nothing
                if outcome is Outcome.SUCCESS:
                    circuit.failures.clear()
                elif outcome is Outcome.FAILURE:
                    circuit.failures.append(now)
                    while circuit.failures and now - circuit.failures[0] > self.window_s:
                        circuit.failures.popleft()
                    if len(circuit.failures) >= self.failures:
                        changed = self._open(circuit, now)
        if changed:
            self._notify(ticket.provider, ticket.host)

    def _open(self, circuit: _Circuit, now: float) -> bool:
        circuit.state, circuit.opened_at, circuit.opened_wall = OPEN, now, datetime.now(UTC)
        circuit.failures.clear()
        return True

    @staticmethod
    def _close(circuit: _Circuit) -> bool:
        circuit.state, circuit.opened_wall = CLOSED, None
        circuit.failures.clear()
        return True

    def _circuit(self, provider: str, host: str, now: float) -> _Circuit:
        """The circuit of (provider, host), created closed; forgets idle closed ones beyond the bound."""
        key = (provider, host)
        circuit = self._circuits.get(key)
        if circuit is None:
            if len(self._circuits) >= self._max:
                self._forget_idle()
            circuit = self._circuits[key] = _Circuit()
        circuit.used = now
        return circuit

    def _forget_idle(self) -> None:
        idle = sorted((c.used, key) for key, c in self._circuits.items() if c.state == CLOSED and not c.failures)
        for _, key in idle[: max(1, len(self._circuits) // 4)]:
            del self._circuits[key]
        if len(self._circuits) >= self._max:  # everything is failing: drop the least recently used
            oldest = min(self._circuits, key=lambda key: self._circuits[key].used)
            del self._circuits[oldest]

    def _notify(self, provider: str, host: str) -> None:
        if self._on_state is None:
            return
        label = self.label(provider, host)
        with self._lock:
            entered = self._circuits[(provider, host)].state if (provider, host) in self._circuits else CLOSED
            worst = max(
                (
                    STATE_LEVELS[c.state]
                    for (prov, h), c in self._circuits.items()
                    if prov == provider and self.label(prov, h) == label
                ),
                default=0,
            )
        worst_state = next(state for state, level in STATE_LEVELS.items() if level == worst)
        self._on_state(provider, label, entered, worst_state)

    def snapshot(self, provider: str) -> dict[str, Any]:
        """The circuits of ``provider`` for ``GET /api/providers/<name>``: default hosts by name, others counted."""
        with self._lock:
            now = self._clock()
            own = {host: c for (prov, host), c in self._circuits.items() if prov == provider}
            hosts = [self._describe(host, own.get(host), now) for host in sorted(self.public_hosts.get(provider, ()))]
            others = [c for host, c in own.items() if self.label(provider, host) == OTHER_HOSTS]
        return {
            "enabled": self.enabled,
            "failures": self.failures,
            "window_seconds": self.window_s,
            "cooldown_seconds": self.cooldown_s,
            "hosts": hosts,
            "other_hosts": {
                "tracked": len(others),
                "open": sum(1 for c in others if c.state == OPEN),
                "half_open": sum(1 for c in others if c.state == HALF_OPEN),
            },
        }

    def _describe(self, host: str, circuit: _Circuit | None, now: float) -> dict[str, Any]:
        if circuit is None:
            return {"host": host, "state": CLOSED, "consecutive_failures": 0, "opened_at": None, "retry_in_s": None}
        recent = sum(1 for moment in circuit.failures if now - moment <= self.window_s)
        retry = max(0.0, self.cooldown_s - (now - circuit.opened_at)) if circuit.state == OPEN else None
        return {
            "host": host,
            "state": circuit.state,
            "consecutive_failures": recent,
            "opened_at": circuit.opened_wall.isoformat() if circuit.opened_wall else None,
            "retry_in_s": _tenths_up(retry) if retry is not None else None,
        }

    def state(self, provider: str, host: str) -> str:
        """The state of one circuit (``closed`` when it was never used)."""
        with self._lock:
            circuit = self._circuits.get((provider, host))
            return circuit.state if circuit else CLOSED
