"""What the planner tells the model: Pilot's step format, read from the registry, never a hand-kept list.

``plan_schema`` is the JSON Schema of an answer (a plan's name, steps, optional schedule),
with one step variant per provider action whose ``params`` are that action's own schema;
vendors that take a schema (OpenAI ``json_schema``, Anthropic tool ``input_schema``) get it
as such. ``system_prompt`` describes the same to the model in words: the providers and
actions with their descriptions and params schemas, the credential *types* the user has
stored (the caller passes names only; no value ever reaches this module), the ``{{ }}``
reference syntax and a worked example.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pilot.steps.plan_schema import MAX_STEPS

if TYPE_CHECKING:
    from provider_registry import ProviderRegistry

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
SCHEDULE_SCHEMA: dict[str, Any] = {
    "description": "only when the request asks for a schedule: cron (5 fields, crontab(5)) with an IANA "
    "timezone, or an interval in seconds",
    "anyOf": [
        {
            "type": "object",
            "properties": {"cron": {"type": "string"}, "timezone": {"type": "string"}},
            "required": ["cron"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"interval_seconds": {"type": "integer", "minimum": 1}},
            "required": ["interval_seconds"],
            "additionalProperties": False,
        },
    ],
}

EXAMPLE_REQUEST = (
    "Every weekday at 9:00 Berlin time, fetch https://api.example.com/news.json, summarise the headlines in "
    "three bullet points and post the summary to https://hooks.example.com/team with our stored token."
)
EXAMPLE_PLAN: dict[str, Any] = {
    "name": "Weekday news summary",
    "schedule": {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
    "steps": [
        {
            "id": "fetch",
            "provider": "webhook",
            "action": "request",
            "params": {"url": "https://api.example.com/news.json", "method": "GET"},
        },
        {
            "id": "has_news",
            "provider": "logic",
            "action": "condition",
            "params": {"expression": "length(steps.fetch.data.json.headlines) > `0`"},
        },
        {
            "id": "summary",
            "provider": "openai",
            "action": "chat_completion",
            "when": "steps.has_news.data.result",
            "params": {
                "system": "You write short, factual summaries.",
                "prompt": "Summarise these headlines in three bullet points: {{ steps.fetch.data.json.headlines }}",
            },
        },
        {
            "id": "post",
            "provider": "webhook",
            "action": "request",
            "when": "steps.has_news.data.result",
            "params": {
                "url": "https://hooks.example.com/team",
                "json": {"text": "{{ steps.summary.data.text }}"},
                "auth": "bearer_token",
            },
        },
    ],
}


def plan_schema(registry: ProviderRegistry) -> dict[str, Any]:
    """The JSON Schema of an answer: ``{name, steps, schedule?}``, each step one registered provider action."""
    variants = []
    for provider_name in registry.names():
        provider = registry.get(provider_name)
        for action, spec in provider.actions.items():
            variants.append(
                {
                    "type": "object",
                    "description": f"{provider_name}.{action}: {spec.description}",
                    "properties": {
                        "id": {"type": "string", "pattern": STEP_ID_PATTERN},
                        "provider": {"enum": [provider_name]},
                        "action": {"enum": [action]},
                        "params": spec.params_schema,
                        "when": {"type": "string", "description": "JMESPath condition; the step is skipped if falsy"},
                        "continue_on_error": {"type": "boolean"},
                    },
                    "required": ["id", "provider", "action", "params"],
                    "additionalProperties": False,
                }
            )
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "steps": {"type": "array", "items": {"anyOf": variants}, "minItems": 1, "maxItems": MAX_STEPS},
            "schedule": SCHEDULE_SCHEMA,
        },
        "required": ["name", "steps"],
        "additionalProperties": False,
    }


def _catalogue(registry: ProviderRegistry) -> dict[str, Any]:
    """Providers as the model needs them: what each does, its actions' params schemas, its credential types."""
    catalogue: dict[str, Any] = {}
    for name in registry.names():
        provider = registry.get(name)
        catalogue[name] = {
            "description": provider.description,
            "credential_types": sorted(provider.credential_types),
            "actions": {
                action: {"description": spec.description, "params": spec.params_schema}
                for action, spec in provider.actions.items()
            },
        }
    return catalogue


def _stored(credential_types: dict[str, list[str]]) -> str:
    if not credential_types:
        return "none"
    return "; ".join(f"{provider}: {', '.join(sorted(types))}" for provider, types in sorted(credential_types.items()))


def system_prompt(registry: ProviderRegistry, credential_types: dict[str, list[str]]) -> str:
    """The planner's instructions; ``credential_types`` maps provider → the type *names* the user stored."""
    return "\n\n".join(
        [
            "You are the planner of Pilot, an automation server. Turn the user's request into a plan: an "
            "ordered list of steps, each calling one provider action. Answer with exactly one JSON object and "
            'nothing else: {"name": "...", "steps": [...], "schedule": {...}}. "schedule" is optional: give it '
            'only when the request asks for one, as {"cron": "m h dom mon dow", "timezone": "Area/City"} '
            '(crontab(5)) or {"interval_seconds": N}.',
            'A step is {"id": "snake_case_id", "provider": "...", "action": "...", "params": {...}}, optionally '
            'with "when" (a JMESPath condition; the step is skipped when it is falsy) and "continue_on_error". '
            "Params must satisfy the action's JSON Schema below. Use only the providers and actions listed.",
            "References between steps: a string param may contain {{ <JMESPath expression> }}, evaluated over "
            '{"steps": {<step id>: result}, "step_results": {"<index>": result}, "input": {...}} where a result '
            'is {"success", "data", "error", "metadata"}. The text of a chat step "ask" is '
            "{{ steps.ask.data.text }}; a webhook step's parsed JSON reply is {{ steps.hook.data.json }}; a run's "
            "input is {{ input.name }}. A param that is exactly one {{ }} keeps the value's type. There is no other "
            'template syntax ({% %}, Python and Jinja filters do not exist). A "when" is a bare JMESPath '
            "expression without braces.",
            "Secrets never go in params. Credentials the user has stored (types only; you never see values): "
            f"{_stored(credential_types)}. A webhook step sends a stored webhook credential by naming it in "
            '"auth" ("bearer_token", "basic_auth" or "header:<Name>"). Prefer model providers the user has an '
            "api_key for.",
            "Providers and their actions (params are JSON Schemas, draft 2020-12):\n"
            + json.dumps(_catalogue(registry), separators=(",", ":")),
            f"Example. Request: {EXAMPLE_REQUEST}\nPlan: {json.dumps(EXAMPLE_PLAN)}",
        ]
    )


def repair_message(errors: list[dict[str, Any]]) -> str:
    """What the model is told when its plan failed validation: the errors, and to answer the whole plan again."""
    return (
        "That plan is not valid. Pilot's validation reported:\n"
        + json.dumps(errors, ensure_ascii=False)
        + "\nAnswer with the whole corrected plan as one JSON object, nothing else."
    )
