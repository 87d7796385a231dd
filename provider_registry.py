"""The provider contract: ``Provider``, ``ProviderResult``, ``ExecutionContext`` and ``ProviderRegistry``.

A provider is one module in ``providers/`` defining a concrete ``Provider`` subclass; the
registry discovers it, so adding a provider touches no other file. The engine resolves a
step's provider and action here, validates the rendered params against the action's JSON
Schema, then calls ``Provider.execute``. Upstream failures come back as
``ProviderResult.fail``; only bugs raise.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import pkgutil
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.exceptions import ValidationError as SchemaViolation

from pilot.errors import NotFound, ValidationError
from pilot.security.redaction import Redactor

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from pilot.security.breaker import CircuitBreakers
    from pilot.security.outbound import OutboundClient

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HEADER_CREDENTIAL = "header:"
# A credential type: a plain name, or ``header:<Name>`` for a header a provider sends as stored
# (the only place a ':' may appear; a header name is a plain token, so no CR/LF or spaces).
CREDENTIAL_TYPE = re.compile(r"[A-Za-z0-9_.-]{1,64}|header:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
P = TypeVar("P", bound="type[Provider]")
DEFAULT_TIMEOUT_S = 30.0


@dataclass
class ProviderResult:
    """The outcome of one provider call; JSON-serialisable when ``data`` and ``metadata`` are.

    ``error`` is ``{"code", "message", "retryable"}`` on failure and None on success.
    ``metadata`` carries facts about the call: ``http_status``, ``model``, ``usage``,
    ``retry_after`` (seconds), ``outcome_unknown`` (the request may have taken effect).
    """

    success: bool
    data: Any = None
    error: dict[str, Any] | None = None
    latency_ms: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, data: Any = None, **metadata: Any) -> ProviderResult:
        """A successful result carrying ``data``."""
        return cls(success=True, data=data, metadata=metadata)

    @classmethod
    def fail(cls, code: str, message: str, *, retryable: bool = False, **metadata: Any) -> ProviderResult:
        """A failed result; ``retryable`` tells the engine a later attempt may succeed."""
        error = {"code": code, "message": message, "retryable": retryable}
        return cls(success=False, error=error, metadata=metadata)

    @property
    def retryable(self) -> bool:
        """True when this is a failure a later attempt may fix."""
        return bool(self.error and self.error.get("retryable"))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (fresh containers) suitable for ``json.dumps``."""
        return {
            "success": self.success,
            "data": self.data,
            "error": dict(self.error) if self.error is not None else None,
            "latency_ms": self.latency_ms,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ProviderResult:
        """Rebuild a result from ``to_dict`` output (after a JSON round trip, too)."""
        error = payload.get("error")
        if error is not None:
            error = {
                "code": str(error.get("code", "unknown_error")),
                "message": str(error.get("message", "")),
                "retryable": bool(error.get("retryable", False)),
            }
        return cls(
            success=bool(payload.get("success", False)),
            data=payload.get("data"),
            error=error,
            latency_ms=float(payload.get("latency_ms") or 0.0),
            metadata=dict(payload.get("metadata") or {}),
        )


# What ``Provider.stream`` yields: a piece of text as the upstream produced it ("" when the
# upstream only showed it is alive, e.g. a ping), and last of all one ProviderResult.
StreamItem: TypeAlias = "str | ProviderResult"


@dataclass(frozen=True)
class ActionSpec:
    """One action: what it does and the JSON Schema (draft 2020-12) of its params object."""

    description: str
    params_schema: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "params_schema": self.params_schema}


@dataclass(frozen=True)
class CredentialSpec:
    """One credential field a user may store for a provider."""

    description: str
    required: bool
    secret: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "required": self.required, "secret": self.secret}


