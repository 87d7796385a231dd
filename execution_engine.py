"""Runs one step or a whole plan: resolve the provider, render params, decrypt credentials, retry, log.

Every executed step writes exactly one ``execution_logs`` row; every value that
leaves the engine (result, log row, run row) has first passed through a
``Redactor`` built from the credentials that step used.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import metrics
import store
from config import Settings
from credentials import CredentialDecryptError, Vault
from database import DatabaseManager
from errors import NotFound, PilotError, ServiceUnavailable, ValidationError
from outbound import OutboundClient, OutboundPolicy
from plan_schema import Step, parse
from provider_registry import ExecutionContext, Provider, ProviderRegistry, ProviderResult
from redaction import Redactor
from templating import TemplateError, compile_expression, evaluate, render, truthy

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
MAX_LOGGED_CHARS = 32_000
_owner: tuple[int, str] | None = None


def process_owner_id() -> str:
    """Identifies this process (host, pid, boot) as the owner of the runs it executes."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


def truncate(value: Any, limit: int = MAX_LOGGED_CHARS, redactor: Redactor | None = None) -> Any:
    """``value`` itself when its JSON is small, else a marked preview of it.

    ``value`` is expected to be redacted already; the preview is cut with ``redactor`` anyway,
    so that whatever it holds is redacted before the cut and no piece of a secret ends it.
    """
    text = json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= limit:
        return value
    return {"truncated": True, "original_chars": len(text), "preview": (redactor or Redactor()).cut(text, limit)}


def backoff_delay(attempt: int, base: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    delay = min(MAX_BACKOFF_S, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter only
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF_S))
    return delay


