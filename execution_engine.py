"""Runs one step or a whole plan: resolve the provider, render params, decrypt credentials, retry, log.

Every executed step writes exactly one ``execution_logs`` row; every value that
leaves the engine (result, log row, run row) has first passed through a
``Redactor`` built from the credentials that step used. Whatever fails inside a
step ends as that step's failed result, logged; whatever fails outside the steps
ends the run as ``error``. A run is never left ``running`` by a live process: its
lease is renewed only while this engine holds it (``leases.LeaseKeeper``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from database import DatabaseManager
from pilot.costs.meter import Meter, logged_usage
from pilot.costs.prices import PriceBook
from pilot.data import store
from pilot.errors import DatabaseError, NotFound, PilotError, ServiceUnavailable, ValidationError
from pilot.execution.progress import RunProgress, storable
from pilot.execution.runs import RunExecution, process_owner_id, unexpected_failure
from pilot.ops import cost_metrics, metrics
from pilot.security.breaker import CircuitBreakers, host_key
from pilot.security.outbound import OutboundClient, OutboundPolicy
from pilot.security.redaction import Redactor
from pilot.security.vault import CredentialDecryptError, Vault, unreadable_credentials
from pilot.settings import Settings
from pilot.steps.plan_schema import Step, parse
from pilot.steps.templating import TemplateError, render
from provider_registry import DEFAULT_TIMEOUT_S, ExecutionContext, Provider, ProviderRegistry, ProviderResult

log = logging.getLogger(__name__)

CREDENTIAL_TEST_TIMEOUT_S = 15.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
MAX_LOGGED_CHARS = 32_000
MAX_RESULT_DEPTH = 128  # deeper results fail their step: nothing downstream must recurse that deep


def truncate(value: Any, limit: int = MAX_LOGGED_CHARS, redactor: Redactor | None = None) -> Any:
    """``value`` itself when its JSON is small, else a marked preview of it.

    ``value`` is expected to be redacted already; the preview is cut with ``redactor`` anyway,
    so that whatever it holds is redacted before the cut and no piece of a secret ends it.
    Raises TypeError when ``value`` is not JSON (the caller logs the step without it).
    """
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= limit:
        return value
    return {"truncated": True, "original_chars": len(text), "preview": (redactor or Redactor()).cut(text, limit)}


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in ``value``, counted without recursion and only up to ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list | tuple):
            deepest = max(deepest, level + 1)
            if deepest > limit:
                break
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def backoff_delay(attempt: int, base: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    delay = min(MAX_BACKOFF_S, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter only
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF_S))
    return delay


def _kept_metadata(result: ProviderResult, attempts: int) -> dict[str, Any]:
    """The metadata a replacement failure keeps: the attempts, and what the call cost (it was spent)."""
    kept: dict[str, Any] = {"attempts": attempts}
    if "cost" in result.metadata:
        kept["cost"] = result.metadata["cost"]
    return kept


__all__ = ["DEFAULT_TIMEOUT_S", "ExecutionEngine", "process_owner_id", "truncate"]


class ExecutionEngine(RunExecution):
    """Executes steps and plans for one app; safe to share between threads (whole runs: ``runs.py``)."""

    def __init__(self, settings: Settings, db: DatabaseManager, vault: Vault, registry: ProviderRegistry) -> None:
        self.settings = settings
        self.db = db
        self.vault = vault
        self.registry = registry
        self.http = OutboundClient(OutboundPolicy.from_entries(settings.outbound_allowlist))
        self.meter = Meter(db, PriceBook.load(settings.price_table))  # usage, cost and budgets of LLM steps
        self.breakers = CircuitBreakers(
            settings.breaker_failures,
            settings.breaker_window_seconds,
            settings.breaker_cooldown_seconds,
            public_hosts=self._default_hosts(),
            on_state=cost_metrics.record_breaker_state,
            on_reject=cost_metrics.record_breaker_rejection,
        )
        self._setup_runs()

    def _default_hosts(self) -> dict[str, set[str]]:
        """Each provider's default endpoint hosts (the server's base URL and the built-in one)."""
        hosts: dict[str, set[str]] = {}
        for name, provider in self.registry.providers.items():
            urls = (self.settings.provider_base_urls.get(name), getattr(provider, "default_base_url", None))
            hosts[name] = {host for url in urls if isinstance(url, str) and (host := host_key(url))}
        return hosts

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

    def credentials_for(self, user_id: str, provider: Provider) -> dict[str, str]:
        """The user's stored credentials for ``provider``, decrypted.

        A stored type the provider declares but that cannot be read (wrong key, a
        ciphertext copied from another row) raises CredentialDecryptError naming
        every such type: going on without an unreadable ``base_url`` or ``hmac_secret``
        would send the key to the default endpoint or post an unsigned webhook.
        Unreadable types the provider does not use are left out; other providers'
        credentials are never read here.
        """
        with self.db.transaction(user_id, single=True) as cur:
            rows = store.list_credentials(cur, user_id, provider.name)
        readable: dict[str, str] = {}
        failures: dict[str, CredentialDecryptError] = {}
        for row in rows:
            try:
                readable[row["type"]] = self.vault.decrypt(user_id, provider.name, row["type"], row["encrypted_value"])
            except CredentialDecryptError as exc:
                if row["type"] in provider.credential_types:
                    failures[row["type"]] = exc
        if failures:
            raise unreadable_credentials(provider.name, failures)
        return readable

    def execute_step(
        self, user_id: str, step: Any, run_context: dict[str, Any], *, literal: bool = False
    ) -> ProviderResult:
        """Run one step on its own and log it.

        Raises ValidationError for a step that is not valid, including params that do
        not fit the action's schema once rendered: the caller sent them. Every other
        failure (missing reference, missing credentials, upstream error, a result that
        cannot be stored, any unexpected error) comes back as a failed ProviderResult,
        logged like a success. ``literal`` sends params as given, without rendering
        ``{{ }}`` (Pilot's own calls whose text explains the syntax: the planner).
        """
        where = {"plan_id": None, "run_id": None, "step_index": None}
        return self._execute(user_id, step, run_context, where, params_error_fails=False, literal=literal)

    def execute_run_step(
        self,
        user_id: str,
        step: Any,
        run_context: dict[str, Any],
        *,
        plan_id: int,
        run_id: int,
        step_index: int,
        run: RunProgress | None = None,
    ) -> ProviderResult:
        """Run step ``step_index`` of a run and log it.

        Like ``execute_step``, except that rendered params which do not fit the action's
        schema are the step's failure (the plan was saved before its inputs were known).
        With ``run``: credentials are decrypted once per run and provider, and a pure
        step's log row waits in ``run.logs`` for the run's next write (``progress.py``).
        """
        where = {"plan_id": plan_id, "run_id": run_id, "step_index": step_index}
        return self._execute(user_id, step, run_context, where, params_error_fails=True, run=run)

    def step_is_pure(self, step: Any) -> bool:
        """Whether the step's provider is pure (no network, no credentials, no side effect): a logic step."""
        name = step.get("provider") if isinstance(step, dict) else None
        provider = self.registry.providers.get(name) if isinstance(name, str) else None
        return bool(provider is not None and provider.pure)

    def _run_credentials(self, user_id: str, provider: Provider, run: RunProgress | None) -> dict[str, str]:
        """The provider's credentials: read and decrypted once per run (``run``), else every time."""
        if not provider.credential_types:
            return {}
        if run is None:
            return self.credentials_for(user_id, provider)
        if provider.name not in run.credentials:
            run.credentials[provider.name] = self.credentials_for(user_id, provider)
        return run.credentials[provider.name]

    def _execute(
        self,
        user_id: str,
        step: Any,
        run_context: dict[str, Any],
        where: dict[str, Any],
        *,
        params_error_fails: bool,
        literal: bool = False,
        run: RunProgress | None = None,
    ) -> ProviderResult:
        parsed, provider = self.validate_step(step)
        redactor = Redactor()
        params: Any = parsed.params
        attempts = 0
        elapsed = 0.0
        try:
            params = parsed.params if literal else render(parsed.params, run_context)
            self.registry.validate_params(parsed.provider, parsed.action, params)
            credentials = self._run_credentials(user_id, provider, run)
            redactor = Redactor(provider.secret_values(credentials))
            missing = [name for name in provider.required_credentials() if name not in credentials]
            if missing:
                result = ProviderResult.fail(
                    "missing_credentials", f"no {', '.join(missing)} stored for provider {provider.name!r}"
                )
            else:
                result, attempts, elapsed = self._metered_call(
                    parsed, provider, params, credentials, user_id, run_context, redactor, where
                )
        except (TemplateError, CredentialDecryptError) as exc:
            result = ProviderResult.fail(exc.code, exc.message)
        except ValidationError as exc:
            if not params_error_fails:
                raise
            result = ProviderResult.fail("invalid_params", exc.message)
        except Exception as exc:  # anything else inside the step is the step's failure, never the run's
            result = unexpected_failure(exc)
        attempts = max(attempts, 1)  # a step that failed before its call still counts as one attempt
        result.latency_ms = round(elapsed * 1000, 2)  # the provider's time, retries included
        result.metadata["attempts"] = attempts
        clean = self._redacted(result, redactor)
        kept = self._log(
            user_id,
            parsed,
            clean,
            self._redacted_params(params, redactor),
            where,
            attempts,
            redactor,
            run=run,
            pure=provider.pure,
        )
        metrics.record_step(
            parsed.provider, parsed.action, "success" if kept.success else "error", kept.latency_ms, attempts
        )
        return kept

    def test_credentials(self, user_id: str, provider_name: str) -> dict[str, Any]:
        """Check ``user_id``'s stored credentials for a provider against the provider; its answer, redacted.

        NotFound when the provider is unknown or nothing is stored for it;
        CredentialDecryptError when a type it declares cannot be read.
        """
        provider = self.registry.get(provider_name)
        credentials = self.credentials_for(user_id, provider)
        if not credentials:
            raise NotFound(f"no credentials stored for {provider_name}")
        redactor = Redactor([*credentials.values(), *provider.secret_values(credentials)])
        context = self.context(user_id, timeout_s=CREDENTIAL_TEST_TIMEOUT_S, redactor=redactor, provider=provider)
        result = provider.test_credentials(credentials, context)
        return dict(redactor.value(result.to_dict()))

    @staticmethod
    def _redacted(result: ProviderResult, redactor: Redactor) -> ProviderResult:
        """``result`` redacted; a failure instead when it nests too deeply to redact, store or render from."""
        if nesting_depth(result.to_dict(), MAX_RESULT_DEPTH) > MAX_RESULT_DEPTH:
            failed = ProviderResult.fail(
                "result_too_deep", f"the step's result nests deeper than {MAX_RESULT_DEPTH} levels; it was not kept"
            )
            failed.latency_ms = result.latency_ms
            failed.metadata = _kept_metadata(result, result.metadata.get("attempts", 1))
            return failed
        return ProviderResult.from_dict(redactor.value(result.to_dict()))

    @staticmethod
    def _redacted_params(params: Any, redactor: Redactor) -> Any:
        if nesting_depth(params, MAX_RESULT_DEPTH) > MAX_RESULT_DEPTH:
            return {"omitted": f"params nest deeper than {MAX_RESULT_DEPTH} levels"}
        return redactor.value(params)

    def context(
        self,
        user_id: str,
        timeout_s: float,
        run_context: dict[str, Any] | None = None,
        redactor: Redactor | None = None,
        provider: Provider | None = None,
    ) -> ExecutionContext:
        """What a provider call may use: the guarded HTTP client, its timeout, the server's base URLs,
        the redactor of the call's secrets (for cutting upstream text) and the circuit breakers."""
        return ExecutionContext(
            user_id=user_id,
            http=self.http,
            timeout_s=timeout_s,
            run_context=run_context or {},
            base_urls=dict(self.settings.provider_base_urls),
            redactor=redactor or Redactor(),
            provider=provider.name if provider else "",
            breakers=self.breakers,
            default_timeout_s=provider.default_timeout_s if provider else DEFAULT_TIMEOUT_S,
        )

    def _metered_call(
        self,
        step: Step,
        provider: Provider,
        params: dict[str, Any],
        credentials: dict[str, str],
        user_id: str,
        run_context: dict[str, Any],
        redactor: Redactor,
        where: dict[str, Any],
    ) -> tuple[ProviderResult, int, float]:
        """The step's calls (``_attempt``) between the meter's budget check and its cost: (result, attempts, s).

        A step a budget refuses makes no call (0 attempts); an LLM step's result carries ``metadata.cost``.
        """
        gate = self.meter.admit(user_id, provider, step.action, params, where)
        if gate.refusal is not None:
            self.meter.settle(gate, gate.refusal, called=False)
            return gate.refusal, 0, 0.0
        started = time.monotonic()
        result, attempts = self._attempt(step, provider, params, credentials, user_id, run_context, redactor)
        elapsed = time.monotonic() - started
        self.meter.settle(gate, result, called=True)
        return result, attempts, elapsed

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
        timeout_s = step.timeout_s or provider.default_timeout_s
        context = self.context(user_id, timeout_s, run_context, redactor, provider)
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
        where: dict[str, Any],
        attempts: int,
        redactor: Redactor | None = None,
        *,
        run: RunProgress | None = None,
        pure: bool = False,
    ) -> ProviderResult:
        """Write the step's one log row; returns the result as kept.

        A result the database cannot store (not JSON, refused by PostgreSQL) is
        replaced by a failure, logged without input and output, so the step still
        has its row and the run can still record it. Only a database that is down
        makes this raise. A pure step of a run whose row PostgreSQL will take
        (``storable``) only joins ``run.logs``: the run writes it with its next write.
        """
        if run is not None and pure:
            entry = self._log_entry(step, result, params, where, attempts, redactor)
            if storable(entry) and not entry["cost_usd"]:
                run.logs.append(entry)
                return result
        try:
            self._insert_log(user_id, step, result, params, where, attempts, redactor, run=run)
            return result
        except (DatabaseError, ServiceUnavailable):
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, PilotError) else type(exc).__name__
            log.warning("step result of %s.%s could not be stored: %s", step.provider, step.action, reason)
            kept = ProviderResult.fail(
                "result_unstorable", f"the step's result could not be stored ({reason}); it was not kept"
            )
            kept.latency_ms, kept.metadata = result.latency_ms, _kept_metadata(result, attempts)
            self._insert_log(user_id, step, kept, None, where, attempts, redactor, run=run)
            return kept

    def _insert_log(
        self,
        user_id: str,
        step: Step,
        result: ProviderResult,
        params: Any,
        where: dict[str, Any],
        attempts: int,
        redactor: Redactor | None = None,
        *,
        run: RunProgress | None = None,
    ) -> None:
        """The step's log row, after the rows ``run`` still owes (so ids follow the steps), in one round trip."""
        entry = self._log_entry(step, result, params, where, attempts, redactor)
        pending = run.logs if run is not None else []
        with self.db.transaction(user_id) as cur:
            store.insert_logs(cur, user_id, [*pending, entry])
            if entry["cost_usd"]:  # the month's spend moves with the log row, in one transaction
                store.add_month_spend(cur, user_id, entry["cost_usd"])
        pending.clear()

    @staticmethod
    def _log_entry(
        step: Step,
        result: ProviderResult,
        params: Any,
        where: dict[str, Any],
        attempts: int,
        redactor: Redactor | None,
    ) -> dict[str, Any]:
        error = result.error or {}
        return {
            **where,
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
            **logged_usage(result),
        }
