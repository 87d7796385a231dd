"""Migrations, roles and row-level security, on a real PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from database import DatabaseManager, migrate, migration_files
from pilot.errors import NotFound
from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
USER_TABLES = (
    "provider_credentials",
    "execution_plans",
    "plan_runs",
    "plan_schedules",
    "execution_logs",
    "api_tokens",
    "budgets",
    "budget_spend",
    "idempotency_keys",
    "provider_metrics_hourly",
    "plan_versions",
)
NOT_USER_DATA = ("schema_migrations", "metrics_rollup_state")
ROLES = ("pilot_app", "pilot_system")
# Every function in the schema: (SECURITY DEFINER?, which of ROLES may execute it). A new
# function must be added here, so who can call it is decided, not inherited from PUBLIC.
FUNCTIONS = {
    "current_user_id": (False, {"pilot_app", "pilot_system"}),
    "pilot_protect_user_table": (False, set()),
    "pilot_notify_schedule_change": (False, {"pilot_app", "pilot_system"}),  # a trigger: not callable directly
    "pilot_notify_run_change": (False, {"pilot_app", "pilot_system"}),  # a trigger (migration 017): run events
    "pilot_token_user": (True, {"pilot_app"}),  # the one lookup before identity is known
    "pilot_list_schedules": (True, {"pilot_system"}),
    "pilot_interrupt_runs": (True, {"pilot_system"}),
    "pilot_heartbeat": (False, {"pilot_system"}),
    "pilot_latency_bounds": (False, {"pilot_app", "pilot_system"}),  # a constant
    "pilot_rollup_hours": (True, set()),  # the owner's (prune-logs, through pilot_rollup_pruned)
    "pilot_rollup_metrics": (True, {"pilot_system"}),
    "pilot_rollup_pruned": (True, set()),
    "pilot_sync_plan_schedule": (True, set()),  # a trigger: mirrors the plan row being written
    "pilot_due_schedules": (True, {"pilot_system"}),
    "pilot_fire_schedules": (True, {"pilot_system"}),
    "pilot_scheduler_stats": (True, {"pilot_system"}),
    "pilot_version_plan_steps": (False, {"pilot_app", "pilot_system"}),  # triggers (migration 016)
    "pilot_run_plan_version": (False, {"pilot_app", "pilot_system"}),
    "pilot_claim_runs": (True, {"pilot_system"}),  # claims cross users: the run queue (migration 013)
    "pilot_notify_runs_queued": (False, {"pilot_app", "pilot_system"}),  # a trigger: not callable directly
    "pilot_run_is_pure": (False, set()),  # called by pilot_interrupt_runs only, as its owner
    "pilot_run_logs": (False, {"pilot_app", "pilot_system"}),  # as its caller: RLS applies (migration 020)
    "pilot_may_start_now": (True, {"pilot_app"}),  # one boolean about the caller's own runs (migration 021)
}
# Policies beyond each user table's four: pilot_system may see and renew unfinished runs.
SYSTEM_POLICIES = {("plan_runs", "SELECT", "pilot_system"), ("plan_runs", "UPDATE", "pilot_system")}
SYSTEM_COLUMN_RIGHTS = {
    ("plan_runs", "id", "SELECT"),
    ("plan_runs", "owner_id", "SELECT"),
    ("plan_runs", "status", "SELECT"),
    ("plan_runs", "heartbeat_at", "UPDATE"),
    ("plan_runs", "lease_expires_at", "UPDATE"),
}


def query(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture
def empty_db(admin_dsn: str):
    name = f"pilot_empty_{__import__('uuid').uuid4().hex[:8]}"
    dsn = create_database(admin_dsn, name)
    yield dsn
    drop_database(admin_dsn, name)


def test_migrations_apply_in_order_once_and_are_recorded(empty_db: str) -> None:
    applied = migrate(empty_db)
    assert applied == [p.stem for p in migration_files()]
    assert migrate(empty_db) == []
    recorded = [row[0] for row in query(empty_db, "SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == applied


def test_every_migration_is_idempotent_when_run_twice(empty_db: str) -> None:
    conn = psycopg2.connect(empty_db)
    try:
        with conn.cursor() as cur:
            for _ in range(2):
                for path in migration_files():
                    cur.execute(path.read_text())
        conn.commit()
    finally:
        conn.close()
    assert migrate(empty_db) == [p.stem for p in migration_files()]  # runner re-applies harmlessly


def test_concurrent_migrators_wait_for_each_other(empty_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, len(migration_files())]


def test_every_table_is_a_known_user_table_or_bookkeeping(session_db: str) -> None:
    """A new table must join USER_TABLES (and so the RLS checks below) or be declared not user data."""
    tables = {row[0] for row in query(session_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == set(USER_TABLES) | set(NOT_USER_DATA)


def test_every_user_table_has_forced_rls_and_exactly_four_policies(session_db: str) -> None:
    rows = query(
        session_db,
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY(%s) AND relkind = 'r'",
        (list(USER_TABLES),),
    )
    assert sorted(rows) == sorted((t, True, True) for t in USER_TABLES)
    policies = query(
        session_db,
        "SELECT tablename, array_agg(cmd ORDER BY cmd) FROM pg_policies "
        "WHERE tablename = ANY(%s) AND roles = '{public}' GROUP BY 1",
        (list(USER_TABLES),),
    )
    assert sorted(policies) == sorted((t, ["DELETE", "INSERT", "SELECT", "UPDATE"]) for t in USER_TABLES)
    others = query(
        session_db,
        "SELECT tablename, cmd, unnest(roles) FROM pg_policies WHERE schemaname = 'public' AND roles <> '{public}'",
    )
    assert set(others) == SYSTEM_POLICIES


@pytest.mark.parametrize("role", ROLES)
def test_pilot_roles_own_nothing_and_cannot_bypass_rls(session_db: str, role: str) -> None:
    attributes = query(
        session_db, "SELECT rolcanlogin, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = %s", (role,)
    )
    assert attributes == [(False, False, False)]
    owned = query(session_db, "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", (role,))
    assert owned == [(0,)]
    other = next(r for r in ROLES if r != role)
    assert query(session_db, "SELECT pg_has_role(%s, %s, 'MEMBER')", (role, other)) == [(False,)]


def test_every_function_is_declared_with_who_may_execute_it(session_db: str) -> None:
    """No SECURITY DEFINER function reaching other users' rows is executable by pilot_app (issue 7, item 7)."""
    rows = query(
        session_db,
        "SELECT p.proname, p.prosecdef, has_function_privilege('pilot_app', p.oid, 'EXECUTE'), "
        "has_function_privilege('pilot_system', p.oid, 'EXECUTE') "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
    )
    found = {
        name: (definer, {r for r, ok in zip(ROLES, (app, system), strict=True) if ok})
        for name, definer, app, system in rows
    }
    assert len(rows) == len(found), "one signature per function name"
    assert found == FUNCTIONS


