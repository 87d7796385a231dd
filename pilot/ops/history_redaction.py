"""``redact-history``: re-apply today's redaction to rows written before it existed.

Earlier versions cut upstream text before redacting it (leaving pieces of keys in
``execution_logs.error``, run results and answers) and logged webhook header values as
written. This pass rewrites, in batches of short transactions, every user's
``execution_logs`` (error, input, output) and ``plan_runs`` (error, step_results) with a
``Redactor`` built from all that user's stored credentials (pieces of them anywhere, key
shapes, secret-named header values, also inside truncated previews). A second pass changes
nothing.

Plans are different: replacing an inline secret header by ``[REDACTED]`` would break the
plan. So plans are only *reported* (id, owner, path; never the value) unless the operator
asks to move such headers into the vault: the value becomes the owner's ``webhook``
credential ``header:<Name>`` and the step sends it through ``auth`` instead, which keeps
the plan working. A header whose credential already exists with another value, and any
other inline secret (a stored value or key shape elsewhere in a step), stays reported for
the owner to edit; the key should be rotated either way. A plan's earlier versions (migration
016, kept for runs and replays) get the same move, quietly: the plan's report covers them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from database import Cursor, DatabaseManager
from pilot.data import store
from pilot.errors import ValidationError
from pilot.ops.maintenance import MAX_BATCH_SIZE, require_rls_bypass
from pilot.security.redaction import REDACTED, Redactor, secret_header
from pilot.security.vault import CredentialDecryptError, Vault
from provider_registry import CREDENTIAL_TYPE, HEADER_CREDENTIAL, ProviderRegistry

DEFAULT_BATCH_SIZE = 500
_HEADERS_OPEN = re.compile(r'"headers"\s*:\s*\{')
_PAIR = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*:\s*("(?:[^"\\]|\\.)*"?)?\s*,?')


@dataclass
class Counts:
    scanned: int = 0
    changed: int = 0


@dataclass(frozen=True)
class Finding:
    """An inline secret in a plan step: where it is and what was done; never the value."""

    plan_id: int
    user_id: str
    path: str
    outcome: str


@dataclass
class Report:
    logs: Counts = field(default_factory=Counts)
    runs: Counts = field(default_factory=Counts)
    plans: Counts = field(default_factory=Counts)
    versions: Counts = field(default_factory=Counts)
    credentials_read: int = 0
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    headers_left: int = 0
    moving: bool = False  # --move-plan-headers was given


class _Secrets:
    """Each user's decrypted credentials and the history redactor built from them."""

    def __init__(self, rows: list[dict[str, Any]], vault: Vault, registry: ProviderRegistry, report: Report) -> None:
        self.values: dict[tuple[str, str, str], str | None] = {}  # None: cannot be decrypted
        grouped: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
        for row in rows:
            key = (row["user_id"], row["provider"], row["type"])
            try:
                value = vault.decrypt(*key, row["encrypted_value"])
            except CredentialDecryptError:
                report.unreadable.append(key)
                self.values[key] = None
                continue
            report.credentials_read += 1
            self.values[key] = value
            grouped[row["user_id"]][row["provider"]][row["type"]] = value
        self._registry = registry
        self._grouped = grouped
        self._redactors: dict[str, Redactor] = {}

    def redactor(self, user_id: str) -> Redactor:
        if user_id not in self._redactors:
            secrets: list[str] = []
            for provider, values in self._grouped.get(user_id, {}).items():
                known = self._registry.providers.get(provider)
                secrets += known.secret_values(values) if known else list(values.values())
            self._redactors[user_id] = Redactor(secrets, pieces_anywhere=True)
        return self._redactors[user_id]


def redact_preview_headers(text: str) -> str:
    """In a cut JSON text (a logged preview), replace string values of secret-named keys of ``headers`` objects."""
    out, position = [], 0
    while (opened := _HEADERS_OPEN.search(text, position)) is not None:
        out.append(text[position : opened.end()])
        position = opened.end()
        while (pair := _PAIR.match(text, position)) is not None and pair.end() > position:
            value = pair.group(2)
            if value and secret_header(pair.group(1)) and value != f'"{REDACTED}"':
                out.append(text[position : pair.start(2)] + f'"{REDACTED}"' + text[pair.end(2) : pair.end()])
            else:
                out.append(text[position : pair.end()])
            position = pair.end()
    out.append(text[position:])
    return "".join(out)


def _redact(redactor: Redactor, value: Any) -> Any:
    """``value`` redacted, truncated previews (``{"truncated": true, "preview": …}``) included."""
    clean = redactor.value(value)
    if isinstance(clean, dict) and clean.get("truncated") is True and isinstance(clean.get("preview"), str):
        clean["preview"] = redact_preview_headers(clean["preview"])
    return clean


Rows = list[dict[str, Any]]


