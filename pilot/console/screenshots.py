"""Screenshots of every console page at a laptop and a phone width, for people to look at.

    python -m pilot.console.screenshots [--out var/screenshots] [--admin-dsn postgresql://postgres@127.0.0.1/postgres]

Needs the dev requirements (Playwright for Python) and Debian's Chromium at /usr/bin/chromium
(``apt-get install chromium``; the script never downloads a browser). It creates a throwaway
database on the PostgreSQL named by ``--admin-dsn`` or ``TEST_DATABASE_URL`` (an embedded one
when neither is set), fills it through the API with a demo user's plans, runs and credentials
(model calls go to a loopback OpenAI-compatible fake), takes the pictures and drops the
database. The output folder is ignored by git.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg2
import psycopg2.extensions
from cryptography.fernet import Fernet
from psycopg2 import sql
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = {"laptop": (1280, 800), "phone": (390, 844)}
Scheme = Literal["light", "dark"]
SCHEMES: tuple[Scheme, ...] = ("light", "dark")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USER = "demo"
DRAFT = {
    "name": "Weekday summary",
    "schedule": {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
    "steps": [
        {"id": "notes", "provider": "logic", "action": "transform", "params": {"template": "3 PRs merged"}},
        {
            "id": "summary",
            "provider": "openai",
            "action": "chat_completion",
            "params": {"model": "gpt-4o-mini", "prompt": "Summarise: {{ steps.notes.data }}"},
        },
    ],
}


def _admin(dsn: str, statement: sql.Composable) -> None:
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@contextmanager
def throwaway_database(admin_dsn: str | None) -> Iterator[str]:
    """A new migrated database (dropped afterwards) on ``admin_dsn``'s server, or on an embedded one."""
    from database import migrate

    if admin_dsn is None:
        import pgserver

        server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="pilot-shots-pg-")), cleanup_mode="delete")
        try:
            with throwaway_database(str(server.get_uri())) as dsn:
                yield dsn
        finally:
            server.cleanup()
        return
    name = f"pilot_screens_{uuid.uuid4().hex[:8]}"
    _admin(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = psycopg2.extensions.make_dsn(admin_dsn, dbname=name)
        migrate(dsn)
        yield dsn
    finally:
        _admin(admin_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a real WSGI server on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A loopback port nothing listens on (a webhook to it fails at once, without leaving this machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def seed(client: Any, openai_base_url: str) -> dict[str, int]:
    """A demo user's credentials, plans (scheduled, paused, failing) and runs, made through the API."""

    def call(method: str, path: str, expect: int, **body: Any) -> Any:
        response = client.open(path, method=method, json={"user_id": USER, **body})
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.get_data(as_text=True)}")
        return response.json

    call("POST", "/api/provider-credentials/openai", 200, credentials={"api_key": "sk-demo-0000000000001234"})
    call("POST", "/api/provider-credentials/openai", 200, credentials={"base_url": openai_base_url})
    summary = call(
        "POST",
        "/api/plans",
        201,
        name="Morning briefing",
        original_prompt="Every weekday at 9, summarise the team's notes",
        steps=[
            {
                "id": "notes",
                "provider": "logic",
                "action": "transform",
                "params": {"template": "3 PRs merged, 1 incident"},
            },
            {
                "id": "summary",
                "provider": "openai",
                "action": "chat_completion",
                "params": {"model": "gpt-4o-mini", "prompt": "Summarise: {{ steps.notes.data }}"},
            },
        ],
        schedule={"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
        timezone="Europe/Berlin",
    )
    failing = call(
        "POST",
        "/api/plans",
        201,
        name="Post to intranet",
        steps=[
            {"id": "digest", "provider": "logic", "action": "transform", "params": {"template": "weekly digest"}},
            {
                "id": "post",
                "provider": "webhook",
                "action": "request",
                "params": {
                    "url": f"http://127.0.0.1:{closed_port()}/hook",
                    "method": "POST",
                    "body": "{{ steps.digest.data }}",
                },
                "retry": {"max_attempts": 1, "backoff_s": 0},
            },
        ],
    )
    paused = call(
        "POST",
        "/api/plans",
        201,
        name="Hourly check",
        steps=[{"provider": "logic", "action": "condition", "params": {"expression": "`true`"}}],
        schedule={"interval_seconds": 3600},
        enabled=False,
    )
    for _ in range(3):
        call("POST", f"/api/plans/{summary['id']}/run?wait=true", 200)
    failed = call("POST", f"/api/plans/{failing['id']}/run?wait=true", 200)
    call("PUT", "/api/budget", 200, monthly_usd=5, on_exceed="warn")
    last = call("POST", f"/api/plans/{summary['id']}/run?wait=true", 200, trigger="api")
    return {
        "summary": summary["id"],
        "failing": failing["id"],
        "paused": paused["id"],
        "run": last["id"],
        "failed": failed["id"],
    }


def shoot(base_url: str, out: Path, ids: dict[str, int], schemes: tuple[Scheme, ...] = ("light",)) -> list[Path]:
    """Each page at each width, after the page says it has loaded; returns the files written."""
    from playwright.sync_api import expect, sync_playwright

    pages = [
        ("signin", None, "h1"),
        ("runs", "#/runs", "table.grid"),
        ("run", f"#/runs/{ids['run']}", ".step-list .step"),
        ("run-failed", f"#/runs/{ids['failed']}", ".step-error"),
        ("plans", "#/plans", "table.grid"),
        ("dry-run", "#/plans", "table.grid"),
        ("draft", "#/plans/new?draft=1", "form.draft"),
        ("plan-edit", f"#/plans/{ids['summary']}/edit", "form.editor[data-ready=true]"),
        ("credentials", "#/credentials", "section.provider"),
        ("health", "#/health?window=7d", ".chart canvas"),
    ]
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for scheme, (size, (width, height)) in ((s, w) for s in schemes for w in WIDTHS.items()):
                label = size if scheme == "light" else f"{size}-{scheme}"
                context = browser.new_context(
                    viewport={"width": width, "height": height}, locale="en-GB", color_scheme=scheme
                )
                page = context.new_page()
                page.set_default_timeout(20_000)
                page.goto(base_url + "/")
                for name, route, ready in pages:
                    if route is not None and name != "signin":
                        page.goto(f"{base_url}/{route}")
                    expect(page.locator(ready).first).to_be_visible()
                    if name == "signin":
                        page.fill("#credential", USER)
                        page.screenshot(path=out / f"{name}-{label}.png", full_page=True)
                        page.click("button[type=submit]")
                        expect(page.locator("#nav")).to_be_visible()
                        written.append(out / f"{name}-{label}.png")
                        continue
                    if name == "credentials":
                        page.locator("section[data-provider=openai] .step-head button").click()
                        expect(page.locator("section[data-provider=openai] .test-result .notice")).to_be_visible()
                    if name == "dry-run":
                        page.get_by_role("button", name="Dry run Morning briefing").click()
                        expect(page.locator("dialog .dry-report")).to_be_visible()
                    if name == "draft":
                        page.fill("#draft-prompt", "Every weekday at 9, summarise the team's notes")
                        page.check("#draft-dry-run")
                        page.click("#draft-button")
                        expect(page.locator(".draft-report [data-drafted]")).to_be_visible()
                    if name == "plan-edit":
                        text = page.input_value("textarea.json").replace(
                            '"action": "chat_completion"', '"action": "chat"'
                        )
                        page.fill("textarea.json", text)
                        page.click("#save-plan")
                        expect(page.locator(".field-error").first).to_be_visible()
                    path = out / f"{name}-{label}.png"
                    page.screenshot(path=path, full_page=True)
                    written.append(path)
                context.close()
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "screenshots", help="folder for the PNG files")
    parser.add_argument(
        "--admin-dsn", default=os.environ.get("TEST_DATABASE_URL"), help="a PostgreSQL to create the demo database on"
    )
    parser.add_argument("--dark", action="store_true", help="also take every picture in the dark colour scheme")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PILOT_DATA_DIR", tempfile.mkdtemp(prefix="pilot-shots-"))
    from app import create_app
    from tests.fake_upstreams import FakeOpenAI

    with throwaway_database(args.admin_dsn) as dsn, FakeOpenAI() as openai:
        openai.reply_text = "Three PRs merged; one incident, resolved in 20 minutes. <b>No action needed.</b>"
        app = create_app(
            {
                "database_url": dsn,
                "data_dir": Path(os.environ["PILOT_DATA_DIR"]),
                "fernet_keys": (Fernet.generate_key().decode(),),
                "scheduler_enabled": False,
                "db_pool_size": 4,
                "outbound_allowlist": ("127.0.0.1",),
                "auth_mode": "dev",
                "pilot_env": "test",
            }
        )
        try:
            ids = seed(app.test_client(), openai.base_url)
            openai.reply_text = json.dumps(DRAFT)  # from here on the model answers the draft page with a plan
            with serving(app) as url:
                written = shoot(url, args.out, ids, SCHEMES if args.dark else ("light",))
        finally:
            app.engine.shutdown()
            app.db.close()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
