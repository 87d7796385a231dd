"""PostgreSQL access for Pilot: pool, per-user transactions, migrations, embedded default.

``create_app`` builds the app's own ``DatabaseManager(settings)``; ``db_manager``, which
the checklist imports, is one more built the same way from the environment on first
use (PEP 562), so importing this module opens nothing. Every request transaction
runs as the NOLOGIN role ``pilot_app`` with the acting user set transaction-locally,
so row-level security applies whatever role ``DATABASE_URL`` names and a pooled
connection never carries one user's identity into another request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import psycopg2.sql

from pilot.data.listener import Listener
from pilot.errors import Conflict, DatabaseError, NotFound, PilotError, ServiceUnavailable, ValidationError
from pilot.settings import Settings, load_settings

log = logging.getLogger(__name__)
logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_ID = 0x50494C4F54  # "PILOT": one migrator per database at a time
POOL_WAIT_SECONDS = 10.0
# Both roles are set transaction-locally, so a pooled connection never keeps them.
APP_ROLE_SETUP = "SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %s, true)"
SYSTEM_ROLE_SETUP = "SET LOCAL ROLE pilot_system; SELECT set_config('app.current_user_id', '', true)"

STATEMENT_SEPARATOR = b";\n"  # a newline too, so a statement ending in a -- comment cannot swallow the next


class Cursor(psycopg2.extensions.cursor):
    """A cursor that sends a transaction's statements in as few round trips as it can.

    The connection is in autocommit mode, so psycopg2 sends no ``BEGIN`` of its own.
    ``execute`` only binds the parameters (client side); the statements go out when
    a result is read, or when the transaction ends, several per query string:

    * nothing read before the end: ``SET LOCAL ROLE …; set_config(…); <statements>``
      in **one** round trip, which PostgreSQL runs as one implicit transaction;
    * a result read: ``BEGIN; SET LOCAL ROLE …; set_config(…); <statements so far>``,
      later reads send what was executed since, and the end sends the rest with
      ``COMMIT`` (``n`` reads: ``n + 1`` round trips);
    * ``single=True`` (a transaction of one statement, or one read and nothing after
      it): the first send is the whole transaction, without ``BEGIN``/``COMMIT``, so a
      read costs one round trip; executing anything after it is a programming error.

    A statement's error is therefore raised where its batch is sent: by the read that
    needs it or by the end of the ``with`` block, inside ``transaction`` either way.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prelude: bytes | None = None
        self._pending: list[bytes] = []
        self._single = False
        self._sent = False  # something went out: BEGIN (or, single, the whole transaction)

    def _begin(self, prelude: bytes | None, *, single: bool) -> None:
        self._prelude, self._single = prelude, single

    def execute(self, query: Any, vars: Any = None) -> None:
        if self._single and self._sent:
            raise RuntimeError("a single-statement transaction was already sent")
        self._pending.append(self.mogrify(query, vars))

    def _send(self, *, final: bool) -> None:
        parts: list[bytes] = []
        if not self._sent:
            if not (final or self._single):
                parts.append(b"BEGIN")
            if self._prelude is not None:
                parts.append(self._prelude)
        parts += self._pending
        if final and self._sent and not self._single:
            parts.append(b"COMMIT")
        self._pending = []
        if not parts or (final and not self._sent and len(parts) == (self._prelude is not None)):
            return  # a transaction that executed nothing costs nothing
        self._sent = True
        self._round_trip(STATEMENT_SEPARATOR.join(parts))

    def _round_trip(self, query: bytes) -> None:
        """Send one query string (one or more statements) and wait for its results: one round trip."""
        super().execute(query)

    def _flush(self) -> None:
        if self._pending:
            self._send(final=self._single)

    def _commit(self) -> None:
        if not (self._single and self._sent):
            self._send(final=True)

    # Rows are plain dicts keyed by column name, built in C by dict(zip()): psycopg2's RealDictCursor
    # sets each column through a Python __setitem__, which the run path's profile showed at ~5 %.
    def _names(self) -> list[str]:
        return [column.name for column in self.description or ()]

    def fetchone(self) -> Any:
        self._flush()
        row = super().fetchone()
        return None if row is None else dict(zip(self._names(), row, strict=True))

    def fetchall(self) -> Any:
        self._flush()
        names = self._names()
        return [dict(zip(names, row, strict=True)) for row in super().fetchall()]

    def fetchmany(self, size: int | None = None) -> Any:
        self._flush()
        names = self._names()
        rows = super().fetchmany(size) if size is not None else super().fetchmany()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def __iter__(self) -> Any:
        self._flush()
        names = self._names()
        for row in super().__iter__():
            yield dict(zip(names, row, strict=True))

    @property
    def rowcount(self) -> int:
        self._flush()
        return int(psycopg2.extensions.cursor.rowcount.__get__(self))


_embedded_servers: dict[Path, Any] = {}
_embedded_lock = threading.Lock()


