"""How each model vendor is asked for a plan, and where its answer is found.

OpenAI: ``response_format`` ``json_schema`` (not strict: a strict schema cannot leave
params free-form); Groq: ``json_object`` (JSON mode, which every Groq model has); any
server reached through the openai provider's ``base_url`` gets what OpenAI gets.
Anthropic: one tool, ``submit_plan``, whose ``input_schema`` is the plan schema, forced
with ``tool_choice``; its ``tool_use`` input is the plan. Text answers are parsed
defensively (code fences and prose around the object are cut away).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pilot.errors import PilotError

MAX_ANSWER_CHARS = 500_000
TOOL_NAME = "submit_plan"
ANTHROPIC_MAX_TOKENS = 8192
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class UnreadableAnswer(PilotError):
    """The model's answer holds no JSON object."""

    code = "not_json"


@dataclass(frozen=True)
class Vendor:
    """One vendor's protocol for drafting: the action to call and how to ask for structure."""

    provider: str
    action: str
    structured: str  # json_schema, json_object or tool

    def params(self, model: str, system: str, messages: list[dict[str, Any]], schema: dict[str, Any]) -> dict[str, Any]:
        """The chat step's params: the conversation so far and the vendor's way of asking for a plan."""
        params: dict[str, Any] = {"model": model, "system": system, "messages": messages}
        if self.structured == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "pilot_plan", "schema": schema, "strict": False},
            }
        elif self.structured == "json_object":
            params["response_format"] = {"type": "json_object"}
        else:
            params["max_tokens"] = ANTHROPIC_MAX_TOKENS
            params["tools"] = [
                {"name": TOOL_NAME, "description": "Submit the plan for the user's request.", "input_schema": schema}
            ]
            params["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        return params

    def answer(self, data: Any) -> tuple[Any, str]:
        """``(the plan object, its text for the conversation)`` from a successful chat step's data.

        Raises UnreadableAnswer when there is no JSON object in it.
        """
        if isinstance(data, dict) and self.structured == "tool":
            for block in data.get("content") or []:
                if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") == TOOL_NAME:
                    plan = block.get("input")
                    return plan, json.dumps(plan, ensure_ascii=False)
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UnreadableAnswer("the answer is empty")
        return parse_object(text), text


VENDORS: dict[str, Vendor] = {
    "openai": Vendor("openai", "chat_completion", "json_schema"),
    "groq": Vendor("groq", "chat_completion", "json_object"),
    "anthropic": Vendor("anthropic", "messages", "tool"),
}
DEFAULT_ORDER = ("openai", "groq", "anthropic")


def parse_object(text: str) -> Any:
    """The JSON object in ``text``: the whole text, else a fenced block, else from its first ``{`` to its last ``}``."""
    if len(text) > MAX_ANSWER_CHARS:
        raise UnreadableAnswer(f"the answer is longer than {MAX_ANSWER_CHARS} characters")
    candidates = [text.strip(), *(block.strip() for block in _FENCE.findall(text))]
    start, end = text.find("{"), text.rfind("}")
    if -1 < start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    raise UnreadableAnswer("the answer holds no JSON object; answer with the plan as one JSON object only")
