"""GET /api/openapi.json: every route described, schemas valid, and real responses matching them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator

from pilot.application import PilotApp
from pilot.http import openapi
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


def test_every_route_is_described_and_no_description_is_stale(app: PilotApp) -> None:
    assert openapi.undocumented(app) == []
    assert openapi.stale(app) == []


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
        "schema": {"type": "integer", "minimum": 1},
    }


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


def test_security_is_bearer_and_public_endpoints_are_marked(document: dict[str, Any]) -> None:
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
