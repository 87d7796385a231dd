"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright.

The app runs on a real WSGI server on 127.0.0.1 against the test database; model calls go
to a loopback OpenAI-compatible fake. Every wait is Playwright's auto-waiting with a
deadline: nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_app, resp_json
from tests.fake_upstreams import UNAUTHORIZED, FakeOpenAI
from tests.llm_support import GatedOpenAI, poll
from tests.test_planner import BAD_PARAMS, UNKNOWN_PROVIDER, VALID_PLAN, completion

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI installs it", allow_module_level=True)

import flask  # noqa: E402
from playwright.sync_api import (  # noqa: E402
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)
from werkzeug.serving import make_server  # noqa: E402

from pilot.application import PilotApp  # noqa: E402
from pilot.data import store  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 20_000  # generous for a busy 2-core machine; Playwright returns as soon as the condition holds
JWT_SECRET = "console-browser-test-secret-0123456789abcdef"
XSS = "<img src=x onerror=alert(1)>"

expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class Served:
    """A Pilot app on a real HTTP server."""

    app: PilotApp
    url: str


def serve(app: PilotApp) -> Iterator[Served]:
    """``app`` on werkzeug's threaded server on a free loopback port, until the generator is closed."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Served(app, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        app.engine.shutdown()
        app.db.close()


@pytest.fixture(scope="module")
def dev_server(session_db: str, tmp_path_factory: pytest.TempPathFactory, fernet_key: str) -> Iterator[Served]:
    yield from serve(make_app(session_db, tmp_path_factory.mktemp("dev"), (fernet_key,)))


@pytest.fixture(scope="module")
def token_server(session_db: str, tmp_path_factory: pytest.TempPathFactory, fernet_key: str) -> Iterator[Served]:
    app = make_app(
        session_db, tmp_path_factory.mktemp("token"), (fernet_key,), auth_mode="token", jwt_secret=JWT_SECRET
    )
    yield from serve(app)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Session:
    """One browser tab with what it saw: dialogs opened, CSP complaints, every request made."""

    page: Page
    base: str
    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.base}/{route}")

    def sign_in_dev(self, user: str) -> None:
        self.open()
        expect(self.page.get_by_label("User name")).to_be_visible()
        self.page.get_by_label("User name").fill(user)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("navigation", name="Main")).to_be_visible()

    def assert_clean(self) -> None:
        """No alert/confirm/prompt opened, nothing refused by the page's CSP, nothing fetched from elsewhere."""
        assert self.dialogs == []
        assert [m for m in self.console_errors if "Content Security Policy" in m or "Trusted Type" in m] == []
        assert self.requests and [r.url for r in self.requests if not r.url.startswith(self.base + "/")] == []


@pytest.fixture
def tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Session]:
    server: Served = request.getfixturevalue(getattr(request, "param", "dev_server"))
    context = browser.new_context(
        viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="America/New_York"
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    session = Session(page, server.url)

    def on_dialog(dialog: Dialog) -> None:
        session.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            session.console_errors.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("request", lambda request: session.requests.append(request))
    try:
        yield session
    finally:
        context.close()


def api(served: Served, method: str, path: str, user: str, expect_status: int, **body: Any) -> Any:
    response = served.app.test_client().open(path, method=method, json={"user_id": user, **body})
    assert response.status_code == expect_status, response.get_data(as_text=True)
    return resp_json(response)


def test_sign_in_create_a_plan_from_json_run_it_and_read_each_steps_output(
    tab: Session, dev_server: Served, user: str
) -> None:
    page = tab.page
    tab.sign_in_dev(user)
    expect(page.get_by_text("No runs yet.")).to_be_visible()

    page.get_by_role("link", name="Plans", exact=True).first.click()
    expect(page.get_by_text("No plans yet.")).to_be_visible()
    page.get_by_role("link", name="New plan").click()
    editor = page.get_by_label("Plan (JSON)")
    expect(editor).to_have_value(re.compile("Hello from Pilot"))

    # First a plan the server refuses: the error names the field and is shown at its line.
    text = editor.input_value()
    editor.fill(text.replace('"timezone": "UTC"', '"timezone": "Mars/Olympus"'))
    page.get_by_role("button", name="Create plan").click()
    error = page.locator(".field-error")
    expect(error).to_have_count(1)
    expect(error.locator(".field")).to_have_text("timezone")
    expect(error).to_contain_text("unknown timezone 'Mars/Olympus'")
    expect(error.locator(".excerpt")).to_have_text('"timezone": "Mars/Olympus",')
    expect(editor).to_have_attribute("aria-invalid", "true")
    error.get_by_role("button", name="Show in editor").click()
    selected = page.evaluate("(t => t.value.slice(t.selectionStart, t.selectionEnd))(document.activeElement)")
    assert selected.startswith('"timezone": "Mars/Olympus"')

    editor.fill(text.replace('"name": "Hello plan"', '"name": "Browser plan"'))
    page.get_by_role("button", name="Create plan").click()
    expect(page.get_by_text("Created “Browser plan”")).to_be_visible()
    row = page.locator("tr", has_text="Browser plan")
    expect(row).to_be_visible()

    row.get_by_role("button", name="Run Browser plan now").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"Run #\d+"))
    expect(page.locator(".facts [data-status]")).to_have_text("success")
    steps = page.locator(".step-list > li")
    expect(steps).to_have_count(2)
    expect(steps.nth(0).locator(".output pre")).to_have_text("Hello from Pilot")
    expect(steps.nth(1).locator(".output pre")).to_have_text("Hello from Pilot!")
    expect(steps.nth(1).locator("details.io pre").first).to_contain_text('"template": "Hello from Pilot!"')
    expect(steps.nth(0).locator(".stats")).to_contain_text("Attempts1")
    run_id = re.search(r"#/runs/(\d+)", page.url)
    assert run_id is not None

    page.get_by_role("link", name="Runs", exact=True).click()
    listed = page.locator(f"tr[data-run-id='{run_id.group(1)}']")
    expect(listed).to_contain_text("Browser plan")
    expect(listed.locator("[data-status]")).to_have_text("success")
    tab.assert_clean()