def test_system_role_has_exactly_its_column_rights(session_db: str) -> None:
    tables = query(
        session_db,
        "SELECT table_name, privilege_type FROM information_schema.table_privileges WHERE grantee = 'pilot_system'",
    )
    assert tables == []
    columns = query(
        session_db,
        "SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges "
        "WHERE grantee = 'pilot_system'",
    )
    assert set(columns) == SYSTEM_COLUMN_RIGHTS


def _as_role(conn: psycopg2.extensions.connection, role: str, user_id: str = "") -> psycopg2.extensions.cursor:
    cur = conn.cursor()
    cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    cur.execute("SELECT set_config('app.current_user_id', %s, true)", (user_id,))
    return cur


def test_a_request_transaction_cannot_reach_other_users_through_system_functions(
    fresh_db: str, user: str, other_user: str
) -> None:
    alice, bob = user, other_user
    conn = psycopg2.connect(fresh_db)
    try:
        cur = _as_role(conn, "pilot_app", alice)
        cur.execute(
            "INSERT INTO execution_plans (user_id, name, schedule) VALUES (%s, 'p', %s) RETURNING id",
            (alice, '{"interval_seconds": 60}'),
        )
        plan_id = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO plan_runs (plan_id, user_id, trigger, status, owner_id, heartbeat_at, lease_expires_at) "
            "VALUES (%s, %s, 'manual', 'running', 'alice-host:1:a', now(), now() + interval '1 hour') RETURNING id",
            (plan_id, alice),
        )
        run_id = cur.fetchone()[0]
        conn.commit()
        calls = [
            ("SELECT * FROM pilot_list_schedules()", ()),
            ("SELECT * FROM pilot_interrupt_runs(NULL, -100000, 'x')", ()),
            ("SELECT pilot_heartbeat('alice-host:1:a', ARRAY[%s]::bigint[], 30)", (run_id,)),
        ]
        for statement, params in calls:
            cur = _as_role(conn, "pilot_app", bob)
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement, params)
            conn.rollback()
        cur = _as_role(conn, "pilot_app", bob)
        with pytest.raises(psycopg2.errors.UndefinedFunction):  # the old one-argument heartbeat is gone
            cur.execute("SELECT pilot_heartbeat('alice-host:1:a')")
        conn.rollback()
        cur = _as_role(conn, "pilot_app", bob)
        cur.execute("UPDATE plan_runs SET status = 'interrupted' WHERE user_id = %s", (alice,))
        assert cur.rowcount == 0
        conn.commit()

        # The system role does its work, and no more: a negative lease interrupts nothing alive.
        cur = _as_role(conn, "pilot_system")
        cur.execute("SELECT plan_id, user_id FROM pilot_list_schedules()")
        assert (plan_id, alice) in cur.fetchall()
        cur.execute("SELECT * FROM pilot_interrupt_runs(NULL, -100000, 'x')")
        assert cur.fetchall() == []
        cur.execute("SELECT pilot_heartbeat('alice-host:1:a', ARRAY[%s]::bigint[], 30)", (run_id,))
        assert cur.fetchone()[0] == 1
        conn.commit()
        for statement in ("SELECT step_results FROM plan_runs", "SELECT * FROM provider_credentials"):
            cur = _as_role(conn, "pilot_system")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
            conn.rollback()
    finally:
        conn.close()
    assert query(fresh_db, "SELECT status FROM plan_runs WHERE id = %s", (run_id,)) == [("running",)]


