"""Dry runs: a plan's steps walked as a run would, with nothing sent, spent or written.

Steps of a ``pure`` provider (``logic``: no network, no credentials, no side effect) are
executed for real, so conditions and transforms show what they would produce. Every other
step (webhooks, model calls) is rendered and validated against its action's schema and
shown as it would be sent (``would_run``, params redacted), but never executed: later
steps that read its output see ``{"dry_run": true}`` in its place. Pure steps get an HTTP
client that refuses every call, so even a provider that broke its promise cannot reach
the network. No run row and no log row is written; credentials are read only to know
which are missing and to redact their values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pilot.data import store
from pilot.errors import NotFound, PilotError, ValidationError
from pilot.execution.runs import unexpected_failure
from pilot.security.outbound import OutboundClient, OutboundPolicy, OutboundResponse, OutboundStream
from pilot.security.redaction import Redactor
from pilot.security.ssrf import OutboundError
from pilot.security.vault import CredentialDecryptError
from pilot.steps.templating import MissingReference, TemplateError, compile_expression, evaluate, render, truthy

if TYPE_CHECKING:
    from execution_engine import ExecutionEngine
    from pilot.steps.plan_schema import Step
    from provider_registry import Provider

SKIPPED_OUTPUT: dict[str, Any] = {"dry_run": True}


class DryRunRefused(OutboundError):
    """A dry run tried to reach the network."""

    code = "dry_run_no_network"


class NoNetwork(OutboundClient):
    """An outbound client that refuses every call (what pure steps get in a dry run)."""

    def __init__(self) -> None:
        super().__init__(OutboundPolicy.from_entries(()))

    def request(self, method: str, url: str, **kwargs: Any) -> OutboundResponse:
        raise DryRunRefused("a dry run makes no network call")

    def stream(self, method: str, url: str, **kwargs: Any) -> OutboundStream:
        raise DryRunRefused("a dry run makes no network call")


def dry_run_plan(engine: ExecutionEngine, user_id: str, plan_id: int, input_: dict[str, Any]) -> dict[str, Any]:
    """A dry run of ``user_id``'s plan ``plan_id`` with ``input_``; NotFound when it is not theirs."""
    with engine.db.transaction(user_id) as cur:
        plan = store.get_plan(cur, user_id, plan_id)
    if plan is None:
        raise NotFound(f"plan {plan_id} not found")
    return {"plan_id": plan_id, **dry_run(engine, user_id, plan["steps"], input_)}


def dry_run(
    engine: ExecutionEngine, user_id: str, steps: list[dict[str, Any]], input_: dict[str, Any]
) -> dict[str, Any]:
    """``{"dry_run": true, "status", "error", "steps": [...]}`` for ``steps`` run dry in order.

    Each step's outcome has ``status``: ``success``/``error`` (a pure step, executed, with its
    ``result``), ``would_run`` (a step with effects: its rendered, redacted ``params`` and any
    ``missing_credentials``), ``skipped`` (its ``when`` was false), ``unresolved`` (its params
    read an output this dry run did not produce) or ``error`` (params that do not render or
    validate). Like a run, the walk stops at an error unless the step continues on error.
    """
    context: dict[str, Any] = {"steps": {}, "step_results": {}, "input": input_}
    outcomes: list[dict[str, Any]] = []
    status, error = "success", None
    for index, step in enumerate(steps):
        outcome, output = DryStep(engine, user_id, step, context).outcome()
        outcomes.append({"index": index, "id": step.get("id"), **outcome})
        if output is not None:
            context["step_results"][str(index)] = output
            if step.get("id"):
                context["steps"][step["id"]] = output
        if outcome["status"] == "error" and not step.get("continue_on_error"):
            status, error = "error", f"step {step.get('id') or index}: {outcome['error']['message']}"
            break
    return {"dry_run": True, "status": status, "error": error, "steps": outcomes}


class DryStep:
    """One step of a dry run: ``outcome()`` is ``(what to report, what later steps see or None)``."""

    def __init__(self, engine: ExecutionEngine, user_id: str, step: dict[str, Any], context: dict[str, Any]) -> None:
        self.engine, self.user_id, self.raw, self.context = engine, user_id, step, context
        self.redactor = Redactor()

    def outcome(self) -> tuple[dict[str, Any], Any]:
        head = {"provider": self.raw.get("provider"), "action": self.raw.get("action")}
        try:
            if self.raw.get("when") and not truthy(evaluate(self.raw["when"], self.context)):
                return {**head, "status": "skipped", "reason": "its when condition is false"}, None
            step, provider = self.engine.validate_step(self.raw)
            params = render(step.params, self.context)
            self.engine.registry.validate_params(step.provider, step.action, params)
        except MissingReference as exc:
            if not self._reads_a_skipped_output(str((exc.details or {}).get("expression", ""))):
                return {**head, "status": "error", "error": _error(exc)}, None
            message = f"{exc.message} (it reads the output of a step this dry run did not execute)"
            return {**head, "status": "unresolved", "error": {"code": exc.code, "message": message}}, SKIPPED_OUTPUT
        except (TemplateError, ValidationError) as exc:
            return {**head, "status": "error", "error": _error(exc)}, None
        if provider.pure:
            return self._execute(head, step, provider, params)
        return self._describe(head, provider, params), SKIPPED_OUTPUT

    def _reads_a_skipped_output(self, expression: str) -> bool:
        """Whether ``expression`` names the output of a step this dry run did not execute."""
        skipped = {
            key
            for scope in ("steps", "step_results")
            for key, output in self.context[scope].items()
            if output is SKIPPED_OUTPUT
        }
        names: set[str] = set()
        stack = [compile_expression(expression).parsed]
        while stack:  # the expression's syntax tree: every field name it reads
            node = stack.pop()
            if node.get("type") == "field":
                names.add(str(node.get("value")))
            stack.extend(child for child in node.get("children", []) if isinstance(child, dict))
        return bool(names & skipped) and bool(names & {"steps", "step_results"})

    def _execute(self, head: dict[str, Any], step: Step, provider: Provider, params: Any) -> tuple[dict[str, Any], Any]:
        context = self.engine.context(self.user_id, 5.0, self.context, self.redactor)
        context.http = NoNetwork()
        try:
            result = provider.execute(step.action, params, {}, context)
        except Exception as exc:  # a provider bug is this step's failure, as in a run
            result = unexpected_failure(exc)
        output = self.redactor.value(result.to_dict())
        status = "success" if result.success else "error"
        reported = {**head, "status": status, "params": self.redactor.value(params), "result": output}
        if not result.success:
            reported["error"] = output["error"]
        return reported, output

    def _describe(self, head: dict[str, Any], provider: Provider, params: Any) -> dict[str, Any]:
        """What a step with effects would send, redacted by the user's credential values too."""
        described: dict[str, Any] = {**head, "status": "would_run"}
        credentials: dict[str, str] = {}
        try:
            if provider.credential_types:
                credentials = self.engine.credentials_for(self.user_id, provider)
        except CredentialDecryptError as exc:
            described["credentials_unreadable"] = exc.message
        self.redactor = Redactor(provider.secret_values(credentials))
        described["params"] = self.redactor.value(params)
        missing = [name for name in provider.required_credentials() if name not in credentials]
        if missing:
            described["missing_credentials"] = missing
        return described


def _error(exc: PilotError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "details": exc.details}