def test_a_run_queued_from_the_list_is_seen_live_until_it_finishes(tab: Session, dev_server: Served, user: str) -> None:
    plan = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="Live plan",
        steps=[{"id": "a", "provider": "logic", "action": "transform", "params": {"template": "done"}}],
    )
    tab.sign_in_dev(user)
    expect(tab.page.get_by_text("No runs yet.")).to_be_visible()
    run = api(dev_server, "POST", f"/api/plans/{plan['id']}/run", user, 202)  # queued behind the page's back
    row = tab.page.locator(f"tr[data-run-id='{run['id']}']")
    expect(row.locator("[data-status]")).to_have_text("success")  # appears and finishes by polling

    tab.page.get_by_label("Status").select_option("error")
    expect(tab.page.get_by_text("No runs match these filters.")).to_be_visible()
    assert "status=error" in tab.page.url
    tab.page.get_by_label("Status").select_option("success")
    tab.page.get_by_label("Plan", exact=True).select_option(label=f"Live plan (#{plan['id']})")
    expect(tab.page.locator(f"tr[data-run-id='{run['id']}']")).to_be_visible()
    tab.page.get_by_label("Trigger").select_option("schedule")
    expect(tab.page.get_by_text("No runs match these filters.")).to_be_visible()
    tab.assert_clean()


def test_a_model_steps_text_tokens_and_model_are_shown(tab: Session, dev_server: Served, user: str) -> None:
    with FakeOpenAI() as fake:
        fake.reply_text = "Line one\nLine <two>"
        api(
            dev_server,
            "POST",
            "/api/provider-credentials/openai",
            user,
            200,
            credentials={"api_key": "sk-model-test-000000001111", "base_url": fake.base_url},
        )
        plan = api(
            dev_server,
            "POST",
            "/api/plans",
            user,
            201,
            name="Ask",
            steps=[
                {
                    "id": "ask",
                    "provider": "openai",
                    "action": "chat_completion",
                    "params": {"model": "gpt-4o-mini", "prompt": "hi"},
                },
            ],
        )
        run = api(dev_server, "POST", f"/api/plans/{plan['id']}/run?wait=true", user, 200)
    tab.sign_in_dev(user)
    tab.open(f"#/runs/{run['id']}")
    step = tab.page.locator(".step-list > li").first
    expect(step.locator("pre.prose")).to_have_text("Line one\nLine <two>")
    expect(step.locator(".stats")).to_contain_text("Tokens10")  # the fake's usage: 7 + 3
    expect(step.locator(".stats")).to_contain_text("Modelgpt-4o-mini")
    expect(tab.page.locator(".facts")).to_contain_text("Tokens10")
    tab.assert_clean()


def test_the_console_works_from_the_keyboard(tab: Session, dev_server: Served, user: str) -> None:
    page = tab.page
    tab.open()
    expect(page.get_by_label("User name")).to_be_focused()
    page.keyboard.type(user)
    page.keyboard.press("Enter")
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    plans_link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Plans")
    for _ in range(15):  # bounded: the link is a few tab stops from the top
        page.keyboard.press("Tab")
        if plans_link.evaluate("el => el === document.activeElement"):
            break
    expect(plans_link).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Plans")
    expect(page.get_by_role("heading", level=1)).to_be_focused()  # focus follows the navigation
    tab.assert_clean()


