"""JWT audience, issuer and subject checks (issue 7, item 8), with real tokens.

HS256 tokens are signed with a test secret; RS256 tokens with a fresh RSA key whose
public half is served as a JWKS by a real HTTP server on 127.0.0.1, as Auth0 and
Supabase serve theirs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer

from pilot.application import PilotApp
from tests.conftest import make_app, resp_json

SECRET = "auth-test-secret-that-is-long-enough-for-hs256"


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time()) + 300, **claims}, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_app_factory(session_db: str, tmp_path: Path, fernet_key: str) -> Iterator[Any]:
    apps: list[PilotApp] = []

    def build(**overrides: Any) -> FlaskClient:
        app = make_app(session_db, tmp_path, (fernet_key,), auth_mode="token", **overrides)
        apps.append(app)
        return app.test_client()

    yield build
    for app in apps:
        app.db.close()


def plans_as(client: FlaskClient, token: str) -> Any:
    return client.get("/api/plans", headers=bearer(token))


def test_supabase_token_is_accepted_when_the_audience_is_configured(token_app_factory: Any, user: str) -> None:
    client = token_app_factory(jwt_secret=SECRET, jwt_audience=("authenticated",))
    response = plans_as(client, hs256({"sub": user, "aud": "authenticated", "role": "authenticated"}))
    assert response.status_code == 200, response.get_data(as_text=True)
    created = client.post(
        "/api/plans", json={"name": "mine"}, headers=bearer(hs256({"sub": user, "aud": "authenticated"}))
    )
    assert created.status_code == 201 and resp_json(created)["user_id"] == user


@pytest.mark.parametrize(
    "aud",
    [["authenticated", "other-api"], ["other-api", "authenticated"]],
)
def test_a_list_audience_is_accepted_when_it_contains_ours(token_app_factory: Any, user: str, aud: list[str]) -> None:
    client = token_app_factory(jwt_secret=SECRET, jwt_audience=("authenticated",))
    assert plans_as(client, hs256({"sub": user, "aud": aud})).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [{"aud": "anon"}, {"aud": ["anon", "service"]}, {"aud": "authenticated-not"}, {}],
    ids=["other", "other-list", "prefix", "missing"],
)
def test_a_token_for_another_audience_or_none_is_401_when_one_is_configured(
    token_app_factory: Any, user: str, claims: dict[str, Any]
) -> None:
    client = token_app_factory(jwt_secret=SECRET, jwt_audience=("authenticated",))
    response = plans_as(client, hs256({"sub": user, **claims}))
    assert response.status_code == 401 and resp_json(response)["error"]["code"] == "unauthorized"


def test_without_jwt_audience_a_token_that_names_an_audience_is_refused_and_says_why(
    token_app_factory: Any, user: str
) -> None:
    """Accepting any audience would let a token minted for another service of the same issuer in."""
    client = token_app_factory(jwt_secret=SECRET)
    response = plans_as(client, hs256({"sub": user, "aud": "authenticated"}))
    assert response.status_code == 401
    assert "JWT_AUDIENCE" in resp_json(response)["error"]["message"]
    assert plans_as(client, hs256({"sub": user})).status_code == 200  # no aud: as before


def test_jwt_issuer_is_checked_when_set(token_app_factory: Any, user: str) -> None:
    issuer = "https://project.supabase.co/auth/v1"
    client = token_app_factory(jwt_secret=SECRET, jwt_issuer=issuer)
    assert plans_as(client, hs256({"sub": user, "iss": issuer})).status_code == 200
    for claims in ({"iss": "https://evil.example/auth/v1"}, {"iss": issuer + "/"}, {}):
        response = plans_as(client, hs256({"sub": user, **claims}))
        assert response.status_code == 401, claims
    unchecked = token_app_factory(jwt_secret=SECRET)
    assert plans_as(unchecked, hs256({"sub": user, "iss": "https://anyone.example"})).status_code == 200


@pytest.mark.parametrize("subject", ["{user}\n", "{user}\r\n", "\n{user}", " {user}", "{user} ", "", "a" * 256])
def test_a_subject_that_is_not_a_valid_user_id_is_401(token_app_factory: Any, user: str, subject: str) -> None:
    client = token_app_factory(jwt_secret=SECRET)
    response = plans_as(client, hs256({"sub": subject.format(user=user)}))
    assert response.status_code == 401, response.get_data(as_text=True)


def test_a_query_user_id_with_a_trailing_newline_is_400(token_app_factory: Any, user: str) -> None:
    client = token_app_factory(jwt_secret=SECRET)
    response = client.get(f"/api/plans?user_id={user}%0A", headers=bearer(hs256({"sub": user})))
    assert response.status_code == 400


def test_token_mode_a_body_user_id_other_than_the_tokens_is_403_even_when_the_query_names_it(
    token_app_factory: Any, user: str
) -> None:
    """Issue 8 item 3: was 400 ('differ'); every user_id named must be the token's user."""
    client = token_app_factory(jwt_secret=SECRET)
    headers = bearer(hs256({"sub": user}))
    refused = client.post(f"/api/plans?user_id={user}", json={"user_id": "someone-else", "name": "x"}, headers=headers)
    assert refused.status_code == 403 and resp_json(refused)["error"]["code"] == "forbidden"
    both = client.post(f"/api/plans?user_id={user}", json={"user_id": user, "name": "x"}, headers=headers)
    assert both.status_code == 201, both.get_data(as_text=True)


def test_dev_mode_query_and_body_user_ids_that_differ_are_still_400(client: FlaskClient, user: str) -> None:
    response = client.post(f"/api/plans?user_id={user}", json={"user_id": "someone-else", "name": "x"})
    assert response.status_code == 400 and "differ" in resp_json(response)["error"]["message"]


# --- RS256 through a JWKS served on loopback -------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def jwks_url(httpserver_ipv4: HTTPServer, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> str:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_keys[0].public_key()))
    jwk.update(kid="key-1", use="sig", alg="RS256")
    httpserver_ipv4.expect_request("/.well-known/jwks.json").respond_with_json({"keys": [jwk]})
    return httpserver_ipv4.url_for("/.well-known/jwks.json")


def rs256(key: rsa.RSAPrivateKey, claims: dict[str, Any], kid: str = "key-1") -> str:
    return jwt.encode({"exp": int(time.time()) + 300, **claims}, key, algorithm="RS256", headers={"kid": kid})


def test_auth0_style_rs256_tokens_are_checked_for_audience_and_issuer(
    token_app_factory: Any, jwks_url: str, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], user: str
) -> None:
    issuer, audience = "https://tenant.eu.auth0.com/", "https://pilot.example/api"
    client = token_app_factory(jwks_url=jwks_url, jwt_audience=(audience,), jwt_issuer=issuer)
    good = {"sub": user, "aud": [audience, "https://tenant.eu.auth0.com/userinfo"], "iss": issuer}
    response = plans_as(client, rs256(rsa_keys[0], good))
    assert response.status_code == 200, response.get_data(as_text=True)
    refused = [
        rs256(rsa_keys[0], {**good, "aud": "https://other.example/api"}),
        rs256(rsa_keys[0], {**good, "iss": "https://attacker.eu.auth0.com/"}),
        rs256(rsa_keys[1], good),  # signed by a key the JWKS does not hold, under its kid
        rs256(rsa_keys[0], {**good, "sub": f"{user}\n"}),
        hs256(good, secret="x" * 32),  # an HS256 token where RS256 is expected
    ]
    for token in refused:
        assert plans_as(client, token).status_code == 401
