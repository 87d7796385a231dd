"""pilot/data/store.py: every query named once in queries.sql, values always as parameters, NUL never fatal,
and rows only ever the acting user's (through the same transactions requests use)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import psycopg2
import pytest

from pilot.application import PilotApp
from pilot.data import store

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "x'); DROP TABLE execution_plans; -- %(user_id)s %s {0} \\ \""


def names_used_by_store() -> set[str]:
    """Every query name store.py passes to _one, _all or _execute (read from its source, not run)."""
    tree = ast.parse((ROOT / "pilot" / "data" / "store.py").read_text(encoding="utf-8"))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"_one", "_all", "_execute"}:
            for arg in node.args[1:2]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    used.add(arg.value)
                elif isinstance(arg, ast.IfExp):  # get_plan picks one of two names
                    used.update(str(c.value) for c in (arg.body, arg.orelse) if isinstance(c, ast.Constant))
    return used


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    text = (ROOT / "pilot" / "data" / "queries.sql").read_text(encoding="utf-8")
    declared = re.findall(r"^-- name: (\w+)\s*$", text, re.MULTILINE)
    assert len(declared) == len(set(declared)), "a query name is declared twice"
    assert set(store.queries()) == set(declared)
    assert names_used_by_store() == set(declared)
    assert all(statement.strip() for statement in store.queries().values())


def test_no_statement_formats_values_into_its_text() -> None:
    """Values reach PostgreSQL as %(name)s parameters only: no positional %s, no str.format fields."""
    for name, statement in store.queries().items():
        bare = statement.replace("%%", "")  # a literal percent sign, e.g. in format('... %%s ...')
        assert not re.search(r"%s|%d|\{\w*\}", bare), name
        assert re.sub(r"%\(\w+\)s", "", bare).count("%") == 0, name


def test_values_that_look_like_sql_are_stored_as_they_are(app: PilotApp, user: str) -> None:
    plan = {"name": HOSTILE[:200], "original_prompt": HOSTILE, "steps": [{"note": HOSTILE}], "timezone": "UTC"}
    with app.db.transaction(user) as cur:
        row = store.insert_plan(cur, user, {**plan, "enabled": True})
        stored = store.get_plan(cur, user, row["id"])
    assert stored is not None
    assert (stored["name"], stored["original_prompt"], stored["steps"]) == (HOSTILE[:200], HOSTILE, [{"note": HOSTILE}])


def test_nul_is_replaced_in_text_and_in_json_keys_and_values(app: PilotApp, user: str) -> None:
    nul = "a\x00b"
    plan = {
        "name": nul,
        "original_prompt": nul,
        "steps": [{nul: [nul, {"k": nul}]}],
        "timezone": "UTC",
        "enabled": True,
    }
    with app.db.transaction(user) as cur:
        row = store.insert_plan(cur, user, plan)
    fixed = "a\ufffdb"
    assert (row["name"], row["original_prompt"]) == (fixed, fixed)
    assert row["steps"] == [{fixed: [fixed, {"k": fixed}]}]


def test_pgjson_leaves_an_escaped_backslash_before_u0000_alone() -> None:
    """Only a real NUL escape is replaced: the text \\u0000 (a backslash, then u0000) is kept."""
    literal = "\\u0000"
    assert json.loads(store.PgJson({"k": literal}).dumps({"k": literal})) == {"k": literal}
    assert json.loads(store.PgJson({"k": "\x00"}).dumps({"k": "\x00"})) == {"k": "\ufffd"}


def test_rows_of_another_user_are_invisible_and_unchangeable(app: PilotApp, user: str, other_user: str) -> None:
    plan = {"name": "mine", "steps": [], "timezone": "UTC", "enabled": True}
    with app.db.transaction(user) as cur:
        mine = store.insert_plan(cur, user, plan)
    with app.db.transaction(other_user) as cur:
        assert store.get_plan(cur, other_user, mine["id"]) is None
        assert store.list_plans(cur, other_user) == []
        assert store.update_plan(cur, other_user, mine["id"], {**plan, "name": "theirs"}) is None
        assert store.delete_plan(cur, other_user, mine["id"]) is False
    with app.db.transaction(user) as cur:
        kept = store.get_plan(cur, user, mine["id"])
    assert kept is not None and kept["name"] == "mine"


def test_a_transaction_without_a_user_sees_no_rows(app: PilotApp, user: str) -> None:
    with app.db.transaction(user) as cur:
        store.insert_plan(cur, user, {"name": "p", "steps": [], "timezone": "UTC", "enabled": True})
    with app.db.transaction(None) as cur:
        cur.execute("SELECT count(*) AS n FROM execution_plans")
        row = cur.fetchone()
    assert row is not None and row["n"] == 0


def test_a_row_for_another_user_cannot_be_written_from_this_users_transaction(
    app: PilotApp, user: str, other_user: str
) -> None:
    from pilot.errors import NotFound

    with pytest.raises(NotFound), app.db.transaction(user) as cur:
        store.insert_plan(cur, other_user, {"name": "forged", "steps": [], "timezone": "UTC", "enabled": True})


def test_queries_are_parsed_once() -> None:
    assert store.queries() is store.queries()


def test_the_database_refuses_what_the_store_lets_through_with_a_project_error(app: PilotApp, user: str) -> None:
    """A value no column can hold is translated at the edge (database.translate), never a psycopg2 error."""
    from pilot.errors import PilotError

    with pytest.raises(PilotError) as caught, app.db.transaction(user) as cur:
        store.insert_plan(cur, user, {"name": "p", "steps": [], "timezone": "UTC", "enabled": None})
    assert not isinstance(caught.value, psycopg2.Error)


def test_a_finish_with_logs_gives_the_rows_run_logs_reads_with_their_types(app: PilotApp, user: str) -> None:
    """finish_run(with_logs=True) hands back the run's log rows as JSON; they must equal run_logs' rows,
    types included: whole-number latencies stay floats, costs floats or None, timestamps datetimes."""
    with app.db.transaction(user) as cur:
        plan = store.insert_plan(cur, user, {"name": "p", "steps": [], "timezone": "UTC", "enabled": True})
        run = store.enqueue_run(cur, user, plan["id"], trigger="api", input_={"n": 1})
    assert run is not None
    entries = [
        {"step_index": 0, "step_id": "a", "latency_ms": 12.0, "cost_usd": 0, "output": {"x": [1, "\u00e9"]}},
        {"step_index": 1, "step_id": "b", "latency_ms": 0.1 + 0.2, "cost_usd": 0.0019077, "model": "m"},
        {"step_index": 2, "step_id": "c", "status": "error", "error": "boom", "input_tokens": 3},
    ]
    logs = [
        {"provider": "logic", "action": "transform", "status": "success", "plan_id": plan["id"], "run_id": run["id"]}
        | entry
        for entry in entries
    ]
    with app.db.transaction(user) as cur:
        store.insert_log(cur, user, logs[0])  # written before the finish's transaction (a side-effect step)
    with app.db.transaction(user, single=True) as cur:
        store.insert_logs(cur, user, logs[1:])  # written with the finish, in the same round trip
        finished = store.finish_run(cur, user, run["id"], "success", [], None, with_logs=True)
    with app.db.transaction(user, single=True) as cur:
        read = store.run_logs(cur, user, run["id"])
    assert finished is not None and len(read) == 3
    assert finished["logs"] == read
    assert [type(row["latency_ms"]) for row in finished["logs"]] == [float] * 3
    assert [row["cost_usd"] for row in finished["logs"]] == [0.0, 0.0019077, None]
    assert finished["logs"][0]["timestamp"] == read[0]["timestamp"] and read[0]["timestamp"].tzinfo is not None
    with app.db.transaction(user) as cur:
        plain = store.get_run(cur, user, run["id"])
    assert finished.pop("user_queued") is False  # nothing else of the user's is queued
    assert {key: value for key, value in finished.items() if key != "logs"} == plain