def test_pause_and_resume_a_schedule_with_next_run_in_both_zones(tab: Session, dev_server: Served, user: str) -> None:
    plan = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="Tokyo mornings",
        timezone="Asia/Tokyo",
        steps=[],
        schedule={"cron": "0 9 * * *", "timezone": "Asia/Tokyo"},
    )
    tab.sign_in_dev(user)
    tab.open("#/plans")
    row = tab.page.locator(f"tr[data-plan-id='{plan['id']}']")
    next_run = row.locator(".next-run")
    expect(next_run).to_contain_text("GMT+9")  # the schedule's zone
    expect(next_run).to_contain_text(re.compile(r"E[SD]T.*\(your time\)"))  # the viewer's (America/New_York)

    row.get_by_role("button", name="Pause the schedule of Tokyo mornings").click()
    expect(row.get_by_role("button", name="Resume the schedule of Tokyo mornings")).to_be_visible()
    expect(row.locator("[data-status='paused']")).to_be_visible()
    assert api(dev_server, "GET", f"/api/plans/{plan['id']}", user, 200)["enabled"] is False

    row.get_by_role("button", name="Resume the schedule of Tokyo mornings").click()
    expect(row.get_by_role("button", name="Pause the schedule of Tokyo mornings")).to_be_visible()
    expect(row.locator(".next-run")).to_contain_text("GMT+9")
    assert api(dev_server, "GET", f"/api/plans/{plan['id']}", user, 200)["enabled"] is True
    tab.assert_clean()


def test_delete_a_plan_only_after_confirming(tab: Session, dev_server: Served, user: str) -> None:
    plan = api(dev_server, "POST", "/api/plans", user, 201, name="Doomed", steps=[])
    tab.sign_in_dev(user)
    tab.open("#/plans")
    row = tab.page.locator(f"tr[data-plan-id='{plan['id']}']")
    row.get_by_role("button", name="Delete Doomed").click()
    dialog = tab.page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete plan “Doomed”?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    api(dev_server, "GET", f"/api/plans/{plan['id']}", user, 200)
    row.get_by_role("button", name="Delete Doomed").click()
    tab.page.get_by_role("dialog").get_by_role("button", name="Delete plan").click()
    expect(tab.page.get_by_text("No plans yet.")).to_be_visible()
    api(dev_server, "GET", f"/api/plans/{plan['id']}", user, 404)
    tab.assert_clean()


def test_add_test_and_delete_a_credential(tab: Session, dev_server: Served, user: str) -> None:
    secret = "sk-browser-test-0000000000009876"
    page = tab.page
    with FakeOpenAI() as fake:
        tab.sign_in_dev(user)
        tab.open("#/credentials")
        expect(page.get_by_text("No credentials stored yet.")).to_be_visible()
        card = page.locator("section[data-provider='openai']")
        card.get_by_label("Type").select_option("api_key")
        card.get_by_label("Value").fill(secret)
        card.get_by_role("button", name="Add").click()
        expect(card.locator("li[data-type='api_key'] .masked")).to_have_text(re.compile(r"…9876$"))
        card.get_by_label("Type").select_option("base_url")
        card.get_by_label("Value").fill(fake.base_url)
        card.get_by_role("button", name="Add").click()
        expect(card.locator("li[data-type='base_url']")).to_be_visible()
        assert secret not in page.content()

        card.get_by_role("button", name="Test").click()
        result = card.locator(".test-result .notice")
        expect(result).to_have_attribute("data-success", "true")
        expect(result).to_contain_text("Works")
        assert fake.requests[-1].path == "/v1/models"
        assert fake.requests[-1].header("Authorization") == f"Bearer {secret}"

        fake.script(UNAUTHORIZED)
        card.get_by_role("button", name="Test").click()
        expect(result).to_have_attribute("data-success", "false")
        expect(result).to_contain_text("HTTP 401")

    card.get_by_role("button", name="Delete openai api_key").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(card.locator("li[data-type='api_key']")).to_have_count(0)
    expect(card.locator("li[data-type='base_url']")).to_be_visible()
    tab.assert_clean()


BAR_PIXELS = """(title) => {
    // Pixels of the bar colour (#0072B2) on the chart's canvas: drawn bars, not just axes and grid.
    const canvas = document.querySelector(`figure[data-chart="${title}"] canvas`);
    if (!canvas) return false;
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
        const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
        if (r < 8 && Math.abs(g - 114) < 8 && Math.abs(b - 178) < 8) n++;
    }
    return n > 200;
}"""


