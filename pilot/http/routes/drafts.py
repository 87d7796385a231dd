"""``POST /api/plans/draft``: a plan drafted from a prompt by the user's own model, validated, optionally saved."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ConfigDict, Field

from pilot.application import current_pilot
from pilot.execution.dry_run import dry_run
from pilot.http.auth import current_user_id
from pilot.http.common import serialize
from pilot.http.idempotency import idempotent
from pilot.http.models import DraftAnswer, UserId
from pilot.http.validation import Answer, validate
from pilot.planner.drafting import DraftRequest, Planner, save_draft

bp = Blueprint("drafts", __name__, url_prefix="/api/plans")


class DraftBody(BaseModel):
    """The request: a prompt, and optionally which model, a name, whether to save and whether to dry-run."""

    model_config = ConfigDict(extra="forbid")
    user_id: UserId = None
    prompt: str = Field(min_length=1, max_length=20_000)
    provider: Literal["openai", "groq", "anthropic"] | None = None
    model: str | None = Field(None, min_length=1, max_length=200)
    name: str | None = Field(None, min_length=1, max_length=200)
    save: bool = Field(False, strict=True)
    dry_run: bool = Field(False, strict=True)
    input: dict[str, Any] = Field(default_factory=dict)


@bp.post("/draft")
@validate(
    summary="Draft a plan from a prompt with the caller's own model (validated, repaired, disabled)",
    tag="plans",
    body=DraftBody,
    responses={
        200: Answer("a valid draft, not stored", DraftAnswer),
        201: Answer("saved (save: true): plan is the stored row", DraftAnswer),
    },
    errors=(409, 422, 502),
    operation_id="draftPlan",
)
@idempotent
def draft(body: DraftBody) -> tuple[Response, int]:
    user_id = current_user_id()
    engine = current_pilot().engine
    request = DraftRequest(prompt=body.prompt, provider=body.provider, model=body.model, name=body.name)
    drafted = Planner(engine).draft(user_id, request)
    answer: dict[str, Any] = {
        "plan": drafted.plan,
        "provider": drafted.provider,
        "model": drafted.model,
        "attempts": drafted.attempts,
        "usage": drafted.usage,
        "saved": body.save,
    }
    if body.dry_run:  # logic steps evaluated, nothing else run: the draft is untrusted input
        answer["dry_run"] = dry_run(engine, user_id, drafted.plan["steps"], body.input)
    if not body.save:
        return jsonify(answer), 200
    row = serialize(save_draft(engine, user_id, drafted))
    answer["plan"] = row
    response = jsonify(answer)
    response.headers["Location"] = f"/api/plans/{row['id']}"
    return response, 201
