"""GET /api/openapi.json: every route described, schemas valid, and real responses matching them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field

from pilot.application import PilotApp
from pilot.http import openapi
from pilot.http.validation import Answer, validate
from providers import registry
from tests.conftest import make_app, resp_json

SPEC_ENDPOINTS = [
    "GET /api/health",
    "GET /api/providers",
    "GET /api/providers/{name}",
    "POST /api/provider-credentials/{provider}",
    "GET /api/provider-credentials",
    "GET /api/provider-credentials/{provider}",
    "DELETE /api/provider-credentials/{provider}",
    "DELETE /api/provider-credentials/{provider}/{type_}",
    "POST /api/provider-credentials/{name}/test",
    "POST /api/plans",
    "GET /api/plans",
    "GET /api/plans/{plan_id}",
    "PUT /api/plans/{plan_id}",
    "PATCH /api/plans/{plan_id}",
    "DELETE /api/plans/{plan_id}",
    "POST /api/plans/{plan_id}/run",
    "GET /api/plans/{plan_id}/runs",
    "GET /api/runs/{run_id}",
    "POST /api/plans/{plan_id}/pause",
    "POST /api/plans/{plan_id}/resume",
    "POST /api/execute-step",
    "GET /api/logs",
    "GET /api/metrics/providers",
    "GET /api/metrics/errors",
    "GET /api/scheduler/jobs",
    "GET /metrics",
    "GET /api/openapi.json",
    "POST /api/plans/draft",
]


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.is_json
    return resp_json(response)


def check(document: dict[str, Any], schema_name: str, instance: Any) -> None:
    """Validate ``instance`` against ``#/components/schemas/<schema_name>`` of the served document."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    errors = sorted(Draft202012Validator(root).iter_errors(instance), key=str)
    assert not errors, f"{schema_name}: {errors[0].message} at {list(errors[0].absolute_path)}"


def test_every_route_is_described(app: PilotApp) -> None:
    assert openapi.undocumented(app) == []


