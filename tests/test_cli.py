"""Operator commands: prune-logs over every user's rows, and the refusals when the role cannot see them."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from pilot.application import PilotApp
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
def ops_app(fresh_db: str, tmp_path: Path, fernet_key: str) -> Iterator[PilotApp]:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    yield app
    app.db.close()


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


def test_prune_logs_removes_old_history_of_every_user(ops_app: PilotApp, fresh_db: str) -> None:
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


def test_prune_logs_keeps_each_plans_latest_run_and_can_keep_runs(ops_app: PilotApp, fresh_db: str) -> None:
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
def test_prune_logs_rejects_bad_options(ops_app: PilotApp, args: list[str], message: str) -> None:
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
        app.db.close()
    assert result.exit_code == 1
    assert "bypasses row-level security" in result.output
    assert execute(fresh_db, "SELECT count(*) FROM execution_logs") == [(8,)]


def test_create_token_refuses_when_the_lookup_function_cannot_see_tokens(
    ops_app: PilotApp, fresh_db: str, plain_role: str
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
    read = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', (root / "pilot" / "settings.py").read_text())) - {"INFO"}
    gunicorn = (root / "deploy" / "gunicorn.conf.py").read_text()
    read |= set(re.findall(r'(?:_env_int|os\.environ\.get|os\.environ\.setdefault)\(\s*"([A-Z][A-Z0-9_]+)"', gunicorn))
    assert read - documented == set()
    assert not re.search(r"^[A-Z_]+=(sk-|gsk_)", example, re.MULTILINE)  # no real-looking secrets


def seed_schedules(dsn: str) -> dict[str, int]:
    """Plans of two users whose cron text was written under the old (APScheduler) weekday numbering."""
    schedules = {
        "alice_weekdays": ("alice", "morning report", {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}, True),
        "alice_names": ("alice", "by name", {"cron": "0 9 * * mon-fri"}, True),
        "alice_every": ("alice", "every 5", {"cron": "*/5 * * * *"}, True),
        "alice_interval": ("alice", "interval", {"interval_seconds": 60}, True),
        "bob_sunday": ("bob", "weekly", {"cron": "30 2 * * 0"}, False),
        "bob_step": ("bob", "every other", {"cron": "0 8 * * */2", "timezone": "America/New_York"}, True),
        "bob_either": ("bob", "payday", {"cron": "0 6 1 * fri"}, True),
        "bob_invalid": ("bob", "month end", {"cron": "0 0 last * *"}, True),
    }
    ids = {}
    for label, (user, name, schedule, enabled) in schedules.items():
        (ids[label],) = execute(
            dsn,
            "INSERT INTO execution_plans (user_id, name, schedule, timezone, enabled)"
            " VALUES (%s, %s, %s::jsonb, 'UTC', %s) RETURNING id",
            (user, name, json.dumps(schedule), enabled),
        )[0]
    return ids


def test_list_weekday_schedules_names_every_users_changed_plans(ops_app: PilotApp, fresh_db: str) -> None:
    ids = seed_schedules(fresh_db)
    result = ops_app.test_cli_runner().invoke(args=["list-weekday-schedules"])
    assert result.exit_code == 0, result.output
    rows = {int(line.split("\t")[0]): line.split("\t") for line in result.output.splitlines() if line[:1].isdigit()}
    assert set(rows) == {ids[k] for k in ("alice_weekdays", "bob_sunday", "bob_step", "bob_either", "bob_invalid")}
    weekdays = rows[ids["alice_weekdays"]]
    assert weekdays[1:6] == ["alice", "morning report", "0 9 * * 1-5", "Europe/Berlin", "enabled"]
    assert "was Tue,Wed,Thu,Fri,Sat" in weekdays[6] and "now Mon,Tue,Wed,Thu,Fri" in weekdays[6]
    assert rows[ids["bob_sunday"]][1:6] == ["bob", "weekly", "30 2 * * 0", "UTC", "paused"]
    assert "was Mon" in rows[ids["bob_sunday"]][6] and "now Sun" in rows[ids["bob_sunday"]][6]
    assert "was Mon,Wed,Fri,Sun; now Tue,Thu,Sat,Sun" in rows[ids["bob_step"]][6]
    assert rows[ids["bob_step"]][4] == "America/New_York"
    assert "either" in rows[ids["bob_either"]][6]
    assert "not valid" in rows[ids["bob_invalid"]][6]
    assert "5 plan(s)" in result.output
    # Only listed: every schedule keeps its text.
    assert execute(
        fresh_db, "SELECT schedule->>'cron' FROM execution_plans WHERE id = %s", (ids["alice_weekdays"],)
    ) == [("0 9 * * 1-5",)]


def test_list_weekday_schedules_refuses_a_role_that_cannot_see_every_user(
    fresh_db: str, plain_role: str, tmp_path: Path, fernet_key: str
) -> None:
    seed_schedules(fresh_db)
    app = make_app(psycopg2.extensions.make_dsn(fresh_db, user=plain_role), tmp_path, (fernet_key,))
    try:
        result = app.test_cli_runner().invoke(args=["list-weekday-schedules"])
    finally:
        app.db.close()
    assert result.exit_code == 1
    assert "bypasses row-level security" in result.output
