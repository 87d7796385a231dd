"""``@validate``: a view's request and response models, checked on the way in and published in the OpenAPI document.

A view declares what it takes and answers once::

    @bp.post("/plans")
    @validate(body=PlanBody, responses={201: Answer("the plan", Plan)}, summary="Create a plan", tag="plans")
    @idempotent
    def create(body: PlanBody) -> ...

The wrapper parses the JSON body into ``body`` and the query string into ``query``
(pydantic models) and passes them to the view as keyword arguments; invalid input is a
400 ``invalid_request`` whose ``details`` is pydantic's errors, one per problem:
``[{"loc": ["body", "steps", 0, "provider"], "msg": "...", "field": "steps[0].provider"}]``
(``loc`` starts with where the value was: ``body``, ``query``, ``path`` or ``header``;
``field`` is the same place as the message writes it). The metadata stays on the view
(``spec_of``), and ``pilot.http.openapi`` builds ``/api/openapi.json`` from it and
``app.url_map``: what is validated and what is documented are the same models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel

from pilot.http.common import json_body, optional_json_body
from pilot.steps.plan_schema import parse

F = TypeVar("F", bound=Callable[..., Any])
SPEC_ATTRIBUTE = "pilot_api_spec"
IDEMPOTENT_ATTRIBUTE = "pilot_idempotent"


@dataclass(frozen=True)
class Answer:
    """One documented response: what it means, and its body by media type (a model, a type or a JSON Schema)."""

    description: str
    model: Any = None
    media_type: str = "application/json"
    alternatives: Mapping[str, Any] = field(default_factory=dict)  # other media types of the same status
    headers: Mapping[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiSpec:
    """What ``@validate`` records on a view; ``pilot.http.openapi`` turns it into an Operation Object."""

    operation_id: str
    summary: str
    tag: str
    responses: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    auth: bool = True
    idempotent: bool = False
    description: str | None = None
    headers: tuple[tuple[str, dict[str, Any], str], ...] = ()  # request headers the view reads (documented only)


def query_dict() -> dict[str, str]:
    """The query string as a flat dict (the first value of a repeated name)."""
    return request.args.to_dict()


def validate(
    *,
    summary: str,
    tag: str,
    responses: Mapping[int, Answer],
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    auth: bool = True,
    operation_id: str | None = None,
    description: str | None = None,
    headers: tuple[tuple[str, dict[str, Any], str], ...] = (),
) -> Callable[[F], F]:
    """Check ``body`` and ``query`` before the view runs and record the operation for the OpenAPI document."""

    def decorate(view: F) -> F:
        spec = ApiSpec(
            operation_id=operation_id or _camel(view.__name__),
            summary=summary,
            tag=tag,
            responses=responses,
            body=body,
            body_required=body_required,
            query=query,
            errors=errors,
            auth=auth,
            idempotent=bool(getattr(view, IDEMPOTENT_ATTRIBUTE, False)),
            description=description,
            headers=headers,
        )

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if query is not None:
                kwargs["query"] = parse(query, query_dict(), "query")
            if body is not None:
                payload = json_body() if body_required else optional_json_body()
                kwargs["body"] = parse(body, payload)
            return view(*args, **kwargs)

        setattr(wrapper, SPEC_ATTRIBUTE, spec)
        return wrapper  # type: ignore[return-value]

    return decorate


def spec_of(view: Callable[..., Any] | None) -> ApiSpec | None:
    """The ``ApiSpec`` ``@validate`` recorded on ``view``, if any."""
    spec = getattr(view, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, ApiSpec) else None


def _camel(name: str) -> str:
    head, *rest = name.strip("_").split("_")
    return head + "".join(part.title() for part in rest)
