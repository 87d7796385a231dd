"""The run queue across real processes (issue 9): two ``python app.py`` on one database.

Crash (kill -9 of a process whose runs wait queued), spreading (runs posted to a busy
instance are run by the idle one) and exactly-once under two claimers. Each run's
webhook carries its input, so the receiver counts how many times each run executed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.test_crash_recovery import ROOT, Server, free_port, wait_until_healthy
from tests.test_run_queue import SlowReceiver
from tests.test_scheduler import rows, wait_for


def server_env(dsn: str, data_dir: Path, fernet_key: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FLASK_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=dsn,
        FERNET_KEY=fernet_key,
        PILOT_DATA_DIR=str(data_dir),
        OUTBOUND_ALLOWLIST="127.0.0.1",
        RUN_LEASE_SECONDS="3",
        SHUTDOWN_TIMEOUT="2",
        SCHEDULER_ENABLED="false",  # the claimer runs whatever this says
        DB_POOL_SIZE="4",
    )
    env.update(extra)
    return env


def create_plan(base_url: str, user: str, url: str) -> int:
    step = {"id": "hook", "provider": "webhook", "action": "request", "params": {"url": url, "json": "{{ input }}"}}
    response = requests.post(
        f"{base_url}/api/plans", json={"user_id": user, "name": "hook", "steps": [step]}, timeout=10
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def post_run(base_url: str, user: str, plan_id: int, n: int) -> int:
    response = requests.post(
        f"{base_url}/api/plans/{plan_id}/run", json={"user_id": user, "input": {"n": n}}, timeout=10
    )
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def statuses(dsn: str, run_ids: list[int]) -> dict[int, str]:
    return dict(rows(dsn, "SELECT id, status FROM plan_runs WHERE id = ANY(%s)", (run_ids,)))


def executions(receiver: SlowReceiver, path: str) -> Counter[int]:
    """How many times the webhook at ``path`` was called for each run input ``n``."""
    return Counter(int(r.json["n"]) for r in list(receiver.requests) if r.path == path and r.json)


def test_kill_9_of_a_busy_process_leaves_its_queued_runs_to_another_exactly_once(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    env = server_env(fresh_db, tmp_path, fernet_key, RUN_WORKERS="1")
    with SlowReceiver() as receiver:
        first = Server(env, tmp_path / "first.log")
        second: Server | None = None
        try:
            slow = create_plan(first.url, user, receiver.url + "/slow?delay=30")
            fast = create_plan(first.url, user, receiver.url + "/fast")
            stuck = post_run(first.url, user, slow, 100)
            assert wait_for(lambda: executions(receiver, "/slow"), 15.0), "the slow webhook never started"
            waiting = [post_run(first.url, user, fast, n) for n in range(4)]  # its one worker is busy
            assert set(statuses(fresh_db, waiting).values()) == {"queued"}
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL

            second = Server({**env, "RUN_WORKERS": "2"}, tmp_path / "second.log")
            assert wait_for(lambda: set(statuses(fresh_db, waiting).values()) == {"success"}, 30.0), statuses(
                fresh_db, waiting
            )
            assert executions(receiver, "/fast") == Counter(range(4))  # each queued run executed exactly once
            assert wait_for(lambda: statuses(fresh_db, [stuck])[stuck] == "interrupted", 20.0)
            error = rows(fresh_db, "SELECT error FROM plan_runs WHERE id = %s", (stuck,))[0][0]
            assert "hook (webhook.request) was in flight" in error and "not retried" in error
            assert executions(receiver, "/slow") == Counter([100])  # the webhook in flight was not re-sent
        finally:
            if first.process.poll() is None:
                first.stop(signal.SIGKILL)
            if second is not None:
                assert second.stop(signal.SIGTERM) == 0


def test_runs_posted_to_a_busy_instance_are_run_by_an_idle_one(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    env = server_env(fresh_db, tmp_path, fernet_key, RUN_WORKERS="2")
    with SlowReceiver() as receiver:
        a = Server(env, tmp_path / "a.log")
        b = Server(env, tmp_path / "b.log")
        try:
            plan = create_plan(a.url, user, receiver.url + "/work?delay=1.5")
            run_ids = [post_run(a.url, user, plan, n) for n in range(8)]  # all posted to A
            assert wait_for(lambda: set(statuses(fresh_db, run_ids).values()) == {"success"}, 60.0)
            owners = [row[0] for row in rows(fresh_db, "SELECT owner_id FROM plan_runs WHERE id = ANY(%s)", (run_ids,))]
            pids = Counter(int(owner.split(":")[1]) for owner in owners)
            assert pids[b.process.pid] >= 1 and pids[a.process.pid] >= 1, pids  # B took what A had no room for
            assert set(pids) == {a.process.pid, b.process.pid}
            assert executions(receiver, "/work") == Counter(range(8))
        finally:
            assert a.stop(signal.SIGTERM) == 0
            assert b.stop(signal.SIGTERM) == 0


def test_two_claimers_execute_each_of_many_runs_exactly_once(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    env = server_env(fresh_db, tmp_path, fernet_key, RUN_WORKERS="4")
    count = 60
    with SlowReceiver() as receiver:
        a = Server(env, tmp_path / "a.log")
        b = Server(env, tmp_path / "b.log")
        try:
            plan = create_plan(a.url, user, receiver.url + "/once")
            with ThreadPoolExecutor(max_workers=8) as pool:
                run_ids = list(pool.map(lambda n: post_run((a.url, b.url)[n % 2], user, plan, n), range(count)))
            assert wait_for(lambda: set(statuses(fresh_db, run_ids).values()) == {"success"}, 90.0)
            assert executions(receiver, "/once") == Counter(range(count))
            logs = rows(fresh_db, "SELECT run_id, count(*) FROM execution_logs GROUP BY run_id")
            assert sorted(run_id for run_id, _ in logs) == sorted(run_ids) and {n for _, n in logs} == {1}
            attempts = rows(fresh_db, "SELECT DISTINCT attempts FROM plan_runs WHERE id = ANY(%s)", (run_ids,))
            assert attempts == [(1,)]  # each claimed once
        finally:
            assert a.stop(signal.SIGTERM) == 0
            assert b.stop(signal.SIGTERM) == 0


def test_sigterm_finishes_the_run_in_hand_and_leaves_queued_runs_to_another_process(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    env = server_env(fresh_db, tmp_path, fernet_key, RUN_WORKERS="1", SHUTDOWN_TIMEOUT="15")
    with SlowReceiver() as receiver:
        first = Server(env, tmp_path / "first.log")
        second: Server | None = None
        try:
            slow = create_plan(first.url, user, receiver.url + "/slow?delay=2")
            fast = create_plan(first.url, user, receiver.url + "/fast")
            in_hand = post_run(first.url, user, slow, 100)
            assert wait_for(lambda: executions(receiver, "/slow"), 15.0), "the slow webhook never started"
            waiting = [post_run(first.url, user, fast, n) for n in range(3)]
            assert first.stop(signal.SIGTERM) == 0  # claims nothing more, finishes the run it holds
            assert statuses(fresh_db, [in_hand]) == {in_hand: "success"}
            assert set(statuses(fresh_db, waiting).values()) == {"queued"}  # not interrupted: left for others
            assert executions(receiver, "/fast") == Counter()

            second = Server(env, tmp_path / "second.log")
            assert wait_for(lambda: set(statuses(fresh_db, waiting).values()) == {"success"}, 30.0)
            assert executions(receiver, "/fast") == Counter(range(3))
            assert executions(receiver, "/slow") == Counter([100])
        finally:
            if first.process.poll() is None:
                first.stop(signal.SIGKILL)
            if second is not None:
                assert second.stop(signal.SIGTERM) == 0


def test_gunicorn_workers_claim_runs_queued_by_anyone_whatever_scheduler_enabled_says(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    port = free_port()
    env = server_env(
        fresh_db,
        tmp_path,
        fernet_key,
        FLASK_PORT=str(port),
        PILOT_WORKERS="2",
        PILOT_THREADS="4",
        PILOT_GRACEFUL_TIMEOUT="5",
        PILOT_ACCESS_LOG="",
    )
    log = (tmp_path / "gunicorn.log").open("w")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen(
        [str(gunicorn), "-c", "deploy/gunicorn.conf.py", "app:create_app()"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with SlowReceiver() as receiver:
            health = wait_until_healthy(base)
            assert health is not None and health.status_code == 200, (tmp_path / "gunicorn.log").read_text()[-3000:]
            plan = create_plan(base, user, receiver.url + "/g")
            # Queued behind every worker's back, as a scheduler of another instance would: only a
            # claimer (woken by the insert's NOTIFY, or its poll) can run it.
            inserted = rows(
                fresh_db,
                "INSERT INTO plan_runs (plan_id, user_id, trigger, status, input) "
                "VALUES (%s, %s, 'api', 'queued', '{\"n\": 7}') RETURNING id",
                (plan, user),
            )
            run_id = int(inserted[0][0])
            assert wait_for(lambda: statuses(fresh_db, [run_id]) == {run_id: "success"}, 30.0)
            assert executions(receiver, "/g") == Counter([7])
            answer = requests.post(
                f"{base}/api/plans/{plan}/run?wait=true", json={"user_id": user, "input": {"n": 8}}, timeout=40
            )
            assert answer.status_code == 200 and answer.json()["status"] == "success", answer.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "gunicorn.log").read_text()[-3000:]