def test_app_role_with_no_user_sees_no_rows_in_any_table(session_db: str) -> None:
    conn = psycopg2.connect(session_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('app.current_user_id', 'someone', true)")
            cur.execute("SET LOCAL ROLE pilot_app")
            cur.execute(
                # scheduled, so its plan_schedules row exists too (the trigger of migration 014)
                "INSERT INTO execution_plans (user_id, name, schedule) "
                "VALUES ('someone', 'p', '{\"interval_seconds\": 60}') RETURNING id",
            )
            plan_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO provider_credentials (user_id, provider, type, encrypted_value) "
                "VALUES ('someone', 'x', 'api_key', 'v')"
            )
            cur.execute(
                "INSERT INTO plan_runs (plan_id, user_id, trigger) VALUES (%s, 'someone', 'manual')", (plan_id,)
            )
            cur.execute(
                "INSERT INTO execution_logs (user_id, provider, action, status) VALUES ('someone', 'x', 'y', 'success')"
            )
            cur.execute("INSERT INTO api_tokens (user_id, name, token_hash) VALUES ('someone', 't', repeat('a', 64))")
            cur.execute("INSERT INTO budgets (user_id, monthly_usd) VALUES ('someone', 1) ON CONFLICT DO NOTHING")
            cur.execute(
                "INSERT INTO budget_spend (user_id, month) VALUES ('someone', date_trunc('month', now())::date) "
                "ON CONFLICT DO NOTHING"
            )
            cur.execute(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, method, path, token) "
                "VALUES ('someone', 'k', 'f', 'POST', '/api/plans', 't') ON CONFLICT DO NOTHING"
            )
            cur.execute(
                "INSERT INTO provider_metrics_hourly (user_id, hour, provider, total, successful, failed,"
                " latency_sum, latency_max, buckets) VALUES ('someone', date_trunc('hour', now()), 'x', 1, 1, 0,"
                " 1, 1, '{1}') ON CONFLICT DO NOTHING"
            )
            for table in USER_TABLES:  # the owner of the rows sees them: the zero counts below mean something
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                assert cur.fetchone()[0] >= 1, table
        conn.commit()
        for setting in (None, ""):
            with conn.cursor() as cur:
                cur.execute("SET LOCAL ROLE pilot_app")
                if setting is not None:
                    cur.execute("SELECT set_config('app.current_user_id', %s, true)", (setting,))
                for table in USER_TABLES:
                    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                    assert cur.fetchone()[0] == 0, table
            conn.rollback()
    finally:
        conn.close()


