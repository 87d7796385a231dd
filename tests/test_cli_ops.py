"""Operator commands: prune-logs over every user's rows, and the refusals when the role cannot see them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from flask import Flask
from psycopg2 import sql

from tests.conftest import admin_execute, make_app


def execute(dsn: str, statement: str | sql.Composable, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


@pytest.fixture
def ops_app(fresh_db: str, tmp_path: Path, fernet_key: str) -> Iterator[Flask]:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    yield app
    app.extensions["pilot"].db.close()


@pytest.fixture
def plain_role(admin_dsn: str) -> Iterator[str]:
    """A login role without superuser or BYPASSRLS, member of pilot_app (a least-privilege deployment)."""
    name = f"pilot_ops_{uuid.uuid4().hex[:8]}"
    admin_execute(admin_dsn, sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(name)))
    admin_execute(admin_dsn, sql.SQL("GRANT pilot_app TO {}").format(sql.Identifier(name)))
    yield name
    admin_execute(admin_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def seed_history(dsn: str) -> dict[str, int]:
    """Two users' plans, runs and logs: some 40 days old, some fresh. Returns ids worth checking."""
    ids: dict[str, int] = {}
    for user in ("alice", "bob"):
        (plan_id,) = execute(dsn, "INSERT INTO execution_plans (user_id, name) VALUES (%s, 'p') RETURNING id", (user,))[
            0
        ]
        ids[f"{user}_plan"] = plan_id
        runs = {
            "old_done": ("success", "40 days"),
            "old_stuck": ("running", None),
            "new_done": ("error", "1 day"),
        }
        for label, (status, finished) in runs.items():
            (run_id,) = execute(
                dsn,
                "INSERT INTO plan_runs (plan_id, user_id, trigger, status, created_at, finished_at)"
                " VALUES (%s, %s, 'manual', %s, now() - interval '41 days', now() - %s::interval) RETURNING id",
                (plan_id, user, status, finished),
            )[0]
            ids[f"{user}_{label}"] = run_id
        for age in ("40 days", "31 days", "29 days", "1 hour"):
            execute(
                dsn,
                'INSERT INTO execution_logs (user_id, plan_id, provider, action, status, "timestamp")'
                " VALUES (%s, %s, 'logic', 'transform', 'success', now() - %s::interval)",
                (user, plan_id, age),
            )
    return ids


def test_prune_logs_removes_old_history_of_every_user(ops_app: Flask, fresh_db: str) -> None:
    ids = seed_history(fresh_db)
    result = ops_app.test_cli_runner().invoke(args=["prune-logs", "--older-than-days", "30", "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert "removed 4 execution log(s) and 2 finished run(s)" in result.output
    logs = execute(fresh_db, "SELECT user_id, count(*) FROM execution_logs GROUP BY 1 ORDER BY 1")
    assert logs == [("alice", 2), ("bob", 2)]
    kept = {row[0] for row in execute(fresh_db, "SELECT id FROM plan_runs")}
    for user in ("alice", "bob"):
        assert ids[f"{user}_old_done"] not in kept
        assert ids[f"{user}_old_stuck"] in kept  # running: never pruned, whatever its age
        assert ids[f"{user}_new_done"] in kept
    again = ops_app.test_cli_runner().invoke(args=["prune-logs", "--older-than-days", "30"])
    assert "removed 0 execution log(s) and 0 finished run(s)" in again.output


def test_prune_logs_keeps_each_plans_latest_run_and_can_keep_runs(ops_app: Flask, fresh_db: str) -> None:
    (plan_id,) = execute(fresh_db, "INSERT INTO execution_plans (user_id, name) VALUES ('carol', 'p') RETURNING id")[0]
    (only_run,) = execute(
        fresh_db,
        "INSERT INTO plan_runs (plan_id, user_id, trigger, status, scheduled_for, created_at, finished_at)"
        " VALUES (%s, 'carol', 'schedule', 'success', now() - interval '90 days', now() - interval '90 days',"
        " now() - interval '90 days') RETURNING id",
        (plan_id,),
    )[0]
    runner = ops_app.test_cli_runner()
    assert "0 finished run(s)" in runner.invoke(args=["prune-logs", "--older-than-days", "7"]).output
    assert execute(fresh_db, "SELECT id FROM plan_runs") == [(only_run,)]
    seed_history(fresh_db)
    kept = runner.invoke(args=["prune-logs", "--older-than-days", "30", "--keep-runs"])
    assert "removed 4 execution log(s) and 0 finished run(s)" in kept.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than-days", "0"], "at least 1"),
        (["--older-than-days", "30", "--batch-size", "0"], "--batch-size"),
        ([], "Missing option '--older-than-days'"),
    ],
)
def test_prune_logs_rejects_bad_options(ops_app: Flask, args: list[str], message: str) -> None:
    result = ops_app.test_cli_runner().invoke(args=["prune-logs", *args])
    assert result.exit_code != 0 and message in result.output


def test_prune_logs_refuses_a_role_that_cannot_see_every_user(
    fresh_db: str, plain_role: str, tmp_path: Path, fernet_key: str
) -> None:
    seed_history(fresh_db)
    app = make_app(psycopg2.extensions.make_dsn(fresh_db, user=plain_role), tmp_path, (fernet_key,))
    try:
        result = app.test_cli_runner().invoke(args=["prune-logs", "--older-than-days", "30"])
    finally:
        app.extensions["pilot"].db.close()
    assert result.exit_code == 1
    assert "bypasses row-level security" in result.output
    assert execute(fresh_db, "SELECT count(*) FROM execution_logs") == [(8,)]


def test_create_token_refuses_when_the_lookup_function_cannot_see_tokens(
    ops_app: Flask, fresh_db: str, plain_role: str
) -> None:
    owner = execute(fresh_db, "SELECT current_user")[0][0]
    execute(fresh_db, sql.SQL("ALTER FUNCTION pilot_token_user(text) OWNER TO {}").format(sql.Identifier(plain_role)))
    try:
        result = ops_app.test_cli_runner().invoke(args=["create-token", "dave"])
    finally:
        execute(fresh_db, sql.SQL("ALTER FUNCTION pilot_token_user(text) OWNER TO {}").format(sql.Identifier(owner)))
    assert result.exit_code == 1 and "BYPASSRLS" in result.output
    assert execute(fresh_db, "SELECT count(*) FROM api_tokens") == [(0,)]


def test_env_example_lists_every_variable_pilot_reads() -> None:
    root = Path(__file__).resolve().parent.parent
    example = (root / "deploy" / "pilot.env.example").read_text()
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    read = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', (root / "config.py").read_text())) - {"INFO"}
    gunicorn = (root / "deploy" / "gunicorn.conf.py").read_text()
    read |= set(re.findall(r'(?:_env_int|os\.environ\.get|os\.environ\.setdefault)\(\s*"([A-Z][A-Z0-9_]+)"', gunicorn))
    assert read - documented == set()
    assert not re.search(r"^[A-Z_]+=(sk-|gsk_)", example, re.MULTILINE)  # no real-looking secrets