def test_health_charts_are_drawn_with_data(tab: Session, dev_server: Served, user: str) -> None:
    good = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="ok",
        steps=[{"provider": "logic", "action": "transform", "params": {"template": "x"}}],
    )
    bad = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="bad",
        steps=[{"provider": "logic", "action": "transform", "params": {"template": "{{ input.missing.x }}"}}],
    )
    for plan_id in (good["id"], good["id"], bad["id"]):
        api(dev_server, "POST", f"/api/plans/{plan_id}/run?wait=true", user, 200)
    tab.sign_in_dev(user)
    tab.open("#/health")
    page = tab.page
    expect(page.locator("figure.chart canvas")).to_have_count(3)
    rate = "Success rate by provider (last 24 hours)"
    figure = page.locator(f"figure[data-chart='{rate}']")
    expect(figure).to_have_attribute("data-points", "1")
    figure.get_by_text("Show the numbers").click()
    expect(figure.locator(".chart-data tbody tr")).to_have_text(["logic66.7%"])
    errors = page.locator("figure[data-chart='Errors per hour (last 24 hours)']")
    expect(errors).to_have_attribute("data-series", "1")
    errors.get_by_text("Show the numbers").click()
    expect(errors.locator(".chart-data tbody tr")).to_have_text(["logic1"])
    page.wait_for_function(BAR_PIXELS, arg=rate, timeout=TIMEOUT_MS)  # polls until the bars are painted
    expect(page.locator("section[aria-labelledby='sched-title']")).to_contain_text("disabled")

    page.get_by_role("button", name="30 days").click()
    expect(page.get_by_role("button", name="30 days")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("figure[data-chart='Success rate by provider (last 30 days)'] canvas")).to_be_visible()
    tab.assert_clean()


def test_an_xss_payload_in_an_output_and_a_plan_name_shows_as_text_and_runs_nothing(
    tab: Session, dev_server: Served, user: str
) -> None:
    name = "<script>alert(2)</script>"
    plan = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name=name,
        steps=[
            {"id": "evil", "provider": "logic", "action": "transform", "params": {"template": XSS}},
        ],
    )
    run = api(dev_server, "POST", f"/api/plans/{plan['id']}/run?wait=true", user, 200)
    with FakeOpenAI() as fake:  # a model's answer carrying the payload
        fake.reply_text = XSS
        store_openai(dev_server, user, fake.base_url)
        chat = api(
            dev_server,
            "POST",
            "/api/plans",
            user,
            201,
            name="chatty",
            steps=[{"provider": "openai", "action": "chat_completion", "params": {"model": "m", "prompt": "hi"}}],
        )
        answered = api(dev_server, "POST", f"/api/plans/{chat['id']}/run?wait=true", user, 200)
    tab.sign_in_dev(user)
    page = tab.page
    tab.open(f"#/runs/{answered['id']}")
    expect(page.locator(".step-list .output pre.prose")).to_have_text(XSS)
    tab.open(f"#/runs/{run['id']}")
    expect(page.locator(".step-list .output pre")).to_have_text(XSS)
    expect(page.locator(".facts")).to_contain_text(name)
    tab.open("#/runs")
    expect(page.locator(f"tr[data-run-id='{run['id']}']")).to_contain_text(name)
    tab.open("#/plans")
    expect(page.locator(f"tr[data-plan-id='{plan['id']}']")).to_contain_text(name)
    assert page.locator("main img, main script").count() == 0
    assert not any(r.url.endswith("/x") for r in tab.requests)  # no <img src=x> was ever created
    tab.assert_clean()


@pytest.mark.parametrize("tab", ["token_server"], indirect=True)
def test_token_mode_refuses_a_wrong_token_and_never_puts_one_in_a_url(
    tab: Session, token_server: Served, user: str
) -> None:
    result = token_server.app.test_cli_runner().invoke(args=["create-token", user])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    wrong = "pilot_" + "x" * 43
    page = tab.page
    tab.open()
    field = page.get_by_label("API token or JWT")
    field.fill(wrong)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".notice.error")).to_contain_text("not valid")
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()

    field.fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(page.get_by_text("No runs yet.")).to_be_visible()
    for route, ready in [
        ("#/plans", "No plans yet."),
        ("#/credentials", "No credentials stored yet."),
        ("#/health", "No steps ran in the last 24 hours."),
    ]:
        tab.open(route)
        expect(page.get_by_text(ready)).to_be_visible()
    assert page.evaluate("() => document.cookie") == ""

    api_calls = [r for r in tab.requests if "/api/" in r.url]
    assert len(api_calls) >= 5
    for request in tab.requests:
        assert token not in request.url and wrong not in request.url
        assert "user_id" not in request.url
    authenticated = [r for r in api_calls if not r.url.endswith(("/api/health", "/api/openapi.json"))]
    sent = [r.headers.get("authorization") for r in authenticated]
    assert sent.count(f"Bearer {wrong}") == 1  # the refused sign-in, then never again
    assert sent.count(f"Bearer {token}") == len(sent) - 1

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API token or JWT")).to_be_visible()
    assert page.evaluate("() => Object.keys(sessionStorage).length") == 0
    tab.assert_clean()


def store_openai(served: Served, user: str, base_url: str) -> None:
    api(
        served,
        "POST",
        "/api/provider-credentials/openai",
        user,
        200,
        credentials={"api_key": "sk-console-test-000000004321", "base_url": base_url},
    )