def test_identity_is_transaction_local_and_never_leaks_between_pooled_transactions(session_db: str, user: str) -> None:
    from pilot.settings import load_settings

    db = DatabaseManager(load_settings(database_url=session_db, db_pool_size=1))
    try:
        with db.transaction(user) as cur:
            cur.execute("SELECT current_user_id() AS uid, current_user AS role")
            assert dict(cur.fetchone()) == {"uid": user, "role": "pilot_app"}
        with db.transaction(None) as cur:  # same single pooled connection
            cur.execute("SELECT current_user_id() AS uid, current_user AS role")
            row = cur.fetchone()
            assert row["uid"] in ("", None) and row["role"] == "pilot_app"
        with db.transaction(None, as_app=False) as cur:
            cur.execute("SELECT current_user AS role")
            assert cur.fetchone()["role"] != "pilot_app"
    finally:
        db.close()


def test_insert_for_another_user_is_refused_by_rls(session_db: str, user: str, other_user: str) -> None:
    from pilot.settings import load_settings

    db = DatabaseManager(load_settings(database_url=session_db, db_pool_size=1))
    try:
        with pytest.raises(NotFound), db.transaction(user) as cur:
            cur.execute(
                "INSERT INTO provider_credentials (user_id, provider, type, encrypted_value) VALUES (%s,'x','t','v')",
                (other_user,),
            )
    finally:
        db.close()


def test_checklist_get_connection_is_a_dbapi_connection(session_db: str) -> None:
    from pilot.settings import load_settings

    db = DatabaseManager(load_settings(database_url=session_db))
    conn = db.get_connection()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM provider_credentials")
        assert isinstance(cur.fetchone()[0], int)
    finally:
        conn.close()


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql client not installed")
def test_checklist_phase1_migration_002_through_psql_and_step5_as_app_role(empty_db: str) -> None:
    migration = ROOT / "migrations" / "002_provider_credentials_and_logs.sql"
    subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-q", empty_db],
        stdin=migration.open(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    tables = query(
        empty_db,
        "SELECT tablename FROM pg_tables WHERE tablename IN "
        "('provider_credentials', 'execution_plans', 'execution_logs')",
    )
    assert len(tables) == 3
    step5 = """
SET ROLE pilot_app;
SET app.current_user_id = 'user_a';
INSERT INTO provider_credentials (user_id, provider, type, encrypted_value) VALUES ('user_a', 'openai', 'api_key', 'a');
SET app.current_user_id = 'user_b';
INSERT INTO provider_credentials (user_id, provider, type, encrypted_value) VALUES ('user_b', 'openai', 'api_key', 'b');
SET app.current_user_id = 'user_a';
SELECT COUNT(*) FROM provider_credentials;
SET app.current_user_id = 'user_b';
SELECT COUNT(*) FROM provider_credentials;
RESET ROLE;
SELECT COUNT(*) FROM provider_credentials;
"""
    out = subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-At", empty_db],
        input=step5,
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout.split()
    out = [line for line in out if line.isdigit()]
    assert out[-3:] == ["1", "1", "2"]  # each user sees 1; the superuser bypasses RLS and sees 2
    # The checklist's Step 4 redefines the function with its own body; that must not fail.
    subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-q", empty_db],
        check=True,
        capture_output=True,
        timeout=60,
        input="CREATE OR REPLACE FUNCTION current_user_id() RETURNS VARCHAR AS $$ "
        "SELECT current_setting('app.current_user_id', true)::VARCHAR; $$ LANGUAGE SQL;",
        text=True,
    )
    assert migrate(empty_db)  # the runner then brings the database fully up to date