def start_embedded(data_dir: Path, database: str = "pilot") -> str:
    """Start (or attach to) the embedded PostgreSQL under ``data_dir/pgdata``; return its DSN.

    The server keeps running while any process of this data dir uses it, so a
    restarted Pilot finds its data again.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (services, CI): harmless here.
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: only needed when DATABASE_URL is unset

    pgdata = (data_dir / "pgdata").resolve()
    with _embedded_lock:
        server = _embedded_servers.get(pgdata)
        if server is None:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", pgdata)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = pgserver.get_server(pgdata)
            _embedded_servers[pgdata] = server
    admin = psycopg2.connect(server.get_uri())
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                with contextlib.suppress(psycopg2.errors.DuplicateDatabase):  # another process was first
                    cur.execute(psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(database)))
    finally:
        admin.close()
    return str(server.get_uri(database))


def translate(exc: psycopg2.Error) -> PilotError:
    """Map a psycopg2 error onto the project's exceptions (never leaking SQL text)."""
    if isinstance(exc, psycopg2.errors.UniqueViolation):
        return Conflict("a record with the same key already exists")
    if isinstance(exc, psycopg2.errors.ForeignKeyViolation):
        return NotFound("a referenced record does not exist")
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        # A row-level security WITH CHECK failure: the row is not the caller's.
        return NotFound("not found")
    if isinstance(exc, psycopg2.errors.QueryCanceled):
        return ServiceUnavailable("the database took too long to answer")
    if isinstance(exc, psycopg2.IntegrityError | psycopg2.DataError):
        return ValidationError("the value is not valid for this field", details={"pgcode": exc.pgcode})
    return DatabaseError("the database is unavailable")


class BlockingPool:
    """A fixed-size pool that keeps its connections and makes callers wait for one.

    psycopg2's ThreadedConnectionPool raises at once when exhausted and closes
    connections handed back above ``minconn``; with ``minconn == maxconn`` and
    a semaphore in front it keeps every connection and queues callers instead.
    It counts the connections it has handed out itself (``in_use``), for the
    pool gauge.
    """

    def __init__(self, dsn: str, size: int) -> None:
        self.size = size
        self._pool = psycopg2.pool.ThreadedConnectionPool(size, size, dsn, application_name="pilot")
        self._slots = threading.BoundedSemaphore(size)
        self._count_lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        """Connections handed out and not yet given back."""
        with self._count_lock:
            return self._in_use

    def getconn(self) -> psycopg2.extensions.connection:
        if not self._slots.acquire(timeout=POOL_WAIT_SECONDS):
            raise ServiceUnavailable("no database connection became free in time")
        try:
            conn = self._pool.getconn()
            if not conn.autocommit:
                conn.autocommit = True  # transactions are opened by ``Cursor``, without a round trip of their own
        except Exception:
            self._slots.release()
            raise
        with self._count_lock:
            self._in_use += 1
        return conn

    def putconn(self, conn: psycopg2.extensions.connection, *, broken: bool = False) -> None:
        try:
            self._pool.putconn(conn, close=broken or bool(conn.closed))
        finally:
            with self._count_lock:
                self._in_use -= 1
            self._slots.release()

    def closeall(self) -> None:
        self._pool.closeall()


@dataclass(frozen=True)
class PoolStats:
    """How many connections a pool keeps and how many are checked out."""

    size: int
    in_use: int