def test_a_dry_run_shows_each_steps_rendered_params_and_outcome_and_runs_nothing(
    tab: Session, dev_server: Served, user: str
) -> None:
    plan = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="Dry plan",
        steps=[
            {"id": "greet", "provider": "logic", "action": "transform", "params": {"template": "Hi <b>there</b>"}},
            {
                "id": "post",
                "provider": "webhook",
                "action": "request",
                "params": {"url": "https://hooks.example.com/x", "json": {"text": "{{ steps.greet.data }}"}},
            },
        ],
    )
    tab.sign_in_dev(user)
    tab.open("#/plans")
    tab.page.get_by_role("button", name="Dry run Dry plan").click()
    dialog = tab.page.get_by_role("dialog", name="Dry run of Dry plan")
    expect(dialog.locator(".dry-report")).to_have_attribute("data-status", "success")
    steps = dialog.locator(".step-list > li")
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_have_attribute("data-dry-status", "success")
    expect(steps.nth(0).locator(".output pre")).to_have_text("Hi <b>there</b>")  # as text
    expect(steps.nth(1)).to_have_attribute("data-dry-status", "would_run")
    expect(steps.nth(1).locator(".io pre").first).to_contain_text('"text": "Hi <b>there</b>"')  # rendered
    expect(steps.nth(1).locator(".io pre").first).to_contain_text("https://hooks.example.com/x")
    assert dialog.locator("b").count() == 0
    dialog.get_by_role("button", name="Close").click()
    expect(tab.page.get_by_role("dialog")).to_have_count(0)
    assert api(dev_server, "GET", f"/api/runs?plan_id={plan['id']}", user, 200)["runs"] == []  # nothing recorded
    tab.assert_clean()


def test_draft_a_plan_from_a_prompt_seeing_each_attempt_then_save_it(
    tab: Session, dev_server: Served, user: str
) -> None:
    page = tab.page
    with FakeOpenAI() as fake:
        store_openai(dev_server, user, fake.base_url)
        tab.sign_in_dev(user)
        tab.open("#/plans")
        page.get_by_role("link", name="Draft from a prompt").click()
        prompt = page.get_by_label("Describe the plan")

        # A model that never gets it right: the 422 in words, every attempt with its errors.
        fake.script(
            completion("I cannot do that."),
            completion(json.dumps(UNKNOWN_PROVIDER)),
            completion(json.dumps(BAD_PARAMS)),
        )
        prompt.fill("Say hello every morning")
        page.get_by_role("button", name="Draft", exact=True).click()
        report = page.locator(".draft-report")
        expect(report.locator(".notice.error")).to_contain_text("the model gave no valid plan in 3 attempts")
        rows = report.locator("table.attempts tbody tr")
        expect(rows).to_have_count(3)
        expect(rows.nth(1)).to_contain_text("unknown_provider")
        expect(rows.nth(2)).to_contain_text("invalid_params")

        # Repaired on the second attempt, with a dry run: the editor gets the plan, nothing is saved.
        fake.script(completion(json.dumps(UNKNOWN_PROVIDER)), completion(json.dumps(VALID_PLAN)))
        page.get_by_label("Dry run the draft").check()
        page.get_by_role("button", name="Draft", exact=True).click()
        expect(report.locator("[data-drafted]")).to_contain_text("in 2 attempt(s)")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_have_attribute("data-valid", "false")
        expect(rows.nth(1)).to_have_attribute("data-valid", "true")
        expect(rows.nth(0)).to_contain_text("1100")  # its tokens
        expect(report.locator(".dry-report li[data-dry-status='would_run']")).to_contain_text("hooks.example.com/team")
        expect(page.get_by_label("Plan (JSON)")).to_have_value(re.compile('"name": "Morning hello"'))
        assert api(dev_server, "GET", "/api/plans", user, 200)["plans"] == []

        # Saved at once: disabled, and the editor opens on it.
        fake.script(completion(json.dumps(VALID_PLAN)))
        page.get_by_label("Dry run the draft").uncheck()
        page.get_by_label("Save it (disabled) at once").check()
        page.get_by_role("button", name="Draft", exact=True).click()
        expect(page.get_by_text(re.compile("Drafted and saved “Morning hello”"))).to_be_visible()
        expect(page.get_by_role("heading", level=1)).to_have_text("Edit plan: Morning hello")
    (saved,) = api(dev_server, "GET", "/api/plans", user, 200)["plans"]
    assert saved["enabled"] is False and saved["name"] == "Morning hello"
    tab.assert_clean()


