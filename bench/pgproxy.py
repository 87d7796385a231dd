"""A loopback TCP proxy in front of PostgreSQL that counts round trips and transactions per connection.

It parses the frontend/backend protocol (v3) in both directions without changing a byte:

* a **round trip** is one frontend ``Q`` (simple query) message, or one ``S`` (Sync) closing an
  extended-protocol exchange; psycopg2 only uses the simple protocol, so one ``Q`` is one wait
  for the server, whatever number of statements its string holds;
* a **transaction** ends at a ``ReadyForQuery`` (``Z``) whose status is idle (``I``) after at least
  one query: ``BEGIN … COMMIT`` is one, and so is a lone query (or a multi-statement string) sent
  outside a block, which PostgreSQL runs as one implicit transaction.

Each finished transaction is kept with the connection's ``application_name``, the labels of its
queries and the servers' command tags, so a bench can split the counts by what they were for.
Connections must not use TLS (``sslmode=disable``): an encrypted connection is forwarded but
marked opaque and not counted.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


@dataclass(frozen=True)
class Transaction:
    """One finished transaction as the proxy saw it."""

    app: str
    ended: float  # time.monotonic()
    labels: tuple[str, ...]  # one per round trip
    tags: tuple[str, ...]  # CommandComplete tags, e.g. "INSERT 0 1"

    @property
    def round_trips(self) -> int:
        return len(self.labels)


class Labeller:
    """Names a query after the statement of ``pilot/data/queries.sql`` it is, else by its verb and table."""

    SPLIT = re.compile(r";\s*(?=(?:SELECT|INSERT|UPDATE|DELETE|WITH|EXECUTE|PREPARE|SET|BEGIN|COMMIT)\b)", re.I)

    def __init__(self, root: Path) -> None:
        self.patterns: list[tuple[int, str, re.Pattern[str]]] = []
        for path in root.glob("**/queries.sql"):
            if ".venv" in path.parts or "node_modules" in path.parts:
                continue
            self._load(path.read_text(encoding="utf-8"))
        self.patterns.sort(key=lambda item: -item[0])  # the most specific statement first

    def _load(self, text: str) -> None:
        name: str | None = None
        body: list[str] = []
        for line in [*text.splitlines(), "-- name: _end"]:
            match = re.match(r"--\s*name:\s*(\w+)", line)
            if match:
                if name and body:
                    self._add(name, " ".join(" ".join(body).split()))
                name, body = match.group(1), []
            elif not line.lstrip().startswith("--"):
                body.append(line)

    def _add(self, name: str, statement: str) -> None:
        """A pattern for ``statement``: its text with every ``%(param)s`` matching any value."""
        pieces = re.split(r"%\(\w+\)s", statement.rstrip(";").replace("%%", "%"))
        if len(pieces[0]) < 6:
            return
        pattern = ".*?".join(re.escape(piece) for piece in pieces)
        self.patterns.append((len(statement), name, re.compile(pattern + r"\s*;?", re.I | re.S)))

    def label(self, query: str) -> str:
        query = re.sub(r"--[^\n]*", "", query)  # comments are sent too
        parts = [p for p in (" ".join(seg.split()) for seg in self.SPLIT.split(query)) if p]
        return " + ".join(self._one(p) for p in parts) or "(empty)"

    def _one(self, text: str) -> str:
        upper = text.upper().rstrip(";")
        if upper in ("BEGIN", "COMMIT", "ROLLBACK") or upper.startswith(("BEGIN ", "COMMIT ", "ROLLBACK ")):
            return upper.split()[0]
        if upper.startswith("SET LOCAL ROLE"):
            return "SET LOCAL ROLE"
        if "SET_CONFIG(" in upper and upper.startswith("SELECT SET_CONFIG"):
            return "set_config"
        for _, name, pattern in self.patterns:
            if pattern.fullmatch(text):
                return name
        match = re.search(r"\b(pilot_\w+|pg_advisory_xact_lock|pg_notify)\s*\(", text)
        if match:
            return match.group(1)
        match = re.match(r"(INSERT INTO|UPDATE|DELETE FROM|LISTEN|UNLISTEN|PREPARE|EXECUTE)\s+(\w+)", upper)
        if match:
            return f"{match.group(1).split()[0]} {match.group(2).lower()}"
        match = re.match(r"SELECT .*? FROM\s+(\w+)", upper)
        if match:
            return f"SELECT {match.group(1).lower()}"
        return upper[:40]


@dataclass
class _Conn:
    app: str = "?"
    opaque: bool = False
    labels: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    pending_parse: str = ""


class _Parser:
    """Incremental parser of one direction of one connection."""

    def __init__(self, proxy: PgProxy, conn: _Conn, frontend: bool) -> None:
        self.proxy, self.conn, self.frontend = proxy, conn, frontend
        self.buf = bytearray()
        self.startup = frontend  # the frontend's first messages carry no type byte
        self.single_answers = 0  # backend: one-byte answers to SSL/GSS requests still to come
        self.peer: _Parser | None = None

    def feed(self, data: bytes) -> None:
        if self.conn.opaque:
            return
        self.buf += data
        while not self.conn.opaque and self._step():
            pass

    def _step(self) -> bool:
        if not self.frontend and self.single_answers:
            if not self.buf:
                return False
            answer = chr(self.buf[0])
            del self.buf[:1]
            self.single_answers -= 1
            if answer in ("S", "G"):  # encryption accepted: nothing more can be read
                self.conn.opaque = True
            return True
        if self.startup:
            return self._startup()
        if len(self.buf) < 5:
            return False
        kind = chr(self.buf[0])
        (length,) = struct.unpack("!i", self.buf[1:5])
        if len(self.buf) < 1 + length:
            return False
        body = bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        if self.frontend:
            self._frontend(kind, body)
        else:
            self._backend(kind, body)
        return True

    def _startup(self) -> bool:
        if len(self.buf) < 8:
            return False
        length, code = struct.unpack("!ii", self.buf[:8])
        if len(self.buf) < length:
            return False
        body = bytes(self.buf[8:length])
        del self.buf[:length]
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            assert self.peer is not None
            self.peer.single_answers += 1
        elif code != CANCEL_REQUEST:
            items = body.split(b"\x00")
            params = dict(zip(items[0::2], items[1::2], strict=False))
            self.conn.app = params.get(b"application_name", b"").decode(errors="replace") or "?"
            self.startup = False
        return True

    def _frontend(self, kind: str, body: bytes) -> None:
        if kind == "Q":
            self.conn.labels.append(self.proxy.labeller.label(body.rstrip(b"\x00").decode(errors="replace")))
        elif kind == "P":  # Parse: name\0query\0…
            parts = body.split(b"\x00", 2)
            self.conn.pending_parse = parts[1].decode(errors="replace") if len(parts) > 1 else ""
        elif kind == "S":
            self.conn.labels.append(self.proxy.labeller.label(self.conn.pending_parse or "(extended)"))

    def _backend(self, kind: str, body: bytes) -> None:
        if kind == "C":
            self.conn.tags.append(body.rstrip(b"\x00").decode(errors="replace"))
        elif kind == "Z" and body[:1] == b"I" and self.conn.labels:
            self.proxy.record(
                Transaction(self.conn.app, time.monotonic(), tuple(self.conn.labels), tuple(self.conn.tags))
            )
            self.conn.labels, self.conn.tags = [], []


class PgProxy:
    """Listens on 127.0.0.1:<free port> and forwards every connection to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], root: Path) -> None:
        self.upstream = upstream
        self.labeller = Labeller(root)
        self._lock = threading.Lock()
        self._transactions: list[Transaction] = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = int(self._listener.getsockname()[1])
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="pgproxy", daemon=True)
        self._thread.start()

    def record(self, tx: Transaction) -> None:
        with self._lock:
            self._transactions.append(tx)

    def transactions(self, since: float = 0.0, until: float = float("inf")) -> list[Transaction]:
        with self._lock:
            return [tx for tx in self._transactions if since <= tx.ended <= until]

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            conn = _Conn()
            front, back = _Parser(self, conn, True), _Parser(self, conn, False)
            front.peer, back.peer = back, front
            for src, dst, parser in ((client, server, front), (server, client, back)):
                threading.Thread(target=self._pump, args=(src, dst, parser), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, parser: _Parser) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                parser.feed(data)  # parsed before it is forwarded: a query is known before its answer
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


def summarize(transactions: Iterable[Transaction]) -> tuple[int, int]:
    """(transactions, round trips) of ``transactions``."""
    items = list(transactions)
    return len(items), sum(tx.round_trips for tx in items)