def _in_batches(
    db: DatabaseManager, fetch: Callable[[Cursor, int, int], Rows], size: int, handle: Callable[[Cursor, Rows], None]
) -> None:
    """Fetch rows by id in batches; ``handle`` each batch inside the transaction that locked it."""
    after_id = 0
    while True:
        with db.transaction(None, as_app=False) as cur:
            rows = fetch(cur, after_id, size)
            handle(cur, rows)
        if len(rows) < size:
            return
        after_id = rows[-1]["id"]


def _logs(secrets: _Secrets, report: Report) -> Callable[[Cursor, Rows], None]:
    def handle(cur: Cursor, rows: Rows) -> None:
        for row in rows:
            redactor = secrets.redactor(row["user_id"])
            new = (_redact(redactor, row["error"]), _redact(redactor, row["input"]), _redact(redactor, row["output"]))
            report.logs.scanned += 1
            if new != (row["error"], row["input"], row["output"]):
                store.set_log_redacted(cur, row["id"], *new)
                report.logs.changed += 1

    return handle


def _runs(secrets: _Secrets, report: Report) -> Callable[[Cursor, Rows], None]:
    def handle(cur: Cursor, rows: Rows) -> None:
        for row in rows:
            redactor = secrets.redactor(row["user_id"])
            error, results = _redact(redactor, row["error"]), _redact(redactor, row["step_results"])
            replay = _redact(redactor, row["replay"])  # a replay's copies of the results it reused
            report.runs.scanned += 1
            if (error, results, replay) != (row["error"], row["step_results"], row["replay"]):
                store.set_run_redacted(cur, row["id"], error, results, replay)
                report.runs.changed += 1

    return handle


def redact_history(
    db: DatabaseManager,
    vault: Vault,
    registry: ProviderRegistry,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    move_plan_headers: bool = False,
) -> Report:
    """Redact every user's stored logs and runs, and report (or, asked to, fix) plans with inline secrets."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValidationError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    require_rls_bypass(db, "redact-history")
    report = Report(moving=move_plan_headers)
    with db.transaction(None, as_app=False) as cur:
        rows = store.all_credentials(cur)
    secrets = _Secrets(rows, vault, registry, report)
    _in_batches(db, store.logs_to_redact, batch_size, _logs(secrets, report))
    _in_batches(db, store.runs_to_redact, batch_size, _runs(secrets, report))
    _in_batches(db, store.plans_to_redact, batch_size, _PlanFixer(secrets, vault, registry, report, move_plan_headers))
    if move_plan_headers:  # after the plans: their old versions (migration 016) hold the same headers
        _in_batches(db, store.versions_to_redact, batch_size, _VersionFixer(secrets, vault, registry, report, True))
    return report


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` with its path (``a.b[0]``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from _strings(child, f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _strings(child, f"{path}[{index}]")


def _auth_names(auth: Any) -> list[str] | None:
    """The step's ``auth`` as a list; None when it is a template (not ours to rewrite)."""
    if auth is None:
        return []
    if isinstance(auth, str):
        return None if "{{" in auth else [auth]
    return list(auth) if isinstance(auth, list) and all(isinstance(a, str) and "{{" not in a for a in auth) else None


def _sent_header(auth_name: str) -> str:
    return "authorization" if auth_name in ("bearer_token", "basic_auth") else auth_name.split(":", 1)[-1].lower()