class ExecutionEngine:
    """Executes steps and plans for one app; safe to share between threads."""

    def __init__(self, settings: Settings, db: DatabaseManager, vault: Vault, registry: ProviderRegistry) -> None:
        self.settings = settings
        self.db = db
        self.vault = vault
        self.registry = registry
        self.http = OutboundClient(OutboundPolicy.from_entries(settings.outbound_allowlist))
        self._pool = ThreadPoolExecutor(max_workers=settings.run_workers, thread_name_prefix="pilot-run")
        self._slots = threading.BoundedSemaphore(settings.run_workers * 16)
        self._inflight = 0
        self._idle = threading.Condition()

    # --- one step --------------------------------------------------------------

    def validate_step(self, step: Any) -> tuple[Step, Provider]:
        """The step parsed, with its provider; 400 naming the field when invalid."""
        parsed: Step = parse(Step, step, where="step")
        try:
            provider = self.registry.get(parsed.provider)
            self.registry.action(parsed.provider, parsed.action)
        except NotFound as exc:
            raise ValidationError(f"step: {exc.message}", code=exc.code) from None
        return parsed, provider

    def validate_plan_steps(self, steps: list[dict[str, Any]]) -> None:
        """Each saved step's provider, action, params and ``when``; 400 naming the step and the field."""
        for index, step in enumerate(steps):
            where = f"steps[{index}]"
            try:
                self.registry.action(step["provider"], step["action"])
                self.registry.validate_params(
                    step["provider"], step["action"], step.get("params", {}), allow_templates=True
                )
                if step.get("when"):
                    compile_expression(step["when"])
            except NotFound as exc:
                raise ValidationError(f"{where}: {exc.message}", code=exc.code) from None
            except TemplateError as exc:
                raise ValidationError(f"{where}.when: {exc.message}", code=exc.code) from None
            except ValidationError as exc:
                raise ValidationError(f"{where}.{exc.message}", code=exc.code, details=exc.details) from None

    def credentials_for(self, user_id: str, provider: Provider) -> dict[str, str]:
        with self.db.transaction(user_id) as cur:
            rows = store.list_credentials(cur, user_id, provider.name)
        return {
            row["type"]: self.vault.decrypt(user_id, provider.name, row["type"], row["encrypted_value"]) for row in rows
        }

    def execute_step(
        self,
        user_id: str,
        step: Any,
        run_context: dict[str, Any],
        *,
        plan_id: int | None = None,
        run_id: int | None = None,
        step_index: int | None = None,
    ) -> ProviderResult:
        """Run one step and log it; raises ValidationError (400) only for a step that is not valid.

        Every other failure (missing reference, missing credentials, upstream error)
        comes back as a failed ProviderResult, logged like a success.
        """
        parsed, provider = self.validate_step(step)
        redactor = Redactor()
        params: Any = parsed.params
        attempts = 0
        elapsed = 0.0
        try:
            params = render(parsed.params, run_context)
            self.registry.validate_params(parsed.provider, parsed.action, params)
            credentials = self.credentials_for(user_id, provider) if provider.credential_types else {}
            redactor = Redactor(provider.secret_values(credentials))
            missing = [name for name in provider.required_credentials() if name not in credentials]
            if missing:
                result = ProviderResult.fail(
                    "missing_credentials",
                    f"no {', '.join(missing)} stored for provider {provider.name!r}; "
                    f"POST /api/provider-credentials/{provider.name} first",
                )
            else:
                started = time.monotonic()
                result, attempts = self._attempt(parsed, provider, params, credentials, user_id, run_context, redactor)
                elapsed = time.monotonic() - started
        except (TemplateError, CredentialDecryptError) as exc:
            result = ProviderResult.fail(exc.code, exc.message)
        except ValidationError as exc:
            if run_id is None:
                raise  # execute-step: the caller sent an invalid step
            result = ProviderResult.fail("invalid_params", exc.message)
        attempts = max(attempts, 1)  # a step that failed before its call still counts as one attempt
        result.latency_ms = round(elapsed * 1000, 2)  # the provider's time, retries included
        result.metadata["attempts"] = attempts
        clean = ProviderResult.from_dict(redactor.value(result.to_dict()))
        status = "success" if clean.success else "error"
        metrics.record_step(parsed.provider, parsed.action, status, clean.latency_ms, attempts)
        self._log(user_id, parsed, clean, redactor.value(params), plan_id, run_id, step_index, attempts, redactor)
        return clean

    def context(
        self,
        user_id: str,
        timeout_s: float,
        run_context: dict[str, Any] | None = None,
        redactor: Redactor | None = None,
    ) -> ExecutionContext:
        """What a provider call may use: the guarded HTTP client, its timeout, the server's base URLs,
        and the redactor of the call's secrets (for cutting upstream text)."""
        return ExecutionContext(
            user_id=user_id,
            http=self.http,
            timeout_s=timeout_s,
            run_context=run_context or {},
            base_urls=dict(self.settings.provider_base_urls),
            redactor=redactor or Redactor(),
        )

    def _attempt(
        self,
        step: Step,
        provider: Provider,
        params: dict[str, Any],
        credentials: dict[str, str],
        user_id: str,
        run_context: dict[str, Any],
        redactor: Redactor,
    ) -> tuple[ProviderResult, int]:
        max_attempts = step.retry.max_attempts if step.retry else DEFAULT_ATTEMPTS
        base = step.retry.backoff_s if step.retry else DEFAULT_BACKOFF_S
        context = self.context(user_id, step.timeout_s or DEFAULT_TIMEOUT_S, run_context, redactor)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = provider.execute(step.action, params, credentials, context)
            except PilotError as exc:
                result = ProviderResult.fail(exc.code, exc.message, retryable=bool(getattr(exc, "retryable", False)))
            except Exception as exc:  # a provider bug must not take the run down with it
                log.error("provider %s raised %s", provider.name, type(exc).__name__)
                result = ProviderResult.fail("provider_error", f"provider {provider.name!r} failed unexpectedly")
            if result.success or not result.retryable or attempt >= max_attempts:
                return result, attempt
            retry_after = result.metadata.get("retry_after")
            time.sleep(backoff_delay(attempt, base, float(retry_after) if retry_after is not None else None))

    def _log(
        self,
        user_id: str,
        step: Step,
        result: ProviderResult,
        params: Any,
        plan_id: int | None,
        run_id: int | None,
        step_index: int | None,
        attempts: int,
        redactor: Redactor | None = None,
    ) -> None:
        error = result.error or {}
        entry = {
            "plan_id": plan_id,
            "run_id": run_id,
            "step_index": step_index,
            "step_id": step.id,
            "provider": step.provider,
            "action": step.action,
            "status": "success" if result.success else "error",
            "latency_ms": result.latency_ms,
            "error_code": error.get("code"),
            "error": error.get("message"),
            "attempt": attempts,
            "input": truncate(params, redactor=redactor),
            "output": truncate({"data": result.data, "metadata": result.metadata}, redactor=redactor),
        }
        with self.db.transaction(user_id) as cur:
            store.insert_log(cur, user_id, entry)

    # --- whole plans -------------------------------------------------------------

    def create_run(self, user_id: str, plan_id: int, trigger: str, scheduled_for: Any = None) -> dict[str, Any] | None:
        """Insert a queued run; None when a run for this (plan, scheduled_for) already exists."""
        with self.db.transaction(user_id) as cur:
            if store.get_plan(cur, user_id, plan_id) is None:
                raise NotFound(f"plan {plan_id} not found")
            return store.insert_run(
                cur, user_id, plan_id, trigger=trigger, owner_id=process_owner_id(), scheduled_for=scheduled_for
            )

    def submit(self, user_id: str, run_id: int) -> None:
        """Run a queued run on the bounded worker pool; 503 when the queue is full."""
        if not self._slots.acquire(blocking=False):
            with self.db.transaction(user_id) as cur:
                store.finish_run(cur, user_id, run_id, "error", [], "rejected: the run queue is full")
            raise ServiceUnavailable("too many runs are queued; try again shortly", code="busy")

        def work() -> None:
            try:
                self.run(user_id, run_id)
            except Exception:
                log.exception("run %s failed outside its steps", run_id)
            finally:
                self._slots.release()
                with self._idle:
                    self._inflight -= 1
                    self._idle.notify_all()

        with self._idle:
            self._inflight += 1
        self._pool.submit(work)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for submitted runs to finish; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)

    def run(self, user_id: str, run_id: int, input_: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Execute a queued run to the end; returns the finished run row (None if it was not queued)."""
        with self.db.transaction(user_id) as cur:
            run = store.start_run(cur, user_id, run_id, process_owner_id())
            plan = store.get_plan(cur, user_id, run["plan_id"]) if run else None
        if run is None:
            return None
        if plan is None:
            return self._finish(user_id, run_id, "error", [], "the plan was deleted")
        context: dict[str, Any] = {"steps": {}, "step_results": {}, "input": input_ or {}}
        results: list[dict[str, Any]] = []
        status, error = "success", None
        for index, step in enumerate(plan["steps"]):
            entry: dict[str, Any] = {
                "index": index,
                "id": step.get("id"),
                "provider": step.get("provider"),
                "action": step.get("action"),
            }
            try:
                if step.get("when") and not truthy(evaluate(step["when"], context)):
                    results.append({**entry, "status": "skipped"})
                    continue
                # Recorded before the call: if this process dies now, the step's outcome is known to be unknown.
                with self.db.transaction(user_id) as cur:
                    store.progress_run(cur, user_id, run_id, [*results, {**entry, "status": "running"}])
                result = self.execute_step(user_id, step, context, plan_id=plan["id"], run_id=run_id, step_index=index)
            except PilotError as exc:
                result = ProviderResult.fail(exc.code, exc.message)
            outcome = result.to_dict()
            context["step_results"][str(index)] = outcome
            if step.get("id"):
                context["steps"][step["id"]] = outcome
            results.append({**entry, "status": "success" if result.success else "error", "result": outcome})
            if not result.success and not step.get("continue_on_error"):
                status = "error"
                error = f"step {step.get('id') or index} failed: {(result.error or {}).get('message', '')}"
                break
        return self._finish(user_id, run_id, status, results, error)

    def _finish(
        self, user_id: str, run_id: int, status: str, results: list[dict[str, Any]], error: str | None
    ) -> dict[str, Any] | None:
        with self.db.transaction(user_id) as cur:
            run = store.finish_run(cur, user_id, run_id, status, results, error)
            if run is not None and run["trigger"] == "schedule" and status == "error":
                self._maybe_pause(cur, user_id, run["plan_id"])
        if run is not None:
            metrics.record_run_finished(run["trigger"], run["status"])
        return run

    def _maybe_pause(self, cur: Any, user_id: str, plan_id: int) -> None:
        """``pause_on_failure: N``: disable the plan after N consecutive failed scheduled runs."""
        plan = store.get_plan(cur, user_id, plan_id)
        limit = ((plan or {}).get("schedule") or {}).get("pause_on_failure")
        if not plan or not limit or not plan["enabled"]:
            return
        recent = store.recent_finished_runs(cur, user_id, plan_id, int(limit))
        if len(recent) == int(limit) and all(status != "success" for status in recent):
            store.set_plan_enabled(cur, user_id, plan_id, False)
            log.warning("plan %s paused after %s consecutive failed runs", plan_id, limit)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