@dataclass
class ExecutionContext:
    """What a provider may use besides params and credentials.

    ``http`` is the only way out to the network (it enforces the SSRF policy);
    ``run_context`` is ``{"steps", "step_results", "input"}`` and never holds credentials;
    ``base_urls`` are the server's default endpoints keyed by provider name; ``redactor``
    knows this call's secrets: a provider that shortens upstream text does it with
    ``redactor.cut`` so that no piece of a key is left at the cut. ``breakers`` (when
    set) are the process's circuit breakers, keyed by ``provider`` and upstream host;
    ``default_timeout_s`` is the provider's own default, which decides whether a
    timeout counts against a circuit (``providers/_http.send`` applies them).
    """

    user_id: str
    http: OutboundClient
    timeout_s: float = DEFAULT_TIMEOUT_S
    run_context: dict[str, Any] = field(default_factory=dict)
    base_urls: dict[str, str] = field(default_factory=dict)
    redactor: Redactor = field(default_factory=Redactor)
    provider: str = ""
    breakers: CircuitBreakers | None = None
    default_timeout_s: float = DEFAULT_TIMEOUT_S


class Provider(ABC):
    """Base class of every provider; subclasses set the class attributes and implement ``execute``.

    ``name`` is the registry key (lowercase identifier); ``actions`` maps each action name to
    its ``ActionSpec``; ``credential_types`` maps each credential field to its ``CredentialSpec``.
    ``pure`` declares that the provider makes no network call, needs no credentials and has
    no side effect (dry runs execute its steps for real); ``streaming_actions`` names the
    actions whose ``stream`` yields text as the upstream produces it.
    Instances are shared by all threads, so a provider keeps no per-call state on ``self``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    actions: ClassVar[dict[str, ActionSpec]] = {}
    credential_types: ClassVar[dict[str, CredentialSpec]] = {}
    pure: ClassVar[bool] = False
    streaming_actions: ClassVar[frozenset[str]] = frozenset()
    default_timeout_s: ClassVar[float] = DEFAULT_TIMEOUT_S  # a step's timeout_s overrides it

    @abstractmethod
    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        """Run ``action`` once and report the outcome.

        ``params`` are already rendered and validated against the action's schema (defaults
        not filled in: the provider applies its own). ``credentials`` are the user's
        decrypted fields. Every network call goes through ``context.http`` with
        ``context.timeout_s``. Upstream failures (HTTP errors, timeouts, refused or blocked
        connections, malformed replies) and unknown actions are returned as
        ``ProviderResult.fail``, never raised; error messages never contain credentials the
        provider added itself (upstream text may echo them; the engine redacts by value, and
        upstream text is shortened only with ``context.redactor.cut``).
        The engine retries; a provider makes exactly one attempt.
        """

    def stream(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> Generator[StreamItem, None, None]:
        """Run ``action`` once like ``execute``, yielding its text as the upstream streams it.

        Yields ``str`` pieces (each as received; ``""`` for a sign of life without text) and
        then exactly one ``ProviderResult``, last, equal in shape to what ``execute`` returns
        for the same answer. Closing the generator early must close the upstream connection
        (that is how a caller cancels). The default, for actions that do not stream, yields
        ``execute``'s result alone.
        """
        yield self.execute(action, params, credentials, context)

    def test_credentials(self, credentials: dict[str, str], context: ExecutionContext) -> ProviderResult:
        """Cheaply check that ``credentials`` work (e.g. list models); never raises for upstream failures."""
        return ProviderResult.fail("not_supported", f"provider {self.name!r} cannot test credentials")

    def billed_model(self, action: str, params: dict[str, Any]) -> str | None:
        """The model a call of ``action`` with ``params`` is billed for per token, or None when it is not.

        Steps with a billed model are LLM steps: their usage and cost are recorded and
        budgets apply to them (``pilot.costs``). By default nothing is billed.
        """
        return None

    def check_credential(self, type_: str, value: str) -> None:
        """Raise ValidationError when ``value`` cannot be stored as this provider's ``type_``.

        By default any well-formed type is accepted except ``header:<Name>`` ones, which only a
        provider that sends stored headers (and overrides this) takes.
        """
        if type_.startswith(HEADER_CREDENTIAL):
            raise ValidationError(f"provider {self.name!r} does not send stored headers ({type_!r})")

    def credentials_schema(self) -> dict[str, Any]:
        """JSON Schema of the ``{type: secret}`` map this provider stores: what ``check_credential`` takes.

        The OpenAPI document applies it (with the generic rules) to ``POST /api/provider-credentials/<name>``.
        """
        return {"propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,64}$"}}  # no header:<Name> types

    def secret_values(self, credentials: dict[str, str]) -> list[str]:
        """Every string derived from ``credentials`` that must never appear in logs or answers.

        By default the values of the types declared secret and of any undeclared type; a
        provider that sends a credential in another form (e.g. base64) adds that form.
        """
        declared = self.credential_types
        return [value for type_, value in credentials.items() if type_ not in declared or declared[type_].secret]

    def describe(self) -> dict[str, Any]:
        """The public description served by ``GET /api/providers/<name>``."""
        return {
            "name": self.name,
            "description": self.description,
            "actions": {name: spec.to_dict() for name, spec in self.actions.items()},
            "credential_types": {name: spec.to_dict() for name, spec in self.credential_types.items()},
        }

    def required_credentials(self) -> list[str]:
        """Names of the credential fields a user must store before running this provider."""
        return [name for name, spec in self.credential_types.items() if spec.required]

    def unknown_action(self, action: str) -> ProviderResult:
        """The failure ``execute`` returns for an action this provider does not have."""
        known = ", ".join(sorted(self.actions))
        return ProviderResult.fail(
            "unknown_action", f"provider {self.name!r} has no action {action!r} (known: {known})"
        )


class DuplicateProviderError(ValueError):
    """A provider with this name is already registered."""


class UnknownProviderError(NotFound):
    """No provider is registered under this name."""

    code = "unknown_provider"


class UnknownActionError(NotFound):
    """The provider exists but has no such action."""

    code = "unknown_action"


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False, default=str)}]"


def _describe(error: SchemaViolation) -> str:
    """jsonschema's message, except for combinators, whose message would quote the whole value."""
    schemas = error.validator_value
    if error.validator in ("oneOf", "anyOf") and isinstance(schemas, list):
        quantity = "exactly one" if error.validator == "oneOf" else "at least one"
        names = [name for sub in schemas if isinstance(sub, dict) for name in sub.get("required", [])]
        if names and all(isinstance(sub, dict) and set(sub) == {"required"} for sub in schemas):
            return f"{quantity} of " + ", ".join(repr(name) for name in names) + " is required"
        return f"must match {quantity} of the allowed forms"
    if error.validator == "not" and isinstance(schemas, dict) and set(schemas) == {"required"}:
        return "cannot have all of " + ", ".join(repr(name) for name in schemas["required"])
    return error.message


