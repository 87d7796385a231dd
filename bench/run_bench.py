"""Pilot's short request paths against a hand-written floor, in the same run: ratios, not absolutes.

    python bench/run_bench.py                               # ~4 minutes: 2 rounds of s, r10, r3, then a profile
    python bench/run_bench.py --phases s --rounds 3
    python bench/run_bench.py --phases profile --profile-seconds 20

Starts, on free loopback ports against one fresh database (dropped at the end):
``gunicorn -c deploy/gunicorn.conf.py APP_SPEC`` (Pilot, ``SCHEDULER_ENABLED=false``) and
``gunicorn -c bench/floor_gunicorn.conf.py bench.floor_app:app`` (the floor: the same server
settings and the same durable, RLS-scoped writes in one round trip per transaction, nothing
else), both with ``--workers`` (2) workers and ``DB_POOL_SIZE=--pool`` (8). Phases, each run
against Pilot and the floor back to back (the order alternates by round), after ``VACUUM
ANALYZE`` (autovacuum is off here):

  s      ``POST /api/execute-step`` (logic/transform, one log row) at concurrency 10
         vs ``POST /floor/step``: req/s and their ratio (issue 9 goal: >= 0.9; 0.67 before);
  r10    ``POST /api/plans/<id>/run?wait=true``, a 10-step logic plan, at concurrency 1
         vs ``POST /floor/run?steps=10``: ms per run (goal: <= 20 ms);
  r3     the same with a 3-step plan at concurrency 10: runs/s (goals: >= 390/s and >= 0.8 x floor);
  profile  ``py-spy record --gil`` of one Pilot worker while execute-step runs at concurrency 10,
         then of one floor worker under /floor/step: where a worker's Python CPU goes (only the
         thread holding the GIL is sampled, so waiting for PostgreSQL or a socket is left out),
         by area and by function;
  profile-r3  the same for the r3 path (a 3-step plan, ``run?wait=true``, and ``/floor/run?steps=3``).

CPU per request of the servers' workers and of every postgres process (all databases, so
rough on a shared machine) comes from /proc. The load average is printed with every phase.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    APP_SPEC,
    DEFAULT_ADMIN_DSN,
    ROOT,
    Admin,
    Outcome,
    Server,
    fresh_database,
    loadavg,
    pilot_env,
    post_ok,
    postgres_cpu_seconds,
    steady,
)

USER = "bench-run"
FLOOR_APP = "bench.floor_app:app"
FLOOR_CONF = ROOT / "bench" / "floor_gunicorn.conf.py"
GOALS = {"s": "ratio >= 0.9", "r10": "<= 20 ms per run", "r3": ">= 390 runs/s and ratio >= 0.8"}


def logic_steps(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"s{i}", "provider": "logic", "action": "transform", "params": {"template": {"i": i, "ok": True}}}
        for i in range(n)
    ]


def step_body(i: int) -> dict[str, Any]:
    return {
        "user_id": USER,
        "step": {"provider": "logic", "action": "transform", "params": {"template": {"n": i, "ok": True}}},
    }


def step_ok(status: int, body: Any) -> str | None:
    if status == 200 and isinstance(body, dict) and body.get("success") is True:
        return None
    return f"HTTP {status}: {str(body)[:160]}"


def run_ok(status: int, body: Any) -> str | None:
    if status == 200 and isinstance(body, dict) and body.get("status") == "success":
        return None
    return f"HTTP {status}: {str(body)[:160]}"


@dataclass
class Measure:
    """One phase against one server in one round."""

    outcome: Outcome
    worker_cpu_ms: float
    pg_cpu_ms: float


@dataclass
class Phase:
    name: str
    concurrency: int
    count: int
    pilot: Callable[[int], tuple[str, str, Any]]
    floor: Callable[[int], tuple[str, str, Any]]
    judge: Callable[[int, Any], str | None]


def measure(server: Server, phase: Phase, call: Callable[[int], tuple[str, str, Any]], deadline: float) -> Measure:
    cpu, pg = server.worker_cpu_seconds(), postgres_cpu_seconds()
    outcome = steady(server.port, phase.count, phase.concurrency, call, phase.judge, deadline_s=deadline)
    n = max(1, outcome.total)
    return Measure(outcome, 1000 * (server.worker_cpu_seconds() - cpu) / n, 1000 * (postgres_cpu_seconds() - pg) / n)


def line(label: str, m: Measure) -> str:
    o = m.outcome
    return (
        f"    {label:<6} {o.ok:>5}/{o.total:<5} ok  {o.rate:7.1f}/s  p50 {o.ms(0.5):6.1f} ms  p99 {o.ms(0.99):6.1f} ms"
        f"  workers {m.worker_cpu_ms:5.2f} ms CPU/req  postgres {m.pg_cpu_ms:5.2f}"
        + (f"  errors: {o.first_errors()}" if o.errors else "")
    )


def run_phases(args: argparse.Namespace, pilot: Server, floor: Server, admin: Admin, plans: dict[int, int]) -> None:
    phases = {
        "s": Phase(
            "s: execute-step, logic, concurrency 10",
            10,
            args.step_count,
            lambda i: ("POST", "/api/execute-step", step_body(i)),
            lambda i: ("POST", "/floor/step", step_body(i)),
            step_ok,
        ),
        "r10": Phase(
            "r10: run?wait=true, 10 logic steps, concurrency 1",
            1,
            args.r10_count,
            lambda i: ("POST", f"/api/plans/{plans[10]}/run?wait=true", {"user_id": USER, "input": {"i": i}}),
            lambda i: ("POST", "/floor/run?steps=10", {"user_id": USER, "plan_id": plans[10], "input": {"i": i}}),
            run_ok,
        ),
        "r3": Phase(
            "r3: run?wait=true, 3 logic steps, concurrency 10",
            10,
            args.r3_count,
            lambda i: ("POST", f"/api/plans/{plans[3]}/run?wait=true", {"user_id": USER, "input": {"i": i}}),
            lambda i: ("POST", "/floor/run?steps=3", {"user_id": USER, "plan_id": plans[3], "input": {"i": i}}),
            run_ok,
        ),
    }
    summary: dict[str, list[tuple[Measure, Measure]]] = {}
    for key in [p for p in args.phases.split(",") if p in phases]:
        phase = phases[key]
        print(f"\n{phase.name}  (goal {GOALS[key]})")
        for round_ in range(1, args.rounds + 1):
            admin.vacuum_analyze()
            order = [("pilot", pilot, phase.pilot), ("floor", floor, phase.floor)]
            if round_ % 2 == 0:
                order.reverse()
            got: dict[str, Measure] = {}
            print(f"  round {round_} (load average {loadavg()}):")
            for label, server, call in order:
                got[label] = measure(server, phase, call, args.phase_seconds)
                print(line(label, got[label]))
                admin.vacuum_analyze()
            ratio = got["pilot"].outcome.rate / got["floor"].outcome.rate
            print(f"    pilot/floor throughput ratio {ratio:.2f}")
            summary.setdefault(key, []).append((got["pilot"], got["floor"]))
    print("\nsummary (medians over rounds; ratios within each round):")
    for key, pairs in summary.items():
        ratios = [p.outcome.rate / f.outcome.rate for p, f in pairs]
        rate = statistics.median(p.outcome.rate for p, _ in pairs)
        floor_rate = statistics.median(f.outcome.rate for _, f in pairs)
        p50 = statistics.median(p.outcome.ms(0.5) for p, _ in pairs)
        floor_p50 = statistics.median(f.outcome.ms(0.5) for _, f in pairs)
        print(
            f"  {key:<4} pilot {rate:7.1f}/s p50 {p50:6.1f} ms | floor {floor_rate:7.1f}/s p50 {floor_p50:6.1f} ms"
            f" | ratio {statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            f" | goal {GOALS[key]}"
        )


def summarize_profile(raw: Path, top: int, cpu_ms_per_req: float = float("nan")) -> None:
    """Print where the samples of py-spy's collapsed stacks fall: by area (with the worker CPU per request
    apportioned by share, an estimate) and by function (inclusive, self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for text in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
            areas[area(frames)] += count
    if not total:
        print("profile: no samples")
        return
    print(f"profile: {total} samples")
    print(f"  by area (the innermost frame that belongs to a known part); workers' CPU {cpu_ms_per_req:.2f} ms/req:")
    for name, count in areas.most_common():
        share = count / total
        print(f"    {100 * share:5.1f} %  ~{share * cpu_ms_per_req:5.3f} ms/req  {name}")
    print(f"  top {top} functions, inclusive:")
    for name, count in inclusive.most_common(top):
        print(f"    {100 * count / total:5.1f} %  {name[:150]}")
    print(f"  top {top} functions, self:")
    for name, count in own.most_common(top):
        print(f"    {100 * count / total:5.1f} %  {name[:150]}")


AREAS = (
    ("database: psycopg2 and Pilot's database layer", ("psycopg2/", "database.py", "store.py")),
    ("JSON encode/decode", ("json/",)),
    ("validation: jsonschema, pydantic, plan schema", ("jsonschema", "pydantic", "plan_schema")),
    ("JMESPath / templating", ("jmespath", "templating")),
    ("logging", ("logging/", "logging_setup")),
    ("prometheus metrics", ("prometheus_client", "metrics.py")),
    ("redaction", ("redaction",)),
    ("SSRF / address checks", ("ipaddress", "ssrf")),
    ("werkzeug / flask request handling", ("werkzeug/", "flask/")),
    ("gunicorn (HTTP parsing, worker loop)", ("gunicorn/",)),
    ("threads, queues, locks", ("threading.py", "queue.py", "concurrent/")),
    ("the floor app's own code", ("floor_app.py",)),
    (
        "Pilot's engine, routes and providers",
        ("execution_engine", "providers/", "provider_registry", "routes/", "runs.py", "auth.py", "app.py", "pilot/"),
    ),
)


def area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in AREAS:
            if any(needle in frame for needle in needles):
                return name
    return "other"


PROFILE_CHUNK_S = 5  # py-spy 0.4.2 --gil sometimes crashes (SIGSEGV) on long records: short ones, merged


def record_chunk(spy: str, pid: int, seconds: int, out: Path) -> tuple[Counter[str], str | None]:
    """One ``py-spy record --gil`` of ``seconds`` s: its collapsed stacks, or None and why it failed."""
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200", "--gil"]
    done = subprocess.run(
        [*cmd, "--format", "raw", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    if done.returncode != 0 or not out.exists():
        return Counter(), f"exit {done.returncode}"
    stacks: Counter[str] = Counter()
    for text in out.read_text(errors="replace").splitlines():
        stack, _, count = text.rpartition(" ")
        if count.isdigit():
            stacks[stack] += int(count)
    out.unlink()
    return stacks, None


def profile(
    args: argparse.Namespace,
    server: Server,
    path: str,
    admin: Admin,
    tmp: Path,
    call: Callable[[int], tuple[str, str, Any]] | None = None,
    ok: Callable[[Any], bool] | None = None,
    name: str = "step",
) -> None:
    """Profile one worker of ``server`` while ``path`` (or ``call``) is under load at concurrency 10."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("profile: py-spy is not installed (pip install -r requirements-dev.txt)")
        return
    admin.vacuum_analyze()
    worker = server.workers()[0]
    chunks = max(1, args.profile_seconds // PROFILE_CHUNK_S)
    print(
        f"\nprofile of {server.name} ({path}): {chunks} x py-spy record --pid {worker}"
        f" --duration {PROFILE_CHUNK_S} --rate 200 --gil --format raw"
        f" (load {loadavg()}); --gil samples only the thread holding the GIL: the worker's Python CPU"
    )
    result: list[Outcome] = []
    load = threading.Thread(
        target=lambda: result.append(
            steady(
                server.port,
                1_000_000,
                10,
                call or (lambda i: ("POST", path, step_body(i))),
                ok or step_ok,
                deadline_s=chunks * (PROFILE_CHUNK_S + 3) + 2,
            )
        ),
        daemon=True,
    )
    load.start()
    time.sleep(1.0)
    cpu_before, span_start = server.worker_cpu_seconds(), time.monotonic()
    stacks: Counter[str] = Counter()
    failures = []
    for index in range(chunks):
        got, failure = record_chunk(spy, worker, PROFILE_CHUNK_S, tmp / f"chunk-{index}.txt")
        stacks.update(got)
        if failure:
            failures.append(failure)
    cpu, span = server.worker_cpu_seconds() - cpu_before, time.monotonic() - span_start
    load.join(timeout=chunks * (PROFILE_CHUNK_S + 3) + 60)
    outcome = result[0] if result else Outcome()
    # Requests served while py-spy recorded, estimated from the phase's mean rate (both workers).
    cpu_ms_per_req = 1000 * cpu / max(1.0, outcome.rate * span)
    print(
        f"  load while profiling: {outcome.ok} ok, {outcome.rate:.0f}/s, {len(outcome.errors)} errors;"
        f" {chunks - len(failures)} of {chunks} records kept" + (f" (lost: {', '.join(failures)})" if failures else "")
    )
    raw = Path(args.profile_out or tmp) / f"{server.name}-{name}-profile.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("".join(f"{stack} {count}\n" for stack, count in stacks.items()))
    if args.profile_out:
        print(f"  collapsed stacks written to {raw}")
    summarize_profile(raw, args.profile_top, cpu_ms_per_req)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--phases", default="s,r10,r3,profile")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", type=int, default=8, help="DB_POOL_SIZE of both servers")
    parser.add_argument("--step-count", type=int, default=3000)
    parser.add_argument("--r10-count", type=int, default=300)
    parser.add_argument("--r3-count", type=int, default=1500)
    parser.add_argument("--phase-seconds", type=float, default=40.0, help="cap on each measurement")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--profile-out", help="a directory to keep py-spy's collapsed stacks in")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 5 or not 1 <= args.workers <= 4 or not 1 <= args.pool <= 20:
        parser.error("--rounds 1..5, --workers 1..4, --pool 1..20")
    if not 5 <= args.phase_seconds <= 120 or not 5 <= args.profile_seconds <= 60:
        parser.error("--phase-seconds 5..120, --profile-seconds 5..60")
    for name in ("step_count", "r10_count", "r3_count"):
        if not 1 <= getattr(args, name) <= 20_000:
            parser.error(f"--{name.replace('_', '-')} must be 1..20000")
    print(f"run_bench: app {APP_SPEC!r}; {' '.join(sys.argv[1:])}; load average {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="pilot-run-bench-") as tmpdir, fresh_database(args.admin_dsn) as dsn:
        tmp = Path(tmpdir)
        common = {"DB_POOL_SIZE": str(args.pool), "SCHEDULER_ENABLED": "false"}
        pilot = Server("pilot", pilot_env(dsn, tmp / "pilot", **common), tmp, workers=args.workers)
        floor = Server(
            "floor", pilot_env(dsn, tmp / "floor", **common), tmp, app=FLOOR_APP, conf=FLOOR_CONF, workers=args.workers
        )
        admin = Admin(dsn)
        try:
            pilot.wait_healthy()
            floor.wait_healthy("/floor/health")
            plans = {
                n: post_ok(pilot.port, "/api/plans", {"user_id": USER, "name": f"run {n}", "steps": logic_steps(n)})[
                    "id"
                ]
                for n in (3, 10)
            }
            for server, phase_call in (
                (pilot, lambda i: ("POST", f"/api/plans/{plans[3]}/run?wait=true", {"user_id": USER})),
                (floor, lambda i: ("POST", "/floor/run?steps=3", {"user_id": USER, "plan_id": plans[3]})),
            ):  # warm up: every worker opens its pool and imports what it needs
                steady(server.port, 200, 10, phase_call, run_ok, deadline_s=30)
            steady(pilot.port, 200, 10, lambda i: ("POST", "/api/execute-step", step_body(i)), step_ok)
            steady(floor.port, 200, 10, lambda i: ("POST", "/floor/step", step_body(i)), step_ok)
            run_phases(args, pilot, floor, admin, plans)
            if "profile" in args.phases.split(","):
                profile(args, pilot, "/api/execute-step", admin, tmp)
                profile(args, floor, "/floor/step", admin, tmp)
            if "profile-r3" in args.phases.split(","):
                run3 = f"/api/plans/{plans[3]}/run?wait=true"
                profile(args, pilot, run3, admin, tmp, lambda i: ("POST", run3, {"user_id": USER}), run_ok, "r3")
                floor3 = "/floor/run?steps=3"
                body = {"user_id": USER, "plan_id": plans[3]}
                profile(args, floor, floor3, admin, tmp, lambda i: ("POST", floor3, body), run_ok, "r3")
        finally:
            admin.close()
            for server in (pilot, floor):
                server.stop()
    print(f"\nload average at the end {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