def test_the_document_has_exactly_the_routes_and_methods_the_url_map_serves(
    document: dict[str, Any], app: PilotApp
) -> None:
    """Generated from ``app.url_map``: every rule with its methods, nothing more (HEAD and OPTIONS aside)."""
    served: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        served |= {f"{method} {path}" for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    instances = document[openapi.INSTANCES]
    templates = {path: ops for path, ops in document["paths"].items() if path not in instances}
    documented = {f"{method.upper()} {path}" for path, ops in templates.items() for method in ops}
    assert documented == served
    for path, ops in templates.items():
        for method, operation in ops.items():
            assert "x-undocumented" not in operation and operation["responses"], f"{method} {path}"
    assert instances  # a provider's own credentials path: its template's methods
    for path, template in instances.items():
        assert set(document["paths"][path]) == set(document["paths"][template]), path


def test_each_providers_credentials_path_documents_what_it_stores(document: dict[str, Any]) -> None:
    """The credential types and values a provider takes depend on the provider: each has a path of its own."""

    def body(provider: str) -> dict[str, Any]:
        return {
            "$ref": f"#/paths/~1api~1provider-credentials~1{provider}/post/requestBody/content/application~1json/schema"
        }

    root = {"paths": document["paths"], "components": document["components"]}

    def valid(provider: str, credentials: dict[str, str]) -> bool:
        return Draft202012Validator({**body(provider), **root}).is_valid({"credentials": credentials})

    assert valid("webhook", {"header:X-Api-Key": "k1"}) and not valid("groq", {"header:X-Api-Key": "k1"})
    assert not valid("webhook", {"header:Host": "evil"}) and not valid("webhook", {"basic_auth": "no-colon"})
    assert valid("openai", {"api_key": "sk-1", "base_url": "http://127.0.0.1:1"})
    generic = document["paths"]["/api/provider-credentials/{provider}"]["post"]["requestBody"]["content"]
    every = Draft202012Validator({**generic["application/json"]["schema"], **root})
    assert every.is_valid({"credentials": {"api_key": "k"}})
    assert not every.is_valid({"credentials": {"header:X-Api-Key": "k1"}})  # not every provider takes it


def test_options_advertises_only_the_methods_a_path_has(client: FlaskClient, document: dict[str, Any]) -> None:
    """``/provider-credentials/{name}/test`` is POST only: no credential type named test shadows it for DELETE."""
    answer = client.options("/api/provider-credentials/openai/test")
    assert set(answer.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert set(document["paths"]["/api/provider-credentials/{name}/test"]) == {"post"}
    assert client.delete("/api/provider-credentials/openai/test?user_id=u").status_code == 405
    assert set(client.options("/api/provider-credentials/openai/api_key").headers["Allow"].split(", ")) == {
        "DELETE",
        "OPTIONS",
    }


def test_a_new_route_without_a_description_is_reported(session_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(session_db, tmp_path, (fernet_key,))
    app.add_url_rule("/api/widgets/<int:widget_id>", "widgets", lambda widget_id: "", methods=["GET", "POST"])
    assert openapi.undocumented(app) == ["GET /api/widgets/{widget_id}", "POST /api/widgets/{widget_id}"]
    operation = openapi.build_document(app)["paths"]["/api/widgets/{widget_id}"]["get"]
    assert operation["x-undocumented"] is True
    assert operation["parameters"][0] == {
        "name": "widget_id",
        "in": "path",
        "required": True,
        "description": "widget_id",
        "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    }
    app.db.close()


class WidgetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=1, le=10)


class WidgetQuery(BaseModel):
    colour: Literal["red", "blue"] | None = None


def test_a_route_under_validate_is_checked_and_documented_from_its_models(
    session_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """How to add a route (docs/architecture.md): one decorator gives validation and the document both."""
    seen: list[tuple[int, str | None]] = []

    @validate(
        summary="Make a widget",
        tag="widgets",
        body=WidgetBody,
        query=WidgetQuery,
        responses={201: Answer("made", WidgetBody)},
        auth=False,
    )
    def make_widget(body: WidgetBody, query: WidgetQuery) -> tuple[str, int]:
        seen.append((body.size, query.colour))
        return "", 201

    app = make_app(session_db, tmp_path, (fernet_key,))
    app.add_url_rule("/api/widgets", "widgets", make_widget, methods=["POST"])
    client = app.test_client()
    try:
        assert client.post("/api/widgets?colour=red", json={"size": 3}).status_code == 201 and seen == [(3, "red")]
        refused = client.post("/api/widgets?colour=green", json={"size": 11, "extra": 1})
        assert refused.status_code == 400
        error = resp_json(refused)["error"]
        assert error["code"] == "invalid_request" and error["message"].startswith("query.colour: ")
        assert [(item["loc"], item["field"]) for item in error["details"]] == [(["query", "colour"], "query.colour")]
        body_error = resp_json(client.post("/api/widgets", json={"size": 11, "extra": 1}))["error"]
        assert [item["loc"] for item in body_error["details"]] == [["body", "size"], ["body", "extra"]]
        assert all(set(item) == {"loc", "msg", "field"} and item["msg"] for item in body_error["details"])
        document = resp_json(client.get("/api/openapi.json"))
    finally:
        app.db.close()
    operation = document["paths"]["/api/widgets"]["post"]
    assert operation["operationId"] == "makeWidget" and operation["tags"] == ["widgets"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WidgetBody"
    }
    assert document["components"]["schemas"]["WidgetBody"]["additionalProperties"] is False
    colour = next(p for p in operation["parameters"] if p.get("name") == "colour")
    assert colour["in"] == "query" and colour["schema"]["enum"] == ["red", "blue"]
    assert set(operation["responses"]) >= {"201", "400", "413", "415"}


def test_document_covers_the_spec_endpoints(document: dict[str, Any]) -> None:
    served = {f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops}
    assert set(SPEC_ENDPOINTS) <= served
    assert document["openapi"] == "3.1.0"
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_every_schema_is_valid_json_schema(document: dict[str, Any]) -> None:
    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert name.replace(".", "").replace("_", "").isalnum(), name


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    for reference in set(refs):
        assert reference.startswith("#/components/"), reference
        node: Any = document
        for part in reference[2:].split("/"):
            node = node[part]


def test_dev_mode_documents_no_bearer_scheme(document: dict[str, Any]) -> None:
    """In AUTH_MODE=dev callers name user_id; a bearer scheme would promise a check the server does not make."""
    assert "securitySchemes" not in document["components"] and "security" not in document
    plans = document["paths"]["/api/plans"]["post"]
    assert "401" not in plans["responses"] and {"400", "403", "413", "415"} <= set(plans["responses"])


def test_token_mode_security_is_bearer_and_public_endpoints_are_marked(
    session_db: str, tmp_path: Path, fernet_key: str
) -> None:
    app = make_app(session_db, tmp_path, (fernet_key,), auth_mode="token", jwt_secret="s" * 40)
    try:
        document = resp_json(app.test_client().get("/api/openapi.json"))
    finally:
        app.db.close()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    assert document["security"] == [{"bearerAuth": []}]
    paths = document["paths"]
    for public in ("/api/health", "/api/providers", "/metrics", "/api/openapi.json"):
        assert paths[public]["get"]["security"] == []
    plans = paths["/api/plans"]["post"]
    assert "security" not in plans and {"401", "403", "400", "413", "415"} <= set(plans["responses"])
    assert plans["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}


def test_provider_action_params_come_from_the_registry(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in registry.names():
        for action, spec in registry.get(name).describe()["actions"].items():
            documented = dict(schemas[f"{name}.{action}.params"])
            assert documented.pop("description") == spec["description"]
            assert documented == {k: v for k, v in spec["params_schema"].items() if k != "description"}
    variants = {variant["title"] for variant in schemas["ProviderStep"]["oneOf"]}
    assert {"openai.chat_completion", "logic.transform", "webhook.request"} <= variants
    check(document, "ProviderStep", {"provider": "logic", "action": "transform", "params": {"template": 1}})
    with pytest.raises(AssertionError):
        check(document, "ProviderStep", {"provider": "logic", "action": "transform", "params": {"nope": 1}})


def test_plan_schemas_come_from_the_validating_models(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"PlanBody", "PlanPatch", "Step", "Schedule", "RetryPolicy"} <= set(schemas)
    assert schemas["PlanBody"]["required"] == ["name"] and "required" not in schemas["PlanPatch"]
    step = {"provider": "logic", "action": "transform", "params": {"template": 1}}
    check(document, "PlanBody", {"name": "x", "steps": [step]})
    with pytest.raises(AssertionError):  # as the server: logic.transform needs its template (issue 8 item 3)
        check(document, "PlanBody", {"name": "x", "steps": [{"provider": "logic", "action": "transform"}]})
    with pytest.raises(AssertionError):
        check(document, "PlanBody", {"name": "x", "unknown": 1})


def test_real_responses_match_their_documented_schemas(
    client: FlaskClient, document: dict[str, Any], user: str
) -> None:
    check(document, "Health", resp_json(client.get("/api/health")))
    check(document, "ProviderList", resp_json(client.get("/api/providers")))
    check(document, "ProviderDescription", resp_json(client.get("/api/providers/webhook")))
    stored = client.post(
        "/api/provider-credentials/openai", json={"user_id": user, "credentials": {"api_key": "sk-test-000000000001"}}
    )
    check(document, "CredentialList", resp_json(stored))
    check(document, "CredentialList", resp_json(client.get(f"/api/provider-credentials?user_id={user}")))
    step = {"id": "t", "provider": "logic", "action": "transform", "params": {"template": {"x": 1}}}
    plan = client.post("/api/plans", json={"user_id": user, "name": "doc", "steps": [step]})
    assert plan.status_code == 201
    check(document, "Plan", resp_json(plan))
    check(document, "PlanList", resp_json(client.get(f"/api/plans?user_id={user}")))
    run = client.post(f"/api/plans/{resp_json(plan)['id']}/run?wait=true", json={"user_id": user})
    assert run.status_code == 200 and resp_json(run)["status"] == "success"
    check(document, "RunWithLogs", resp_json(run))
    check(document, "RunList", resp_json(client.get(f"/api/plans/{resp_json(plan)['id']}/runs?user_id={user}")))
    executed = client.post("/api/execute-step", json={"user_id": user, "step": step})
    check(document, "ProviderResult", resp_json(executed))
    check(document, "LogList", resp_json(client.get(f"/api/logs?user_id={user}")))
    check(document, "ProviderMetrics", resp_json(client.get(f"/api/metrics/providers?user_id={user}")))
    check(document, "ErrorTrends", resp_json(client.get(f"/api/metrics/errors?user_id={user}")))
    scheduled = client.post(
        "/api/plans", json={"user_id": user, "name": "cron", "steps": [step], "schedule": {"cron": "0 9 * * 1"}}
    )
    jobs = resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))
    assert [job["plan_id"] for job in jobs["jobs"]] == [resp_json(scheduled)["id"]]
    check(document, "SchedulerJobs", jobs)
    check(
        document,
        "Plan",
        resp_json(client.post(f"/api/plans/{resp_json(scheduled)['id']}/pause", json={"user_id": user})),
    )
    check(document, "Error", resp_json(client.get(f"/api/plans/999999999?user_id={user}")))
    check(document, "Error", resp_json(client.post("/api/plans", json={"user_id": user})))