class DatabaseManager:
    """Owns the pool and hands out transactions; connects on first use, never when built."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._dsn: str | None = None
        self._pool: BlockingPool | None = None
        self._lock = threading.Lock()
        # The process's one LISTEN connection (pilot/data/listener.py): opened by its first subscriber.
        self.listener = Listener(lambda: self.dsn)

    @property
    def embedded(self) -> bool:
        return not self.settings.database_url

    @property
    def dsn(self) -> str:
        """The DSN in use; starts the embedded server (and migrates it) on first use when DATABASE_URL is unset."""
        if self._dsn is None:
            with self._lock:
                if self._dsn is None:
                    if self.settings.database_url:
                        self._dsn = self.settings.database_url
                    else:
                        dsn = start_embedded(self.settings.data_dir)
                        migrate(dsn)
                        self._dsn = dsn
        return self._dsn

    def _get_pool(self) -> BlockingPool:
        if self._pool is None:
            dsn = self.dsn
            with self._lock:
                if self._pool is None:
                    try:
                        self._pool = BlockingPool(dsn, self.settings.db_pool_size)
                    except psycopg2.Error as exc:
                        log.error("cannot connect to the database: %s", type(exc).__name__)
                        raise DatabaseError("the database is unavailable") from exc
        return self._pool

    def pool_stats(self) -> PoolStats | None:
        """The pool's size and checked-out count; None before the first transaction opened it."""
        pool = self._pool
        return None if pool is None else PoolStats(pool.size, pool.in_use)

    def get_connection(self) -> psycopg2.extensions.connection:
        """A new DB-API connection as the connecting role (not pooled: the caller closes it)."""
        return psycopg2.connect(self.dsn, application_name="pilot-cli")

    @contextmanager
    def transaction(self, user_id: str | None, *, as_app: bool = True, single: bool = False) -> Iterator[Cursor]:
        """One transaction as ``pilot_app`` acting for ``user_id``; commits, or rolls back on error.

        ``user_id=None`` sets no user, so every RLS-protected table shows no rows.
        ``as_app=False`` stays in the connecting role: for migrations and operator
        commands only, never for requests. ``single=True``: one statement (or one read
        and nothing after it), sent with the role, the identity and the commit in one
        round trip; the read's statement is committed when it is read (``Cursor``).
        """
        setup = APP_ROLE_SETUP if as_app else None
        with self._transaction(setup, (user_id or "",), single=single) as cur:
            yield cur

    @contextmanager
    def system_transaction(self, *, single: bool = False) -> Iterator[Cursor]:
        """One transaction as ``pilot_system``: Pilot's own work across users (schedules, leases, reaping).

        Never for requests: that role may list every schedule and renew or interrupt
        runs, and nothing else (migration 006); request transactions use ``transaction``.
        """
        with self._transaction(SYSTEM_ROLE_SETUP, None, single=single) as cur:
            yield cur

    @contextmanager
    def _transaction(self, setup: str | None, params: tuple[str, ...] | None, *, single: bool) -> Iterator[Cursor]:
        pool = self._get_pool()
        conn = pool.getconn()
        broken = False
        try:
            with conn.cursor(cursor_factory=Cursor) as cur:
                prelude = cur.mogrify(setup, params) if setup is not None else None
                cur._begin(prelude, single=single)
                yield cur
                cur._commit()
        except psycopg2.Error as exc:
            broken = isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
            _rollback(conn)
            raise translate(exc) from exc
        except BaseException:
            _rollback(conn)
            raise
        finally:
            pool.putconn(conn, broken=broken or conn.closed != 0)

    def check(self) -> None:
        """Raise DatabaseError unless the database answers a trivial query."""
        with self.transaction(None, as_app=False) as cur:
            cur.execute("SELECT 1")

    def close(self) -> None:
        """Close the pool and the listener; both open again on next use, like a new manager's."""
        self.listener.stop()
        self.listener = Listener(lambda: self.dsn)
        if self._pool is not None:
            self._pool.closeall()
            self._pool = None


def _rollback(conn: psycopg2.extensions.connection) -> None:
    """End the transaction a ``Cursor`` opened with BEGIN, if one is open (autocommit: nothing else is)."""
    if conn.closed or conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        return
    try:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    except psycopg2.Error:
        log.warning("rollback failed; the connection will be discarded")


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("[0-9][0-9][0-9]_*.sql"))


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return the versions applied.

    A session advisory lock makes concurrent callers wait for each other, so two
    processes starting together never apply the same file twice.
    """
    applied_now: list[str] = []
    conn = psycopg2.connect(dsn, application_name="pilot-migrate")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
            conn.commit()
            try:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                conn.commit()
                cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in cur.fetchall()}
                for path in migration_files(directory):
                    if path.stem in done:
                        continue
                    cur.execute(path.read_text(encoding="utf-8"))
                    cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
                    conn.commit()
                    applied_now.append(path.stem)
                    log.info("applied migration %s", path.stem)
            except psycopg2.Error:
                conn.rollback()
                raise
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
                conn.commit()
    finally:
        conn.close()
    return applied_now


def try_migrate(dsn: str) -> bool:
    """Apply pending migrations; False (with a warning) when the database cannot be reached.

    Any other failure, e.g. a migration that does not apply, is raised.
    """
    try:
        migrate(dsn)
    except psycopg2.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("the database is not reachable yet (%s); migrating as soon as it answers", reason)
        return False
    return True


def migrate_when_reachable(
    dsn: str, stop: threading.Event, *, first_delay: float = 0.5, max_delay: float = 2.0
) -> bool:
    """Retry ``try_migrate`` with a backoff (``first_delay`` doubling up to ``max_delay`` s) until it succeeds.

    Returns True once the migrations are applied, False when ``stop`` is set first.
    """
    delay = first_delay
    while not stop.is_set():
        if try_migrate(dsn):
            return True
        stop.wait(delay)
        delay = min(delay * 2, max_delay)
    return False


_lazy_lock = threading.Lock()


def __getattr__(name: str) -> DatabaseManager:
    """``db_manager``: a DatabaseManager from the environment, built on first use (PEP 562)."""
    if name != "db_manager":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lazy_lock:
        manager = globals().get("db_manager")
        if manager is None:
            manager = DatabaseManager(load_settings())
            globals()["db_manager"] = manager  # later lookups find it without this function
    return manager
