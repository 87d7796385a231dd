"""Pure data steps: no network, no credentials. Expressions are JMESPath (see ``templating``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pilot.steps.templating import ExpressionTooLarge, TemplateError, evaluate, truthy
from provider_registry import ActionSpec, CredentialSpec, ExecutionContext, Provider, ProviderResult

_EXPRESSION = {"type": "string", "minLength": 1, "description": "JMESPath expression"}
_DATA = {"description": "value to evaluate over; default the run context {steps, step_results, input}"}


class LogicProvider(Provider):
    """``transform`` returns its (already rendered) template; ``condition`` and ``extract`` evaluate JMESPath."""

    name = "logic"
    description = "Transform, test and extract data between steps (no network, no credentials)"
    pure = True  # dry runs evaluate logic steps for real
    actions: ClassVar[dict[str, ActionSpec]] = {
        "transform": ActionSpec(
            "Return `template` (any JSON value, rendered by the engine) as data",
            {"type": "object", "properties": {"template": {}}, "required": ["template"], "additionalProperties": False},
        ),
        "condition": ActionSpec(
            "Evaluate `expression` over `data` (or the run context); data is {result: bool} by JMESPath truthiness",
            {
                "type": "object",
                "properties": {"expression": _EXPRESSION, "data": _DATA},
                "required": ["expression"],
                "additionalProperties": False,
            },
        ),
        "extract": ActionSpec(
            "Evaluate `expression` over `data` (or the run context); data is the value found (null if none)",
            {
                "type": "object",
                "properties": {"expression": _EXPRESSION, "data": _DATA},
                "required": ["expression"],
                "additionalProperties": False,
            },
        ),
    }
    credential_types: ClassVar[dict[str, CredentialSpec]] = {}

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        if action == "transform":
            return ProviderResult.ok(params.get("template"))
        if action not in ("condition", "extract"):
            return self.unknown_action(action)
        data = params.get("data", context.run_context)
        try:
            value = evaluate(params["expression"], data)
        except ExpressionTooLarge as exc:
            return ProviderResult.fail(exc.code, exc.message)
        except TemplateError as exc:
            return ProviderResult.fail("expression_error", exc.message)
        return ProviderResult.ok({"result": truthy(value)} if action == "condition" else value)

    def test_credentials(self, credentials: dict[str, str], context: ExecutionContext) -> ProviderResult:
        """Nothing to check: logic needs no credentials."""
        return ProviderResult.ok({"valid": True})