def test_cost_per_day_chart_budget_panel_and_circuit_breakers(tab: Session, dev_server: Served, user: str) -> None:
    page = tab.page
    with FakeOpenAI() as fake:
        store_openai(dev_server, user, fake.base_url)
        plan = api(
            dev_server,
            "POST",
            "/api/plans",
            user,
            201,
            name="Priced",
            steps=[
                {"provider": "openai", "action": "chat_completion", "params": {"model": "gpt-4o-mini", "prompt": "hi"}}
            ],
        )
        run = api(dev_server, "POST", f"/api/plans/{plan['id']}/run?wait=true", user, 200)
    spent = run["usage"]["cost_usd"]
    assert spent > 0
    tab.sign_in_dev(user)
    tab.open("#/health")
    title = "Cost per day, USD (last 24 hours)"
    figure = page.locator(f"figure[data-chart='{title}']")
    expect(figure.locator("canvas")).to_be_visible()
    page.wait_for_function(BAR_PIXELS, arg=title, timeout=TIMEOUT_MS)  # the day's bar is painted
    figure.get_by_text("Show the numbers").click()
    today = page.evaluate("() => new Date().toISOString().slice(5, 10)")
    expect(figure.locator(".chart-data tbody tr", has_text=today)).to_contain_text(f"${spent:.6f}")
    expect(page.locator("#cost-total")).to_contain_text("7 input and 3 output tokens in 1 model steps")

    budget = page.locator("section.budget")
    expect(budget.locator("#budget-limit")).to_have_text("none set")
    expect(budget.locator("#budget-spent")).to_have_text(f"${spent:.6f}")
    budget.get_by_label("Monthly budget (USD)").fill("-5")
    budget.get_by_role("button", name="Save budget").click()
    expect(budget.locator(".notice.error")).to_contain_text("monthly_usd")  # Pilot's 400, in words
    budget.get_by_label("Monthly budget (USD)").fill("0.5")
    budget.get_by_label("Once it is spent").select_option("warn")
    budget.get_by_role("button", name="Save budget").click()
    expect(budget.locator("#budget-limit")).to_have_text("$0.5000 a month, warn")
    expect(budget.locator("#budget-remaining")).to_have_text(f"${0.5 - spent:.4f}")
    assert api(dev_server, "GET", "/api/budget", user, 200)["budget"]["monthly_usd"] == 0.5
    budget.get_by_role("button", name="Remove budget").click()
    expect(budget.locator("#budget-limit")).to_have_text("none set")
    assert api(dev_server, "GET", "/api/budget", user, 200)["budget"] is None

    breakers = page.locator("section.breakers")
    expect(breakers.locator("tr[data-provider='openai']").first).to_contain_text("api.openai.com")
    expect(breakers.locator("tr[data-provider='openai']").first.locator("[data-status]")).to_have_text("closed")
    tab.assert_clean()


def with_api_paths(page: Page, *paths: tuple[str, str], without: tuple[tuple[str, str], ...] = ()) -> None:
    """Serve the page an OpenAPI document that also lists ``paths`` ((method, path)) and lacks ``without``:
    the console as it meets a newer or an older Pilot, whatever this one serves."""

    def patch(route: Route) -> None:
        response = route.fetch()
        document = response.json()
        for method, path in paths:
            document["paths"].setdefault(path, {})[method] = {"responses": {"200": {"description": "ok"}}}
        for method, path in without:
            document["paths"].get(path, {}).pop(method, None)
        route.fulfill(response=response, json=document)

    page.unroute("**/api/openapi.json")
    page.route("**/api/openapi.json", patch)


