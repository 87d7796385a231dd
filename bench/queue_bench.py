"""Scheduled and queued runs on 2 instances x 2 workers: bursts, sustained rates, crashes, spreading.

    python bench/queue_bench.py --burst 1000 --sustained 50,100,200 --crash --spread     # ~12 minutes
    python bench/queue_bench.py --burst 5000 --burst-cap 180
    python bench/queue_bench.py --crash --spread                                          # ~2 minutes

Everything runs on this machine against one fresh database (dropped at the end). Pilot is
started only as ``gunicorn -c deploy/gunicorn.conf.py APP_SPEC`` (``--instances`` x
``--workers``, ``DB_POOL_SIZE=--pool``); plans are created through the API (one per shape)
and copied with SQL; results are read from ``plan_runs``. Plans are spread over 50 users.
Before each phase the previous plans and runs are deleted and the database is ``VACUUM
ANALYZE``d (autovacuum is off here). Every wait is bounded, every process group killed at the end.

burst N      N plans on ``* * * * *``, all due at the same minute: runs created, duplicates,
             misses (no run, ``skipped``, rejected, or not started by the cap all count), start
             lag p50/p99 (``started_at - scheduled_for``; runs not started by the cap count as
             later than it), time until all finished, finished runs/s. ``--burst-cap`` (150 s)
             bounds the wait after the slot. Then the floor (``bench/floor.py``: 4 processes of
             SKIP LOCKED and the same durable writes, nothing else) on the same plans.
sustained N  N plans with ``interval_seconds: 1`` for ``--seconds`` (30) after a 5 s warm-up:
             the same figures per slot, and finished runs/s; then the floor at the same N.
crash        instance A (1 worker, RUN_WORKERS=8) busy with 8 runs of a slow loopback webhook,
             then 100 runs of a logic plan posted to A (202), ``kill -9`` of A's process group,
             then instance B started: how many of each hundred accepted runs are executed (and how many
             times), what became of the webhook runs that were in flight.
spread       8 runs of a 3 s webhook step posted (202) to instance A of two (1 worker,
             RUN_WORKERS=2 each): wall time until all finished, and which instance ran them.

The load average is printed with every phase: the machine is shared, so compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import floor as floor_mod
from bench.common import (
    APP_SPEC,
    DEFAULT_ADMIN_DSN,
    Admin,
    Server,
    fresh_database,
    loadavg,
    pct,
    pilot_env,
    post_ok,
    postgres_cpu_seconds,
    proc_cpu_seconds,
    request,
    wait_until,
)

USERS = 50
TICK = [{"id": "tick", "provider": "logic", "action": "transform", "params": {"template": {"tick": True}}}]


# --- a slow loopback webhook ----------------------------------------------------------------------


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowWebhook

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1_000_000))
        seconds = min(120.0, float(parse_qs(urlparse(self.path).query).get("s", ["1"])[0]))
        with self.server.lock:
            self.server.calls += 1
            self.server.in_flight += 1
        try:
            self.server.release.wait(seconds)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
        data = b'{"ok": true}'
        with contextlib.suppress(OSError):  # the caller may be gone (killed on purpose)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


class SlowWebhook(ThreadingHTTPServer):
    """``POST /slow?s=N`` answers after N s (at most 120), or at once after ``release``."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.lock = threading.Lock()
        self.calls = self.in_flight = 0
        self.release = threading.Event()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller killed mid-request is what the crash phase does: no traceback for it."""

    def url(self, seconds: float) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/slow?s={seconds}"

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


# --- the bench's world ----------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    dsn: str
    admin: Admin
    tmp: Path
    templates: dict[str, int]

    def env(self, name: str, **extra: str) -> dict[str, str]:
        base = {"DB_POOL_SIZE": str(self.args.pool), "SCHEDULER_ENABLED": "true", "PILOT_GRACEFUL_TIMEOUT": "5"}
        return pilot_env(self.dsn, self.tmp / name, **{**base, **extra})

    def instances(self, name: str, count: int, workers: int, **extra: str) -> list[Server]:
        servers = [
            Server(f"{name}-{i}", self.env(f"{name}-{i}", **extra), self.tmp, workers=workers) for i in range(count)
        ]
        try:
            for server in servers:
                server.wait_healthy()
        except Exception:
            stop_all(servers)
            raise
        return servers


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        server.stop()


def make_templates(dsn: str, admin: Admin, tmp: Path) -> dict[str, int]:
    """One disabled plan per shape, created through the API, so copies have exactly the stored form."""
    env = pilot_env(dsn, tmp / "templates", DB_POOL_SIZE="2", SCHEDULER_ENABLED="false")
    server = Server("templates", env, tmp, workers=1)
    try:
        server.wait_healthy()
        shapes = {"cron": {"cron": "* * * * *", "timezone": "UTC"}, "interval": {"interval_seconds": 1}}
        ids = {
            name: post_ok(
                server.port,
                "/api/plans",
                {"user_id": "bench-q0", "name": f"template {name}", "steps": TICK, "schedule": schedule},
            )["id"]
            for name, schedule in shapes.items()
        }
        admin.execute("UPDATE execution_plans SET enabled = false WHERE id = ANY(%s)", (list(ids.values()),))
        return ids
    finally:
        server.stop()


def reset(ctx: Ctx) -> None:
    """Drop every run, log row and plan but the templates; then VACUUM ANALYZE."""
    ctx.admin.execute("DROP TABLE IF EXISTS floor_schedules")
    ctx.admin.execute("TRUNCATE plan_runs, execution_logs")
    ctx.admin.execute("DELETE FROM execution_plans WHERE NOT (id = ANY(%s))", (list(ctx.templates.values()),))
    ctx.admin.vacuum_analyze()


def copy_plans(ctx: Ctx, template: str, n: int, enabled: bool) -> list[int]:
    rows = ctx.admin.rows(
        "INSERT INTO execution_plans (user_id, name, steps, schedule, timezone, enabled)"
        " SELECT 'bench-q' || (g %% %s), 'q ' || g, t.steps, t.schedule, t.timezone, %s"
        " FROM execution_plans t, generate_series(1, %s) g WHERE t.id = %s RETURNING id",
        (USERS, enabled, n, ctx.templates[template]),
    )
    return [r["id"] for r in rows]


# --- what happened to a set of slots ----------------------------------------------------------------


@dataclass
class SlotReport:
    expected: int
    rows: int
    duplicates: int
    executed: int  # slots whose run started (a run the bench's own stop interrupted later included)
    pending: int  # slots whose run was still queued when measured: late, not (yet) missed
    missing: int
    statuses: dict[str, int]
    reasons: dict[str, int]  # why runs were skipped or ended without starting (their error, numbers removed)
    rejected: int
    lags_ms: list[float]  # per expected slot; inf when it never started
    claim_ms: list[float]
    finished_span_s: float  # first slot to the last finish; inf when not all finished
    finished_per_s: float

    @property
    def misses(self) -> int:
        """Slots with no run, a ``skipped`` one, or one ended without starting (rejected, interrupted)."""
        return self.expected - self.executed - self.pending

    def line(self) -> str:
        def ms(q: float) -> str:
            value = pct(self.lags_ms, q)
            return "never (not started)" if math.isinf(value) else f"{value:.0f} ms"

        done = "not all" if math.isinf(self.finished_span_s) else f"{self.finished_span_s:.1f} s"
        return (
            f"expected {self.expected}, runs created {self.rows}, duplicates {self.duplicates}, started"
            f" {self.executed}, misses {self.misses} (no run {self.missing}, rejected {self.rejected},"
            f" statuses {self.statuses}, reasons {self.reasons}), still queued when measured {self.pending};"
            f" start lag p50 {ms(0.5)}, p99 {ms(0.99)}; claimed (created_at) lag"
            f" p50 {pct(self.claim_ms, 0.5):.0f} ms p99 {pct(self.claim_ms, 0.99):.0f} ms; all finished after"
            f" {done}; {self.finished_per_s:.1f} runs/s executed"
        )


def slot_report(
    admin: Admin, plan_ids: list[int], first: datetime, last: datetime, step_s: int, per_s_over: float | None = None
) -> SlotReport:
    """The runs of ``plan_ids`` for the slots first..last (every ``step_s``); runs/s over ``per_s_over`` s
    (a sustained window), else over the time from the first slot to the last finish (a burst)."""
    rows = admin.rows(
        "SELECT plan_id, scheduled_for, status, created_at, started_at, finished_at, error FROM plan_runs"
        " WHERE plan_id = ANY(%s) AND trigger = 'schedule' AND scheduled_for BETWEEN %s AND %s",
        (plan_ids, first, last),
    )
    slots = [first + timedelta(seconds=step_s * k) for k in range(int((last - first).total_seconds()) // step_s + 1)]
    expected = len(plan_ids) * len(slots)
    by_key: dict[tuple[int, datetime], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["plan_id"], row["scheduled_for"]), []).append(row)
    duplicates = sum(len(v) - 1 for v in by_key.values())
    executed_keys = {k for k, v in by_key.items() if any(r["started_at"] for r in v)}
    pending_keys = {k for k, v in by_key.items() if k not in executed_keys and any(r["status"] == "queued" for r in v)}
    lags = []
    for key in ((p, s) for p in plan_ids for s in slots):
        started = [r["started_at"] for r in by_key.get(key, []) if r["started_at"]]
        lags.append((min(started) - key[1]).total_seconds() * 1000 if started else math.inf)
    finishes = [r["finished_at"] for r in rows if r["finished_at"]]
    all_done = len(by_key) == expected and all(r["finished_at"] for r in rows)
    span = (max(finishes) - first).total_seconds() if finishes and all_done else math.inf
    window_end = max(finishes) if finishes else first
    window = per_s_over or max(0.001, (window_end - first).total_seconds())
    ok = [r for r in rows if r["status"] in ("success", "error") and r["started_at"]]
    return SlotReport(
        expected=expected,
        rows=len(rows),
        duplicates=duplicates,
        executed=len(executed_keys),
        pending=len(pending_keys),
        missing=expected - len(by_key),
        statuses=dict(Counter(r["status"] for r in rows)),
        reasons=dict(
            Counter(re.sub(r"\d+", "N", r["error"] or "")[:60] for r in rows if not r["started_at"] and r["error"])
        ),
        rejected=sum(1 for r in rows if r["status"] == "error" and not r["started_at"]),
        lags_ms=lags,
        claim_ms=[(r["created_at"] - r["scheduled_for"]).total_seconds() * 1000 for r in rows],
        finished_span_s=span,
        finished_per_s=len(ok) / window,
    )


def wait_slot(admin: Admin, plan_ids: list[int], slot: datetime, cap_s: float) -> None:
    """Until every plan has a finished run for ``slot``, nothing is left active and no row comes, or the cap."""
    deadline = slot.timestamp() + cap_s
    last_change, last_seen = time.time(), (-1, -1)
    while time.time() < deadline:
        rows, active = admin.rows(
            "SELECT count(*) AS n, count(*) FILTER (WHERE status IN ('queued', 'running')) AS active"
            " FROM plan_runs WHERE plan_id = ANY(%s) AND scheduled_for = %s",
            (plan_ids, slot),
        )[0].values()
        if rows >= len(plan_ids) and active == 0:
            return
        if (rows, active) != last_seen:
            last_seen, last_change = (rows, active), time.time()
        elif time.time() > slot.timestamp() + 20 and time.time() - last_change > 30:
            return  # nothing moves any more
        time.sleep(1.0)


# --- phases ------------------------------------------------------------------------------------------


def phase_burst(ctx: Ctx, n: int) -> None:
    print(f"\nburst {n}: {n} plans on '* * * * *', {ctx.args.instances} instances x {ctx.args.workers} workers")
    reset(ctx)
    wait_until(lambda: 1 <= datetime.now(UTC).second <= 25, 60, 0.5)  # the slot is the coming minute
    ids = copy_plans(ctx, "cron", n, enabled=True)
    ctx.admin.vacuum_analyze()
    slot = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    servers = ctx.instances(f"burst{n}", ctx.args.instances, ctx.args.workers)
    try:
        ready = datetime.now(UTC)
        print(
            f"  instances ready {(slot - ready).total_seconds():.1f} s before the slot {slot:%H:%M:%S}"
            f" (load {loadavg()})"
        )
        wait_slot(ctx.admin, ids, slot, ctx.args.burst_cap)
        report = slot_report(ctx.admin, ids, slot, slot, 60)
        print(f"  pilot: {report.line()} (load {loadavg()})")
    finally:
        stop_all(servers)
    floor = floor_burst(ctx, ids)
    if report.finished_per_s and floor.finished_per_s:
        print(f"  pilot/floor finished runs/s: {report.finished_per_s / floor.finished_per_s:.2f}")


def floor_burst(ctx: Ctx, ids: list[int]) -> SlotReport:
    ctx.admin.execute("TRUNCATE plan_runs, execution_logs")
    ctx.admin.vacuum_analyze()
    slot = floor_mod.aligned(3)
    floor_mod.prepare(ctx.dsn, ids, 60, slot)
    floor = floor_mod.Floor(ctx.dsn, ctx.args.burst_cap + 5, processes=ctx.args.instances * ctx.args.workers)
    try:
        wait_slot(ctx.admin, ids, slot, ctx.args.burst_cap)
    finally:
        floor.stop()
    report = slot_report(ctx.admin, ids, slot, slot, 60)
    print(f"  floor: {report.line()} (load {loadavg()})")
    return report


def phase_sustained(ctx: Ctx, n: int) -> tuple[SlotReport, SlotReport]:
    seconds = ctx.args.seconds
    print(f"\nsustained {n}: {n} plans every second for {seconds} s (load {loadavg()})")
    reset(ctx)
    ids = copy_plans(ctx, "interval", n, enabled=False)
    ctx.admin.vacuum_analyze()
    servers = ctx.instances(f"sustained{n}", ctx.args.instances, ctx.args.workers)
    try:
        ctx.admin.execute("UPDATE execution_plans SET enabled = true, updated_at = now() WHERE id = ANY(%s)", (ids,))
        first = floor_mod.aligned(5)
        last = first + timedelta(seconds=seconds - 1)
        workers = [pid for server in servers for pid in server.workers()]
        cpu = CpuMeter(workers, first, last)
        ctx.admin.execute("UPDATE execution_plans SET enabled = false WHERE id = ANY(%s)", (ids,))
        time.sleep(5)  # runs of the last slots may start late; they count as late, not missed
        pilot = slot_report(ctx.admin, ids, first, last, 1, seconds)
        print(f"  pilot: {pilot.line()} (load {loadavg()})")
        print(f"  pilot: {cpu.line(pilot.executed, n)}")
    finally:
        stop_all(servers)
    ctx.admin.execute("TRUNCATE plan_runs, execution_logs")
    ctx.admin.vacuum_analyze()
    start = floor_mod.aligned(1)
    floor_mod.prepare(ctx.dsn, ids, 1, start)
    first = start + timedelta(seconds=5)
    last = first + timedelta(seconds=seconds - 1)
    floor = floor_mod.Floor(ctx.dsn, seconds + 10, processes=ctx.args.instances * ctx.args.workers)
    try:
        floor_cpu = CpuMeter(floor.pids(), first, last)
        time.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds() + 2))
    finally:
        floor.stop()
    floor_report = slot_report(ctx.admin, ids, first, last, 1, seconds)
    print(f"  floor: {floor_report.line()} (load {loadavg()})")
    print(f"  floor: {floor_cpu.line(floor_report.executed, n)}")
    if floor_report.finished_per_s:
        print(f"  pilot/floor finished runs/s: {pilot.finished_per_s / floor_report.finished_per_s:.2f}")
    return pilot, floor_report


class CpuMeter:
    """CPU seconds of ``pids`` and of every postgres process from ``first`` to ``last`` + 1 s (sleeps until then)."""

    def __init__(self, pids: list[int], first: datetime, last: datetime) -> None:
        time.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds()))
        before = sum(proc_cpu_seconds(pid) for pid in pids), postgres_cpu_seconds()
        time.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds() + 1))
        self.procs = sum(proc_cpu_seconds(pid) for pid in pids) - before[0]
        self.postgres = postgres_cpu_seconds() - before[1]

    def line(self, runs: int, per_second: int) -> str:
        procs, postgres = 1000 * self.procs / max(1, runs), 1000 * self.postgres / max(1, runs)
        return (
            f"CPU per run {procs:.2f} ms in its processes + {postgres:.2f} ms in postgres (all databases);"
            f" {per_second} runs/s at that cost need ~{per_second * (procs + postgres) / 1000:.2f} cores"
        )


def plan_with(port: int, user: str, name: str, steps: list[dict[str, Any]]) -> int:
    return int(post_ok(port, "/api/plans", {"user_id": user, "name": name, "steps": steps})["id"])


def webhook_step(url: str) -> list[dict[str, Any]]:
    return [
        {
            "id": "hook",
            "provider": "webhook",
            "action": "request",
            "params": {"url": url, "json": {"x": 1}, "timeout": 120},
        }
    ]


def phase_crash(ctx: Ctx, hook: SlowWebhook) -> None:
    print(f"\ncrash: kill -9 of an instance holding accepted runs (load {loadavg()})")
    reset(ctx)
    lease = str(ctx.args.lease)
    a = ctx.instances("crash-a", 1, 1, RUN_WORKERS="8", RUN_LEASE_SECONDS=lease)[0]
    b = None  # started after the kill: A alone holds the accepted runs until then
    try:
        slow = plan_with(a.port, "bench-crash", "slow", webhook_step(hook.url(110)))
        fast = plan_with(a.port, "bench-crash", "fast", TICK)
        calls_before = hook.calls
        slow_ids = [
            post_ok(a.port, f"/api/plans/{slow}/run", {"user_id": "bench-crash"}, (202,))["id"] for _ in range(8)
        ]
        wait_until(lambda: hook.calls - calls_before >= 8, 20)
        accepted: list[int] = []
        refused: Counter[int] = Counter()
        for i in range(100):
            status, body = request(
                a.port, "POST", f"/api/plans/{fast}/run", {"user_id": "bench-crash", "input": {"i": i}}
            )
            if status == 202:
                accepted.append(body["id"])
            else:
                refused[status] += 1
        queued = ctx.admin.one("SELECT count(*) FROM plan_runs WHERE id = ANY(%s) AND status = 'queued'", (accepted,))
        killed_at = time.monotonic()
        a.kill9()
        b = ctx.instances("crash-b", 1, 1, RUN_WORKERS="8", RUN_LEASE_SECONDS=lease)[0]
        print(
            f"  A accepted {len(accepted)} logic runs (refused {dict(refused)}), {queued} still queued,"
            f" with 8 webhook runs in flight; A killed with SIGKILL; B up (lease {lease} s)"
        )

        def settled() -> bool:
            return not ctx.admin.one(
                "SELECT count(*) FROM plan_runs WHERE id = ANY(%s) AND status IN ('queued', 'running')",
                (accepted + slow_ids,),
            )

        wait_until(settled, ctx.args.lease * 3 + 30, 0.5)
        waited = time.monotonic() - killed_at
        rows = ctx.admin.rows(
            "SELECT r.id, r.status, r.error, r.owner_id, (SELECT count(*) FROM execution_logs l WHERE l.run_id = r.id)"
            " AS logs FROM plan_runs r WHERE r.id = ANY(%s)",
            (accepted + slow_ids,),
        )
        fast_rows = [r for r in rows if r["id"] in set(accepted)]
        slow_rows = [r for r in rows if r["id"] in set(slow_ids)]
        executed = sum(1 for r in fast_rows if r["status"] == "success")
        per_hundred = 100 * executed / max(1, len(accepted))
        print(
            f"  after {waited:.0f} s: accepted logic runs {dict(Counter(r['status'] for r in fast_rows))};"
            f" executed {executed} of {len(accepted)} = {per_hundred:.0f} per hundred (goal 100);"
            f" log rows per executed run {sorted({r['logs'] for r in fast_rows if r['status'] == 'success'}) or '-'};"
            f" runs with more than one log row {sum(1 for r in fast_rows if r['logs'] > 1)}"
        )
        named = sum(1 for r in slow_rows if r["status"] == "interrupted" and "in flight" in (r["error"] or ""))
        print(
            f"  webhook runs in flight at the kill: {dict(Counter(r['status'] for r in slow_rows))},"
            f" {named} interrupted naming the step; webhook calls received {hook.calls - calls_before}"
            " (8 = none re-sent)"
        )
        example = next((r["error"] for r in fast_rows if r["error"]), None)
        if example:
            print(f"  e.g. {example[:200]}")
    finally:
        hook.release.set()
        stop_all([a] if b is None else [a, b])
        hook.release.clear()


def phase_spread(ctx: Ctx, hook: SlowWebhook) -> None:
    print(
        "\nspread: 8 runs of a 3 s webhook step posted to instance A; A and B have 1 worker, RUN_WORKERS=2"
        f" (load {loadavg()})"
    )
    reset(ctx)
    servers = ctx.instances("spread", 2, 1, RUN_WORKERS="2")
    try:
        a = servers[0]
        plan = plan_with(a.port, "bench-spread", "three seconds", webhook_step(hook.url(3)))
        posted = time.monotonic()
        ids = [post_ok(a.port, f"/api/plans/{plan}/run", {"user_id": "bench-spread"}, (202,))["id"] for _ in range(8)]

        def done() -> bool:
            return not ctx.admin.one(
                "SELECT count(*) FROM plan_runs WHERE id = ANY(%s) AND finished_at IS NULL", (ids,)
            )

        wait_until(done, 90, 0.1)
        wall = time.monotonic() - posted
        rows = ctx.admin.rows("SELECT status, owner_id FROM plan_runs WHERE id = ANY(%s)", (ids,))
        pids = {pid: s.name for s in servers for pid in s.workers()}
        where = Counter(
            next((name for pid, name in pids.items() if f":{pid}:" in (r["owner_id"] or "")), "?") for r in rows
        )
        print(
            f"  wall {wall:.1f} s until all 8 finished (4 slots in all: ideal ~6 s); statuses"
            f" {dict(Counter(r['status'] for r in rows))}; ran on {dict(where)}"
        )
    finally:
        stop_all(servers)


# --- the floor alone -------------------------------------------------------------------------------


def floor_standalone(args: argparse.Namespace) -> int:
    """``python bench/floor.py queue``: the floor on its own fresh database."""
    with (
        tempfile.TemporaryDirectory(prefix="pilot-floor-") as tmpdir,
        fresh_database(args.admin_dsn or DEFAULT_ADMIN_DSN) as dsn,
    ):
        admin = Admin(dsn)
        try:
            ns = argparse.Namespace(pool=2, burst_cap=150, instances=args.processes, workers=1)
            templates = make_templates(dsn, admin, Path(tmpdir))
            ctx = Ctx(ns, dsn, admin, Path(tmpdir), templates)
            reset(ctx)
            ids = copy_plans(ctx, "cron" if args.burst else "interval", args.plans, enabled=False)
            ctx.admin.vacuum_analyze()
            print(f"floor: {args.plans} plans, {args.processes} processes x {args.threads} threads (load {loadavg()})")
            if args.burst:
                floor_burst(ctx, ids)
            else:
                start = floor_mod.aligned(1)
                floor_mod.prepare(dsn, ids, 1, start)
                first, last = start + timedelta(seconds=5), start + timedelta(seconds=4 + args.seconds)
                floor = floor_mod.Floor(dsn, args.seconds + 10, args.processes, args.threads)
                try:
                    time.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds() + 3))
                finally:
                    floor.stop()
                print(f"  floor: {slot_report(admin, ids, first, last, 1, args.seconds).line()} (load {loadavg()})")
        finally:
            admin.close()
    return 0


# --- main --------------------------------------------------------------------------------------------


def sizes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(not 1 <= v <= 10_000 for v in values):
        raise argparse.ArgumentTypeError("sizes must be 1..10000")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--burst", type=sizes, action="extend", default=[], help="N[,N…] plans due in the same second")
    parser.add_argument("--burst-cap", type=float, default=150.0, help="seconds after the slot to wait, at most")
    parser.add_argument("--sustained", type=sizes, default=[], help="N1,N2,… plans every second")
    parser.add_argument("--seconds", type=int, default=30, help="sustained: seconds measured per size")
    parser.add_argument("--crash", action="store_true")
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", type=int, default=8, help="DB_POOL_SIZE per worker")
    parser.add_argument("--lease", type=int, default=6, help="crash: RUN_LEASE_SECONDS")
    args = parser.parse_args()
    if not 10 <= args.burst_cap <= 600 or not 10 <= args.seconds <= 120 or not 2 <= args.lease <= 60:
        parser.error("--burst-cap 10..600, --seconds 10..120, --lease 2..60")
    if not 1 <= args.instances <= 4 or not 1 <= args.workers <= 4 or not 1 <= args.pool <= 20:
        parser.error("--instances 1..4, --workers 1..4, --pool 1..20")
    if args.instances * args.workers * (args.pool + 1) > 60:
        parser.error("instances x workers x (pool + 1) must stay under 60 connections")
    print(f"queue_bench: app {APP_SPEC!r}; {' '.join(sys.argv[1:])}; load average {loadavg()}")
    hook = SlowWebhook()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="pilot-queue-bench-") as tmpdir, fresh_database(args.admin_dsn) as dsn:
            admin = Admin(dsn)
            try:
                templates = make_templates(dsn, admin, Path(tmpdir))
                ctx = Ctx(args, dsn, admin, Path(tmpdir), templates)
                for n in args.burst:
                    phase_burst(ctx, n)
                results = [(n, *phase_sustained(ctx, n)) for n in args.sustained]
                if results:
                    summarize_sustained(results)
                if args.crash:
                    phase_crash(ctx, hook)
                if args.spread:
                    phase_spread(ctx, hook)
            finally:
                admin.close()
    finally:
        hook.close()
    print(f"\ndone in {time.monotonic() - started:.0f} s; load average {loadavg()}")
    return 0


def summarize_sustained(results: list[tuple[int, SlotReport, SlotReport]]) -> None:
    print("\nsustained summary (goal: largest N with 0 duplicates, 0 misses, p99 start lag <= 100 ms; N >= 500):")
    good = [n for n, p, _ in results if p.duplicates == 0 and p.misses == 0 and pct(p.lags_ms, 0.99) <= 100]
    floor_good = [n for n, _, f in results if f.duplicates == 0 and f.misses == 0 and pct(f.lags_ms, 0.99) <= 100]
    for n, p, f in results:
        lag = pct(p.lags_ms, 0.99)
        print(
            f"  N {n:>5}: pilot misses {p.misses}/{p.expected}, dup {p.duplicates}, p99 lag"
            f" {'never' if math.isinf(lag) else f'{lag:.0f} ms'}, {p.finished_per_s:.1f} runs/s | floor misses"
            f" {f.misses}, p99 lag {pct(f.lags_ms, 0.99):.0f} ms, {f.finished_per_s:.1f} runs/s"
        )
    print(
        f"  largest N that held: pilot {max(good) if good else 'none of ' + json.dumps([n for n, _, _ in results])};"
        f" floor {max(floor_good) if floor_good else 'none'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
