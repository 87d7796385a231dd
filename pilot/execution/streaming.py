"""One step streamed: the model's text as it arrives, redacted, then the step's result and its one log row.

``StepStream`` is prepared in the request (everything that can make the request invalid
raises ``ValidationError`` there, before a byte is sent) and then iterated by the server
while it writes the response, in the same thread: one thread per stream, nothing else.
Its events are ``delta`` (redacted text, held back only as long as it could be the start
of a secret: ``StreamRedactor``), ``alive`` (the upstream showed a sign of life; the HTTP
layer writes a comment, which is also how a client that left is noticed) and ``result``
(exactly what ``execute_step`` would have answered). Closing the iteration early (the
client disconnected) closes the upstream connection and logs the step as an ``error``
with code ``cancelled``. Retries happen only before any text arrived.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from execution_engine import DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_S, backoff_delay
from pilot.costs.meter import Gate
from pilot.errors import PilotError
from pilot.execution.runs import unexpected_failure
from pilot.ops import metrics
from pilot.security.redaction import Redactor, StreamRedactor
from pilot.security.vault import CredentialDecryptError
from pilot.steps.templating import TemplateError, render
from provider_registry import ProviderResult

if TYPE_CHECKING:
    from execution_engine import ExecutionEngine

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
# Facts about the stream kept in the log row's output metadata, not in the answer (which is
# exactly the non-streamed one).
LOG_ONLY_METADATA = ("streamed", "time_to_first_token_ms")
NO_RUN: dict[str, Any] = {"plan_id": None, "run_id": None, "step_index": None}  # execute-step belongs to no run


@dataclass(frozen=True)
class StreamEvent:
    """``delta`` (data: the text), ``alive`` (no data) or ``result`` (data: the result as a dict)."""

    kind: str
    data: Any = None


class StepStream:
    """A step whose text is streamed; iterate ``events()`` once (see the module docstring)."""

    def __init__(self, engine: ExecutionEngine, user_id: str, step: Any, run_context: dict[str, Any]) -> None:
        """Validate and prepare the step. ValidationError when the caller's step or its rendered params are
        invalid (as ``execute_step``); other failures (a template error, missing or unreadable credentials)
        become the streamed result."""
        self.engine, self.user_id, self.run_context = engine, user_id, run_context
        self.step, self.provider = engine.validate_step(step)
        self.params: Any = self.step.params
        self.credentials: dict[str, str] = {}
        self.redactor = Redactor()
        self.early: ProviderResult | None = None
        try:
            self.params = render(self.step.params, run_context)
            engine.registry.validate_params(self.step.provider, self.step.action, self.params)
            if self.provider.credential_types:
                self.credentials = engine.credentials_for(user_id, self.provider)
            self.redactor = Redactor(self.provider.secret_values(self.credentials))
            missing = [name for name in self.provider.required_credentials() if name not in self.credentials]
            if missing:
                self.early = ProviderResult.fail(
                    "missing_credentials", f"no {', '.join(missing)} stored for provider {self.provider.name!r}"
                )
        except (TemplateError, CredentialDecryptError) as exc:
            self.early = ProviderResult.fail(exc.code, exc.message)
        self.first_token_ms: float | None = None
        self.text = ""

    def events(self) -> Iterator[StreamEvent]:
        """``delta``/``alive`` events as the upstream streams, then one ``result``; logs the step once.

        An LLM step passes the meter first, as ``execute_step`` does: a budget that refuses it
        makes no call, and the streamed result carries its cost.
        """
        started = time.monotonic()
        attempts = 0
        result: ProviderResult | None = self.early
        gate: Gate | None = None
        cancelled = True  # until the stream ends on its own: GeneratorExit skips every other assignment
        clean = StreamRedactor(self.redactor)
        upstream = self._attempts(clean, started)
        try:
            if result is None:
                gate = self.engine.meter.admit(self.user_id, self.provider, self.step.action, self.params, NO_RUN)
                result = gate.refusal
            if result is None:
                for attempt, event in upstream:
                    attempts = attempt
                    if isinstance(event, ProviderResult):
                        result = event
                    else:
                        yield event
                tail = clean.flush()
                if tail:
                    yield StreamEvent("delta", tail)
            cancelled = False
        except Exception as exc:  # a bug here still ends the step with a result and its row, not "cancelled"
            result, cancelled = unexpected_failure(exc), False
        finally:
            upstream.close()  # first: the upstream connection closes before anything is written
            if cancelled:
                result = self._cancelled()
            if gate is not None and result is not None:
                self.engine.meter.settle(gate, result, called=gate.refusal is None)
            called = self.early is None and (gate is None or gate.refusal is None)
            answer = self._finish(result, attempts, time.monotonic() - started if called else 0.0)
        yield StreamEvent("result", answer.to_dict())

    def _attempts(
        self, clean: StreamRedactor, started: float
    ) -> Generator[tuple[int, StreamEvent | ProviderResult], None, None]:
        """Each attempt's events, numbered; a retryable failure is tried again only while no text has arrived."""
        step = self.step
        max_attempts = step.retry.max_attempts if step.retry else DEFAULT_ATTEMPTS
        base = step.retry.backoff_s if step.retry else DEFAULT_BACKOFF_S
        timeout = step.timeout_s or self.provider.default_timeout_s
        context = self.engine.context(self.user_id, timeout, self.run_context, self.redactor, self.provider)
        for attempt in range(1, max_attempts + 1):
            result = None
            for item in self._guarded(context):
                if isinstance(item, ProviderResult):
                    result = item
                    continue
                if item and self.first_token_ms is None:
                    self.first_token_ms = round((time.monotonic() - started) * 1000, 2)
                self.text += item
                shown = clean.feed(item) if item else ""
                yield attempt, StreamEvent("delta", shown) if shown else StreamEvent("alive")
            result = result or ProviderResult.fail("invalid_response", f"provider {step.provider!r} gave no result")
            if result.success or not result.retryable or self.text or attempt >= max_attempts:
                yield attempt, result
                return
            retry_after = result.metadata.get("retry_after")
            time.sleep(backoff_delay(attempt, base, float(retry_after) if retry_after is not None else None))

    def _guarded(self, context: Any) -> Iterator[str | ProviderResult]:
        """The provider's stream, with its failures (a bug included) turned into a failed result."""
        upstream = self.provider.stream(self.step.action, self.params, self.credentials, context)
        try:
            yield from upstream
        except PilotError as exc:
            yield ProviderResult.fail(exc.code, exc.message, retryable=bool(getattr(exc, "retryable", False)))
        except Exception as exc:  # a provider bug must not take the stream down without its log row
            log.error("provider %s raised %s while streaming", self.provider.name, type(exc).__name__)
            yield ProviderResult.fail("provider_error", f"provider {self.provider.name!r} failed unexpectedly")
        finally:
            upstream.close()  # closes the upstream connection when the client left mid-stream

    def _cancelled(self) -> ProviderResult:
        result = ProviderResult.fail(CANCELLED, "the client disconnected; the upstream call was cancelled")
        if self.text:
            result.data = {"text": self.text}  # redacted with the rest before it is logged
        return result

    def _finish(self, result: ProviderResult | None, attempts: int, elapsed: float) -> ProviderResult:
        """Log the step once (with the stream's facts) and count it; the answer, as ``execute_step`` gives it."""
        try:
            result = result or ProviderResult.fail("invalid_response", "the stream gave no result")
            result.latency_ms = round(elapsed * 1000, 2)
            result.metadata["attempts"] = max(attempts, 1)
            logged = self.engine._redacted(result, self.redactor)
            logged.metadata.update(streamed=True, time_to_first_token_ms=self.first_token_ms)
        except Exception as exc:
            logged = unexpected_failure(exc)
        kept = self._log(logged)
        metrics.record_step(
            self.step.provider, self.step.action, "success" if kept.success else "error", kept.latency_ms, attempts or 1
        )
        for key in LOG_ONLY_METADATA:
            kept.metadata.pop(key, None)
        return kept

    def _log(self, result: ProviderResult) -> ProviderResult:
        where = dict(NO_RUN)
        params = self.engine._redacted_params(self.params, self.redactor)
        attempts = int(result.metadata.get("attempts", 1))
        return self.engine._log(self.user_id, self.step, result, params, where, attempts, self.redactor)