class _PlanFixer:
    """Finds inline secrets in a plan's steps; moves secret webhook headers into the vault when asked."""

    def __init__(self, secrets: _Secrets, vault: Vault, registry: ProviderRegistry, report: Report, move: bool) -> None:
        self.secrets, self.vault, self.registry, self.report, self.move = secrets, vault, registry, report, move

    def __call__(self, cur: Cursor, rows: Rows) -> None:
        for row in rows:
            self.report.plans.scanned += 1
            steps = self.fix(cur, row)
            if steps is not None:
                store.set_plan_steps(cur, row["id"], steps)
                self.report.plans.changed += 1

    def fix(self, cur: Cursor, plan: dict[str, Any]) -> list[Any] | None:
        """The plan's new steps when a header was moved, else None (findings go to the report)."""
        redactor = self.secrets.redactor(plan["user_id"])
        steps = [dict(step) if isinstance(step, dict) else step for step in plan["steps"] or []]
        changed = False
        for index, step in enumerate(steps):
            if not isinstance(step, dict) or not isinstance(step.get("params"), dict):
                continue
            where = f"steps[{index}].params"
            params = step["params"] = dict(step["params"])
            headers = params.get("headers") if step.get("provider") == "webhook" else None
            for name, value in list(headers.items()) if isinstance(headers, dict) else []:
                inline = isinstance(value, str) and "{{" not in value  # a reference is resolved at run time
                if inline and (secret_header(name) or redactor.text(value) != value):
                    changed |= self._header(cur, plan, params, f"{where}.headers.{name}", name, value)
            for path, value in _strings({k: v for k, v in params.items() if k != "headers"}, where):
                if redactor.text(value) != value:
                    outcome = "holds a stored credential or a key-shaped string; edit the plan, then rotate the key"
                    self._found(plan, path, outcome)
        return steps if changed else None

    def _found(self, plan: dict[str, Any], path: str, outcome: str) -> None:
        self.report.findings.append(Finding(plan["id"], plan["user_id"], path, outcome))

    def _header(
        self, cur: Cursor, plan: dict[str, Any], params: dict[str, Any], path: str, name: str, value: str
    ) -> bool:
        """Move one inline secret header into the vault (True when params changed), or report why not."""
        label = "secret header value"
        if not self.move:
            self.report.headers_left += 1
            self._found(plan, path, f"{label}; left in the plan")
            return False
        user, type_ = plan["user_id"], f"{HEADER_CREDENTIAL}{name}"
        auth = _auth_names(params.get("auth"))
        reason = self._cannot_move(user, type_, value, auth)
        if reason:
            self.report.headers_left += 1
            self._found(plan, path, f"{label}; left: {reason}")
            return False
        assert auth is not None
        params["headers"] = {k: v for k, v in params["headers"].items() if k != name}
        if name.lower() in {_sent_header(a) for a in auth}:
            self._found(plan, path, f"{label}; removed: the step's auth already sends {name}")
            return True
        if self.secrets.values.get((user, "webhook", type_)) is None:
            store.upsert_credential(cur, user, "webhook", type_, self.vault.encrypt(user, "webhook", type_, value))
            self.secrets.values[(user, "webhook", type_)] = value
        auth.append(type_)
        params["auth"] = auth[0] if len(auth) == 1 else auth
        self._found(plan, path, f"{label}; moved to {user}'s webhook credential {type_}")
        return True

    def _cannot_move(self, user: str, type_: str, value: str, auth: list[str] | None) -> str | None:
        if auth is None:
            return "the step's auth is a template"
        if not CREDENTIAL_TYPE.fullmatch(type_):
            return f"{type_!r} is not a valid credential type"
        webhook = self.registry.providers.get("webhook")
        if webhook is None:
            return "the webhook provider is not loaded"
        try:
            webhook.check_credential(type_, value)
        except ValidationError as exc:
            return exc.message
        key = (user, "webhook", type_)
        if key in self.secrets.values and self.secrets.values[key] is None:
            return f"{user}'s webhook {type_} cannot be decrypted"
        if self.secrets.values.get(key) not in (None, value):
            return f"{user} already stores a different webhook {type_}"
        return None


class _VersionFixer(_PlanFixer):
    """Old versions of plans: their secret webhook headers moved like the plans' own, quietly.

    The plan pass has reported each plan already; a header that cannot be moved stays in the
    version as it stays in the plan (the owner's edit makes a new version; rotate the key).
    """

    def __call__(self, cur: Cursor, rows: Rows) -> None:
        for row in rows:
            self.report.versions.scanned += 1
            findings, left = len(self.report.findings), self.report.headers_left
            steps = self.fix(cur, {**row, "id": row["plan_id"]})
            del self.report.findings[findings:]
            self.report.headers_left = left
            if steps is not None:
                store.set_plan_version_steps(cur, row["id"], steps)
                self.report.versions.changed += 1


def describe(report: Report) -> list[str]:
    """Lines for the operator: counts, unreadable credentials and plan findings, never a secret."""
    lines = [
        f"execution_logs: {report.logs.scanned} scanned, {report.logs.changed} changed",
        f"plan_runs: {report.runs.scanned} scanned, {report.runs.changed} changed",
        f"execution_plans: {report.plans.scanned} scanned, {report.plans.changed} changed",
        *(
            [f"plan_versions: {report.versions.scanned} scanned, {report.versions.changed} changed"]
            if report.moving
            else []
        ),
        f"credentials: {report.credentials_read} read, {len(report.unreadable)} cannot be decrypted",
    ]
    lines += [
        f"  {user} {provider} {type_}: cannot be decrypted; {user}'s rows were redacted without it"
        for user, provider, type_ in report.unreadable
    ]
    lines += [f"plan {f.plan_id} ({f.user_id}): {f.path}: {f.outcome}" for f in report.findings]
    if report.headers_left and report.moving:
        lines.append(f"{report.headers_left} inline secret header(s) could not be moved; their owners must edit them")
    elif report.headers_left:
        lines.append(
            f"{report.headers_left} inline secret header(s) left in plans; run again with --move-plan-headers "
            "to move them into the owners' webhook credentials (the plans keep working)"
        )
    if report.findings or report.unreadable:
        lines.append("rotate every key that was exposed")
    return lines