class ProviderRegistry:
    """Name → provider instance, plus action lookup and params validation."""

    def __init__(self) -> None:
        self.providers: dict[str, Provider] = {}
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}

    def register(self, cls: P) -> P:
        """Register a concrete ``Provider`` subclass (usable as a decorator); returns ``cls``.

        Raises TypeError for a non-provider or abstract class, ValueError for a bad name, no
        actions or an invalid params schema, and DuplicateProviderError for a taken name.
        """
        if not (inspect.isclass(cls) and issubclass(cls, Provider)):
            raise TypeError(f"{cls!r} is not a subclass of Provider")
        if inspect.isabstract(cls):
            raise TypeError(f"{cls.__name__} is abstract")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{cls.__name__}.name must be a lowercase identifier, not {name!r}")
        if name in self.providers:
            raise DuplicateProviderError(f"a provider named {name!r} is already registered")
        if not cls.actions:
            raise ValueError(f"provider {name!r} defines no actions")
        for action, spec in cls.actions.items():
            try:
                Draft202012Validator.check_schema(spec.params_schema)
            except SchemaError as exc:
                raise ValueError(f"provider {name!r} action {action!r}: invalid params schema: {exc.message}") from exc
        self.providers[name] = cls()
        return cls

    def get(self, name: str) -> Provider:
        """The provider instance registered as ``name``; UnknownProviderError otherwise."""
        try:
            return self.providers[name]
        except KeyError:
            raise UnknownProviderError(
                f"unknown provider {name!r}", details={"provider": name, "known": self.names()}
            ) from None

    def action(self, name: str, action: str) -> ActionSpec:
        """The spec of ``name``'s ``action``; UnknownProviderError or UnknownActionError."""
        provider = self.get(name)
        try:
            return provider.actions[action]
        except KeyError:
            raise UnknownActionError(
                f"provider {name!r} has no action {action!r}",
                details={"provider": name, "action": action, "known": sorted(provider.actions)},
            ) from None

    def validate_params(self, name: str, action: str, params: Any, *, allow_templates: bool = False) -> None:
        """Check ``params`` against the action's schema.

        Raises ValidationError (code ``invalid_params``) whose message names the first
        offending path (``params.temperature: 3 is greater than the maximum of 2``) and whose
        details list every violation as ``{"path", "message"}``. With ``allow_templates`` (plans
        being saved, before rendering) a violation by a ``{{ … }}`` string is deferred to run time.
        """
        validator = self._validators.get((name, action))
        if validator is None:
            validator = Draft202012Validator(self.action(name, action).params_schema)
            self._validators[(name, action)] = validator
        violations = sorted(validator.iter_errors(params), key=lambda err: [str(p) for p in err.absolute_path])
        if allow_templates:
            violations = [e for e in violations if not (isinstance(e.instance, str) and "{{" in e.instance)]
        if not violations:
            return
        details = []
        headline: dict[str, str] | None = None
        first = best_match(violations)
        for error in violations:
            path = "params"
            for key in error.absolute_path:
                path = _child(path, key)
            details.append({"path": path, "message": _describe(error)})
            if error is first:
                headline = details[-1]
        headline = headline or details[0]
        raise ValidationError(f"{headline['path']}: {headline['message']}", code="invalid_params", details=details)

    def discover(self, package_name: str = "providers") -> list[str]:
        """Import every public module of ``package_name`` and register the providers it defines.

        Modules whose names start with ``_`` are helpers and are skipped. A module that fails
        to import, or whose provider cannot be registered, is logged and skipped so the app
        still starts. Re-running is harmless. Returns the names registered by this call.
        """
        package = importlib.import_module(package_name)
        found: list[str] = []
        for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
            if module_info.name.startswith("_"):
                continue
            module_name = f"{package_name}.{module_info.name}"
            try:
                module = importlib.import_module(module_name)
            except Exception:
                logger.exception("provider module %s failed to import; skipped", module_name)
                continue
            for cls in self._provider_classes(module.__dict__.values(), module_name):
                if type(self.providers.get(getattr(cls, "name", ""))) is cls:
                    continue  # already registered by an earlier discover()
                try:
                    self.register(cls)
                except (TypeError, ValueError):
                    logger.exception("provider %s.%s could not be registered; skipped", module_name, cls.__name__)
                    continue
                found.append(cls.name)
        return found

    @staticmethod
    def _provider_classes(objects: Iterable[Any], module_name: str) -> list[type[Provider]]:
        return [
            obj
            for obj in objects
            if inspect.isclass(obj)
            and issubclass(obj, Provider)
            and obj.__module__ == module_name
            and not inspect.isabstract(obj)
        ]

    def names(self) -> list[str]:
        """Registered provider names, sorted."""
        return sorted(self.providers)

    def __contains__(self, name: object) -> bool:
        return name in self.providers

    def __len__(self) -> int:
        return len(self.providers)
