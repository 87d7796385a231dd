"""Provider credentials: stored encrypted, shown masked, never returned in plaintext."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import NotFound, ValidationError
from pilot.http.auth import current_user_id
from pilot.http.common import serialize
from pilot.http.models import CredentialList, CredentialsBody
from pilot.http.validation import Answer, validate
from pilot.security.vault import masked
from provider_registry import CREDENTIAL_TYPE

bp = Blueprint("credentials", __name__, url_prefix="/api/provider-credentials")


class CredentialTypeConverter(BaseConverter):
    """A credential type in a path, but never ``test``: ``/<name>/test`` is the credential test (POST),
    so ``DELETE …/<provider>/test`` is not a route (405) rather than a credential type named test."""

    regex = r"(?!test$)[^/]+"


@bp.record_once
def _add_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters.setdefault("credential_type", CredentialTypeConverter)


NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # fullmatch: '$' would pass a final \n


def _check_name(value: str, what: str) -> str:
    if not NAME.fullmatch(value):
        raise ValidationError(f"{what} must be 1-64 letters, digits, '_', '.' or '-'")
    return value


def _check_type(value: str) -> str:
    if not CREDENTIAL_TYPE.fullmatch(value):
        raise ValidationError(
            "credential type must be 1-64 letters, digits, '_', '.' or '-', or 'header:<Name>' with a header name "
            "of letters, digits, '-', '_' or '.'"
        )
    return value


def _check_provider(provider: str) -> str:
    _check_name(provider, "provider")
    if provider not in current_pilot().registry:
        raise NotFound(f"unknown provider {provider!r}", code="unknown_provider")
    return provider


def _public(user_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """A credential as responses show it: masked (``…`` and ``readable: false`` when undecryptable), with timestamps."""
    shown = masked(current_pilot().vault, user_id, row)
    public = serialize({k: v for k, v in row.items() if k != "encrypted_value"})
    public.update(masked_value="…" if shown is None else shown, readable=shown is not None)
    return public


@bp.post("/<provider>")
@validate(
    summary="Store (encrypted) a provider's credentials",
    tag="credentials",
    body=CredentialsBody,
    responses={200: Answer("stored; values shown masked", CredentialList)},
    errors=(404,),
    operation_id="storeCredentials",
)
def store_credentials(provider: str, body: CredentialsBody) -> tuple[Response, int]:
    user_id = current_user_id()
    _check_provider(provider)
    creds = body.credentials
    provider_ = current_pilot().registry.get(provider)
    for type_, secret in creds.items():
        try:
            provider_.check_credential(type_, secret)
        except ValidationError as exc:
            raise ValidationError(f"credentials.{type_}: {exc.message}") from None
    vault = current_pilot().vault
    with current_pilot().db.transaction(user_id) as cur:
        rows = [
            store.upsert_credential(cur, user_id, provider, type_, vault.encrypt(user_id, provider, type_, secret))
            for type_, secret in creds.items()
        ]
    return jsonify({"provider": provider, "credentials": [_public(user_id, row) for row in rows]}), 200


@bp.get("")
@validate(
    summary="All the caller's credentials, masked",
    tag="credentials",
    responses={200: Answer("masked credentials", CredentialList)},
    operation_id="listCredentials",
)
def list_all() -> Response:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_credentials(cur, user_id)
    return jsonify({"credentials": [_public(user_id, row) for row in rows]})


@bp.get("/<provider>")
@validate(
    summary="The caller's credentials for one provider, masked",
    tag="credentials",
    responses={200: Answer("masked credentials", CredentialList)},
    errors=(404,),
    operation_id="getCredentials",
)
def list_provider(provider: str) -> Response:
    user_id = current_user_id()
    _check_name(provider, "provider")
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_credentials(cur, user_id, provider)
    if not rows:
        raise NotFound(f"no credentials stored for {provider}")
    return jsonify({"provider": provider, "credentials": [_public(user_id, row) for row in rows]})


@bp.delete("/<provider>")
@validate(
    summary="Delete all of the caller's credentials for a provider",
    tag="credentials",
    responses={204: Answer("deleted")},
    errors=(404,),
    operation_id="deleteCredentials",
)
def delete_all(provider: str) -> tuple[str, int]:
    return _delete(provider, None)


@bp.delete("/<provider>/<credential_type:type_>")
@validate(
    summary="Delete one credential type",
    tag="credentials",
    responses={204: Answer("deleted")},
    errors=(404, 405),
    operation_id="deleteCredential",
)
def delete_one(provider: str, type_: str) -> tuple[str, int]:
    return _delete(provider, type_)


def _delete(provider: str, type_: str | None) -> tuple[str, int]:
    user_id = current_user_id()
    _check_name(provider, "provider")
    if type_ is not None:
        _check_type(type_)
    with current_pilot().db.transaction(user_id) as cur:
        deleted = store.delete_credentials(cur, user_id, provider, type_)
    if not deleted:
        raise NotFound(f"no credentials stored for {provider}" + (f" {type_}" if type_ else ""))
    return "", 204
