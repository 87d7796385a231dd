"""Run leases (issue 7, item 6): renewed by whatever executes a run, whatever SCHEDULER_ENABLED says.

Leases are per process (one owner id per process), so the executor here is a real
second process: ``python app.py`` with the scheduler disabled.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import requests

from pilot.data import store
from scheduler import PilotScheduler
from tests.conftest import make_app
from tests.fake_upstreams import Reply, WebhookReceiver
from tests.test_crash_recovery import Server, run_status
from tests.test_scheduler import admin, wait_for


def test_a_process_without_scheduler_keeps_its_long_run_alive_against_another_reaper(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FLASK_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=fresh_db,
        FERNET_KEY=fernet_key,
        PILOT_DATA_DIR=str(tmp_path),
        OUTBOUND_ALLOWLIST="127.0.0.1",
        RUN_LEASE_SECONDS="6",
        SCHEDULER_ENABLED="false",
        DB_POOL_SIZE="2",
    )
    reaper_app = make_app(fresh_db, tmp_path, (fernet_key,), scheduler_enabled=True, run_lease_seconds=2)
    reaper = PilotScheduler(reaper_app)
    with WebhookReceiver() as receiver:
        receiver.script(Reply(json={"ok": True}, delay=6.0))
        executor = Server(env, tmp_path / "executor.log")
        try:
            step = {"id": "slow", "provider": "webhook", "action": "request", "params": {"url": receiver.url + "/s"}}
            plan = requests.post(
                f"{executor.url}/api/plans", json={"user_id": user, "name": "slow", "steps": [step]}, timeout=10
            ).json()
            # A run whose owner is gone, so the reaper is seen at work while the slow run goes on.
            with reaper_app.db.transaction(user) as cur:
                dead = store.insert_run(cur, user, plan["id"], trigger="manual", owner_id="gone-host:1:x")
                assert dead is not None
                store.start_run(cur, user, dead["id"], "gone-host:1:x")  # it ran a webhook when its owner died
                marker = {"index": 0, "provider": "webhook", "action": "request", "pure": False, "status": "running"}
                store.progress_run(cur, user, dead["id"], [marker])
            admin(
                fresh_db,
                "UPDATE plan_runs SET lease_expires_at = now() - interval '1 hour', "
                "heartbeat_at = now() - interval '1 hour' WHERE id = %s",
                (dead["id"],),
            )
            reaper.start()
            run = requests.post(f"{executor.url}/api/plans/{plan['id']}/run", json={"user_id": user}, timeout=10)
            assert run.status_code == 202, run.text
            assert wait_for(lambda: run_status(fresh_db, dead["id"])[0] == "interrupted", 10.0), "no reaper ran"
            assert wait_for(lambda: run_status(fresh_db, run.json()["id"])[0] not in ("queued", "running"), 30.0)
            assert run_status(fresh_db, run.json()["id"]) == ("success", None)
            assert len(receiver.requests) == 1
        finally:
            reaper.stop(timeout=5)
            reaper_app.db.close()
            assert executor.stop(signal.SIGTERM) == 0
