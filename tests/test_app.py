"""app.py: importing builds nothing; create_app builds a PilotApp with parts of its own; the checklist's
module-level names (``app``, ``db_manager``, ``registry``) are built lazily, on first use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions

from pilot.application import PilotApp
from pilot.settings import environment_variables
from provider_registry import ProviderRegistry
from providers.logic import LogicProvider
from tests.conftest import make_app, resp_json

ROOT = Path(__file__).resolve().parent.parent
# The acceptance check of issue 8, then what the process holds once the imports are done.
IMPORT_EVERYTHING = """
import gc, sys, threading
import app, scheduler, execution_engine, provider_registry, database
import psycopg2.extensions
connections = [o for o in gc.get_objects() if isinstance(o, psycopg2.extensions.connection)]
print(threading.active_count(), len(connections), "pgserver" in sys.modules, flush=True)
sys.stdin.readline()  # held open while the test looks at the database
"""


def tree(root: Path) -> set[Path]:
    """Every file and folder under ``root`` except git's own and Python's bytecode caches."""
    return {
        path
        for path in root.rglob("*")
        if ".git" not in path.parts and "__pycache__" not in path.parts and not path.name.endswith(".pyc")
    }


def sessions(admin_dsn: str, database: str) -> int:
    conn = psycopg2.connect(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,))
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return int(row[0])


def test_importing_the_design_cards_modules_opens_no_connection_starts_no_thread_creates_no_file(
    admin_dsn: str, fresh_db: str, tmp_path: Path
) -> None:
    data_dir, metrics_dir = tmp_path / "data", tmp_path / "prometheus"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in set(environment_variables().values())}
    env.update(
        DATABASE_URL=fresh_db,
        PILOT_DATA_DIR=str(data_dir),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        PYTHONDONTWRITEBYTECODE="1",
    )
    database = psycopg2.extensions.parse_dsn(fresh_db)["dbname"]
    before = tree(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else ""
        threads, connections, embedded = line.split()
        assert (threads, connections, embedded) == ("1", "0", "False")
        assert sessions(admin_dsn, database) == 0
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert list(data_dir.iterdir()) == []  # no development key, no embedded database
    assert not metrics_dir.exists()  # no multiprocess metrics directory
    assert tree(ROOT) == before


CHECKLIST_NAMES = """
import sys, threading
import app, database, providers
built = [name for module, name in ((app, "app"), (database, "db_manager"), (providers, "registry"))
         if name in vars(module)]
from providers import registry
from app import app as application
from database import db_manager
print(built, len(registry.providers) >= 3, type(application).__name__, type(db_manager).__name__, flush=True)
"""


def test_the_checklists_names_resolve_lazily(session_db: str, tmp_path: Path, fernet_key: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in set(environment_variables().values())}
    env.update(DATABASE_URL=session_db, PILOT_DATA_DIR=str(tmp_path), FERNET_KEY=fernet_key, LOG_LEVEL="ERROR")
    result = subprocess.run(
        [sys.executable, "-c", CHECKLIST_NAMES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "[] True PilotApp DatabaseManager"


def test_each_app_builds_parts_of_its_own(session_db: str, tmp_path: Path, fernet_key: str) -> None:
    first = make_app(session_db, tmp_path, (fernet_key,))
    second = make_app(session_db, tmp_path, (fernet_key,))
    try:
        assert isinstance(first, PilotApp) and first.scheduler is None
        assert first.registry is not second.registry and first.db is not second.db
        assert first.engine.registry is first.registry and first.engine.db is first.db
        assert {"openai", "groq", "anthropic", "webhook", "logic"} <= set(first.registry.names())
    finally:
        for app in (first, second):
            app.engine.shutdown()
            app.db.close()


def test_a_registry_passed_to_create_app_replaces_the_discovered_one(
    session_db: str, tmp_path: Path, fernet_key: str
) -> None:
    registry = ProviderRegistry()
    registry.register(LogicProvider)
    app = make_app(session_db, tmp_path, (fernet_key,), registry=registry)
    try:
        assert app.registry is registry and app.engine.registry is registry
        client = app.test_client()
        assert client.get("/api/providers").json == {"providers": ["logic"]}
        step = {"provider": "openai", "action": "chat_completion", "params": {"prompt": "hi"}}
        refused = client.post("/api/execute-step", json={"user_id": "u", "step": step})
        assert refused.status_code == 400 and resp_json(refused)["error"]["code"] == "unknown_provider"
    finally:
        app.engine.shutdown()
        app.db.close()


def test_python_app_py_serves_with_the_embedded_database() -> None:
    """``python app.py`` with DATABASE_URL unset: an embedded PostgreSQL under PILOT_DATA_DIR, /api/health 200.

    The data dir lives outside pytest's temp root (see ``test_health_and_embedded.data_dir``).
    """
    import requests

    from tests.test_crash_recovery import free_port

    data_dir = Path(tempfile.mkdtemp(prefix="pilot-embedded-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in set(environment_variables().values())}
    env.update(PILOT_DATA_DIR=str(data_dir), FLASK_PORT=str(port), LOG_LEVEL="WARNING", DB_POOL_SIZE="2")
    log = data_dir / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and process.poll() is None and health is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
            except requests.RequestException:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, log.read_text()[-3000:]
        assert health.json()["database"] == {"status": "ok", "embedded": True}
        assert (data_dir / "pgdata").is_dir()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)