@pytest.mark.parametrize("tab", ["token_server"], indirect=True)
def test_a_running_run_follows_its_event_stream_with_the_token_in_a_header_only(
    tab: Session, token_server: Served, user: str
) -> None:
    token = token_server.app.test_cli_runner().invoke(args=["create-token", user]).stdout.strip()
    client = token_server.app.test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    page = tab.page
    with GatedOpenAI() as fake:
        response = client.post(
            "/api/provider-credentials/openai",
            json={"credentials": {"api_key": "sk-console-events-00000000001", "base_url": fake.base_url}},
            headers=bearer,
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        plan = resp_json(
            client.post(
                "/api/plans",
                json={
                    "name": "Held",
                    "steps": [
                        {
                            "provider": "openai",
                            "action": "chat_completion",
                            "params": {"model": "gpt-4o-mini", "prompt": "hi"},
                        }
                    ],
                },
                headers=bearer,
            )
        )
        run = resp_json(client.post(f"/api/plans/{plan['id']}/run", json={}, headers=bearer))
        assert poll(lambda: fake.held == 1), "the run's model call never arrived"

        streams: list[Request] = []

        def events(route: Route) -> None:
            # A stand-in for GET /api/runs/<id>/events: the first stream ends after one event, the
            # console reconnects with Last-Event-ID; then the run is let go and the stream says so.
            streams.append(route.request)
            if len(streams) == 1:
                route.fulfill(
                    status=200,
                    content_type="text/event-stream",
                    body='id: 1\nevent: step_started\ndata: {"index": 0}\n\n',
                )
                return
            fake.release()
            status = lambda: resp_json(client.get(f"/api/runs/{run['id']}", headers=bearer))["status"]  # noqa: E731
            assert poll(lambda: status() == "success", timeout=30)
            route.fulfill(
                status=200,
                content_type="text/event-stream",
                body=': hi\n\nid: 2\nevent: run_finished\ndata: {"status": "success"}\n\n',
            )

        with_api_paths(page, ("get", "/api/runs/{run_id}/events"))
        page.route(f"**/api/runs/{run['id']}/events*", events)
        tab.open()
        page.get_by_label("API token or JWT").fill(token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        tab.open(f"#/runs/{run['id']}")
        # Longer than usual: this wait includes the stand-in stream holding its answer until the run ends.
        expect(page.locator(".facts [data-status]")).to_have_text("success", timeout=3 * TIMEOUT_MS)
    expect(page.locator(".step-list > li").first.locator("pre.prose")).to_have_text("echo: hi")
    assert page.locator("#live-note").get_attribute("data-live") == "events"  # never fell back to polling
    assert page.locator("#live-note").get_attribute("data-events") == "2"
    assert len(streams) == 2
    for request in streams:
        assert request.headers.get("authorization") == f"Bearer {token}"
        assert request.headers.get("accept") == "text/event-stream"
    assert streams[1].headers.get("last-event-id") == "1"
    assert all(token not in r.url for r in tab.requests)
    tab.assert_clean()


def test_a_run_page_without_an_event_stream_polls_until_the_run_finishes(
    tab: Session, dev_server: Served, user: str
) -> None:
    page = tab.page
    with GatedOpenAI() as fake:
        store_openai(dev_server, user, fake.base_url)
        plan = api(
            dev_server,
            "POST",
            "/api/plans",
            user,
            201,
            name="Held",
            steps=[
                {"provider": "openai", "action": "chat_completion", "params": {"model": "gpt-4o-mini", "prompt": "yo"}}
            ],
        )
        run = api(dev_server, "POST", f"/api/plans/{plan['id']}/run", user, 202)
        assert poll(lambda: fake.held == 1), "the run's model call never arrived"
        # A server whose events route answers 404 (older, or switched off): the page polls instead.
        with_api_paths(page, ("get", "/api/runs/{run_id}/events"))
        page.route(
            f"**/api/runs/{run['id']}/events*",
            lambda route: route.fulfill(status=404, json={"error": {"code": "not_found", "message": "no such route"}}),
        )
        tab.sign_in_dev(user)
        tab.open(f"#/runs/{run['id']}")
        expect(page.locator(".facts [data-status]")).to_have_text("running")
        expect(page.locator("#live-note")).to_have_attribute("data-live", "polling")
        fake.release()
        expect(page.locator(".facts [data-status]")).to_have_text("success")
    expect(page.locator(".step-list > li").first.locator("pre.prose")).to_have_text("echo: yo")
    tab.assert_clean()


def test_replay_where_the_api_offers_it_sends_the_chosen_step(tab: Session, dev_server: Served, user: str) -> None:
    plan = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="Replayable",
        steps=[
            {"id": "one", "provider": "logic", "action": "transform", "params": {"template": "1"}},
            {"id": "two", "provider": "logic", "action": "transform", "params": {"template": "{{ input.missing.x }}"}},
        ],
    )
    failed = api(dev_server, "POST", f"/api/plans/{plan['id']}/run?wait=true", user, 200)
    other = api(dev_server, "POST", f"/api/plans/{plan['id']}/run?wait=true", user, 200)
    assert failed["status"] == "error"
    page = tab.page
    with_api_paths(page, without=(("post", "/api/runs/{run_id}/replay"),))
    tab.sign_in_dev(user)
    tab.open(f"#/runs/{failed['id']}")
    expect(page.locator(".facts [data-status]")).to_have_text("error")
    expect(page.get_by_role("button", name="Run again")).to_be_visible()
    expect(page.get_by_role("button", name="Replay")).to_have_count(0)  # a Pilot without replay

    bodies: list[Any] = []

    def replay(route: Route) -> None:
        bodies.append(route.request.post_data_json)
        route.fulfill(status=202, json={**other, "trigger": "replay"})

    with_api_paths(page, ("post", "/api/runs/{run_id}/replay"))
    page.route(f"**/api/runs/{failed['id']}/replay*", replay)
    page.reload()
    page.get_by_label("from").select_option(label="2. two")
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Run #{other['id']}")
    assert bodies == [{"from_step": "two"}]
    tab.assert_clean()


WIDER_THAN_SCREEN = """() => [...document.querySelectorAll("main *")]
    .filter((el) => el.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
    .slice(0, 5).map((el) => `${el.tagName}.${el.className} ${Math.round(el.getBoundingClientRect().right)}`)"""
PAGES = ["#/runs", "#/plans", "#/plans/new?draft=1", "#/credentials", "#/health"]


def test_every_page_fits_a_phone_width_without_sideways_scrolling(
    browser: Browser, dev_server: Served, user: str
) -> None:
    plan = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="A plan with a long name that has to wrap somewhere on a small screen",
        steps=[{"id": "a", "provider": "logic", "action": "transform", "params": {"template": "x" * 300}}],
        schedule={"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
    )
    run = api(dev_server, "POST", f"/api/plans/{plan['id']}/run?wait=true", user, 200)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto(f"{dev_server.url}/")
        page.get_by_label("User name").fill(user)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        for route in [*PAGES, f"#/runs/{run['id']}"]:
            page.goto(f"{dev_server.url}/{route}")
            expect(page.locator("main [aria-busy='true']")).to_have_count(0)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            width = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            wide = page.evaluate(WIDER_THAN_SCREEN)
            assert width[0] <= width[1], f"{route} scrolls sideways at 390 px: {width}: {wide}"
    finally:
        context.close()


def test_edit_a_plan_as_json_with_the_servers_error_at_the_field_it_names(
    tab: Session, dev_server: Served, user: str
) -> None:
    plan = api(
        dev_server,
        "POST",
        "/api/plans",
        user,
        201,
        name="Editable",
        steps=[{"id": "a", "provider": "logic", "action": "transform", "params": {"template": "x"}}],
        schedule={"cron": "0 9 * * *", "timezone": "UTC"},
    )
    page = tab.page
    tab.sign_in_dev(user)
    tab.open("#/plans")
    page.get_by_role("link", name="Edit Editable").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Edit plan: Editable")
    editor = page.get_by_label("Plan (JSON)")
    expect(page.locator("form.editor")).to_have_attribute("data-ready", "true")
    text = editor.input_value()
    editor.fill(text.replace('"template": "x"', '"templat": "x"'))
    page.get_by_role("button", name="Save changes").click()
    error = page.locator(".field-error").first
    expect(error.locator(".field")).to_have_text(re.compile(r"^steps\[0\]\.params"))
    expect(error.locator(".excerpt")).to_have_text('"params": {')  # the line of the field it names
    assert api(dev_server, "GET", f"/api/plans/{plan['id']}", user, 200)["steps"][0]["params"] == {"template": "x"}

    editor.fill(text.replace('"name": "Editable"', '"name": "Edited"'))
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Saved “Edited”")).to_be_visible()
    expect(page.locator(".field-error")).to_have_count(0)
    assert api(dev_server, "GET", f"/api/plans/{plan['id']}", user, 200)["name"] == "Edited"
    tab.assert_clean()


def test_the_event_reader_takes_a_real_chunked_stream_with_split_events_comments_and_crlf(
    tab: Session, session_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    """The run page's SSE reader against a real streamed HTTP response (not a fulfilled body):
    an event split across two writes, a comment, CRLF line ends, then the run's end."""
    app = make_app(session_db, tmp_path, (fernet_key,))
    seen: list[dict[str, str]] = []
    with GatedOpenAI() as fake:
        events_bp = flask.Blueprint("stand_in_events", __name__)

        @events_bp.get("/stand-in/runs/<int:run_id>/events")
        def events(run_id: int) -> flask.Response:
            seen.append(dict(flask.request.headers))

            def pieces() -> Iterator[bytes]:
                yield b": connected\r\n\r\nid: 7\r\nevent: step_sta"
                fake.release()

                def status() -> str:
                    with app.db.transaction(user) as cur:
                        row = store.get_run(cur, user, run_id)
                    return str(row["status"]) if row else ""

                poll(lambda: status() == "success", timeout=30)
                yield b'rted\r\ndata: {"index": 0}\r\n\r\n'
                yield b'id: 8\nevent: run_finished\ndata: {"status": "success"}\n\n'

            return flask.Response(pieces(), mimetype="text/event-stream")

        app.register_blueprint(events_bp)
        generator = contextmanager(serve)(app)
        served = generator.__enter__()
        try:
            store_openai(served, user, fake.base_url)
            plan = api(
                served,
                "POST",
                "/api/plans",
                user,
                201,
                name="Streamed",
                steps=[{"provider": "openai", "action": "chat_completion", "params": {"model": "m", "prompt": "s"}}],
            )
            run = api(served, "POST", f"/api/plans/{plan['id']}/run", user, 202)
            assert poll(lambda: fake.held == 1), "the run's model call never arrived"
            page = tab.page
            tab.base = served.url
            with_api_paths(page, ("get", "/api/runs/{run_id}/events"))
            page.route(
                f"**/api/runs/{run['id']}/events*",
                lambda route: route.continue_(url=route.request.url.replace("/api/runs/", "/stand-in/runs/")),
            )
            tab.sign_in_dev(user)
            tab.open(f"#/runs/{run['id']}")
            expect(page.locator(".facts [data-status]")).to_have_text("success", timeout=3 * TIMEOUT_MS)
            expect(page.locator(".step-list > li").first.locator("pre.prose")).to_have_text("echo: s")
            assert page.locator("#live-note").get_attribute("data-live") == "events"
            assert page.locator("#live-note").get_attribute("data-events") == "2"  # both parsed, the split one too
            assert len(seen) == 1  # run_finished ended it: no reconnection, no polling
            assert seen[0]["Accept"] == "text/event-stream"
            tab.assert_clean()
        finally:
            generator.__exit__(None, None, None)
