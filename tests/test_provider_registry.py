"""Tests of the provider contract: ProviderResult, registration, execution, error handling.

Runs under pytest and on its own (``python tests/test_provider_registry.py`` from the repo
root, as the deployment checklist does), where it prints one ✓ line per group and exits 0,
or prints the traceback and a ✗ line and exits 1. It needs no pytest in that mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import contextlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

from pilot.errors import NotFound, ValidationError  # noqa: E402
from pilot.http.errors import status_for  # noqa: E402
from pilot.security.outbound import OutboundClient, OutboundPolicy  # noqa: E402
from provider_registry import (  # noqa: E402
    ActionSpec,
    CredentialSpec,
    DuplicateProviderError,
    ExecutionContext,
    Provider,
    ProviderRegistry,
    ProviderResult,
    UnknownActionError,
    UnknownProviderError,
)

SAY_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "times": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["text"],
    "additionalProperties": False,
}


class EchoProvider(Provider):
    """A test provider: ``say`` repeats ``text``; the text "fail" makes it report an upstream failure."""

    name = "echo"
    description = "repeats what it is told"
    actions: ClassVar[dict[str, ActionSpec]] = {"say": ActionSpec("repeat text", SAY_SCHEMA)}
    credential_types: ClassVar[dict[str, CredentialSpec]] = {
        "token": CredentialSpec("a token", required=True),
        "region": CredentialSpec("a region", required=False, secret=False),
    }

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        if action != "say":
            return self.unknown_action(action)
        if params["text"] == "fail":
            return ProviderResult.fail("upstream_rejected", "echo refused", http_status=400)
        return ProviderResult.ok(params["text"] * params.get("times", 1), user=context.user_id)


@contextlib.contextmanager
def raises(exc_type: type[BaseException]) -> Iterator[SimpleNamespace]:
    """``pytest.raises`` without pytest, so this file also runs on a server without it."""
    caught = SimpleNamespace(value=None)
    try:
        yield caught
    except exc_type as exc:
        caught.value = exc
    else:
        raise AssertionError(f"{exc_type.__name__} was not raised")


def make_context(**overrides: Any) -> ExecutionContext:
    return ExecutionContext(user_id="user_1", http=OutboundClient(OutboundPolicy.from_entries([])), **overrides)


def echo_registry() -> ProviderRegistry:
    registry = ProviderRegistry()
    registry.register(EchoProvider)
    return registry


# --- ProviderResult serialization -------------------------------------------------------


def test_result_round_trips_through_json() -> None:
    results = [
        ProviderResult.ok({"text": "hi", "items": [1, 2.5, None, True]}, http_status=200, usage={"total_tokens": 3}),
        ProviderResult.fail("rate_limited", "slow down", retryable=True, http_status=429, retry_after=1.0),
        ProviderResult(success=True, data="plain", latency_ms=12.5),
    ]
    for result in results:
        assert ProviderResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_ok_and_fail_shapes() -> None:
    ok = ProviderResult.ok([1], model="m")
    assert (ok.success, ok.data, ok.error, ok.metadata, ok.retryable) == (True, [1], None, {"model": "m"}, False)
    failed = ProviderResult.fail("timeout", "took too long", retryable=True)
    assert failed.success is False and failed.data is None
    assert failed.error == {"code": "timeout", "message": "took too long", "retryable": True}
    assert failed.retryable
    assert set(failed.to_dict()) == {"success", "data", "error", "latency_ms", "metadata"}


def test_from_dict_fills_defaults_and_to_dict_copies() -> None:
    assert ProviderResult.from_dict({"success": True}) == ProviderResult(success=True)
    result = ProviderResult.fail("x", "y", http_status=500)
    dumped = result.to_dict()
    dumped["metadata"]["http_status"] = 1
    dumped["error"]["code"] = "changed"
    assert result.metadata == {"http_status": 500} and result.error is not None and result.error["code"] == "x"


# --- Provider registration ----------------------------------------------------------------


def test_register_and_describe() -> None:
    registry = ProviderRegistry()
    assert registry.register(EchoProvider) is EchoProvider
    assert isinstance(registry.providers["echo"], EchoProvider) and registry.get("echo") is registry.providers["echo"]
    assert registry.names() == ["echo"] and "echo" in registry and len(registry) == 1
    assert registry.action("echo", "say").params_schema == SAY_SCHEMA
    described = registry.get("echo").describe()
    assert described == json.loads(json.dumps(described))
    assert described["name"] == "echo" and described["actions"]["say"]["params_schema"] == SAY_SCHEMA
    assert described["credential_types"]["token"] == {"description": "a token", "required": True, "secret": True}
    assert registry.get("echo").required_credentials() == ["token"]


def test_duplicate_name_refused() -> None:
    registry = echo_registry()

    class OtherEcho(EchoProvider):
        name = "echo"

    with raises(DuplicateProviderError) as caught:
        registry.register(OtherEcho)
    assert isinstance(caught.value, ValueError) and "'echo'" in str(caught.value)
    assert type(registry.get("echo")) is EchoProvider


def test_register_refuses_what_is_not_a_concrete_provider() -> None:
    registry = ProviderRegistry()

    class Abstract(Provider):
        name = "abstract"
        actions: ClassVar[dict[str, ActionSpec]] = {"a": ActionSpec("a", {"type": "object"})}

    class NoActions(EchoProvider):
        name = "no_actions"
        actions: ClassVar[dict[str, ActionSpec]] = {}

    class BadName(EchoProvider):
        name = "Bad Name"

    class BadSchema(EchoProvider):
        name = "bad_schema"
        actions: ClassVar[dict[str, ActionSpec]] = {"a": ActionSpec("a", {"type": "no-such-type"})}

    refused: list[tuple[Any, type[Exception]]] = [
        (dict, TypeError),
        (Abstract, TypeError),
        (NoActions, ValueError),
        (BadName, ValueError),
    ]
    for cls, error in refused:
        with raises(error):
            registry.register(cls)
    with raises(ValueError) as caught:
        registry.register(BadSchema)
    assert "bad_schema" in str(caught.value) and "'a'" in str(caught.value)
    assert registry.names() == []


def test_unknown_provider_and_action_are_lookup_errors_naming_them() -> None:
    registry = echo_registry()
    with raises(UnknownProviderError) as caught:
        registry.get("nope")
    error = caught.value
    assert isinstance(error, LookupError) and isinstance(error, NotFound)
    assert (status_for(error), error.code) == (404, "unknown_provider") and "'nope'" in error.message
    assert error.details["known"] == ["echo"]
    with raises(UnknownActionError) as caught:
        registry.action("echo", "shout")
    action_error = caught.value
    assert isinstance(action_error, LookupError) and isinstance(action_error, UnknownActionError)
    assert action_error.code == "unknown_action" and "'shout'" in action_error.message
    with raises(UnknownProviderError):
        registry.validate_params("nope", "say", {})


def test_builtin_providers_are_discovered() -> None:
    from providers import registry

    assert {"openai", "groq", "anthropic", "webhook", "logic"} <= set(registry.providers)
    assert registry.names() == sorted(registry.providers)
    assert registry.discover("providers") == []  # idempotent: nothing registered twice


class _Collector(logging.Handler):
    """Keeps the records it receives (and so keeps them off stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def discover_skips_broken_modules(root: Path) -> None:
    """A package with a good, a broken, a helper and a ``.bak`` module: only the good one registers."""
    package = f"pilot_test_providers_{uuid.uuid4().hex[:8]}"
    folder = root / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    good = """
        from typing import ClassVar
        from provider_registry import ActionSpec, Provider, ProviderResult
        from {package}._helper import Helper

        class Good(Provider):
            name = "good"
            actions: ClassVar = {{"run": ActionSpec("run", {{"type": "object"}})}}

            def execute(self, action, params, credentials, context):
                return ProviderResult.ok("good")
    """
    helper = """
        from typing import ClassVar
        from provider_registry import ActionSpec, Provider, ProviderResult

        class Helper(Provider):
            name = "helper"
            actions: ClassVar = {"run": ActionSpec("run", {"type": "object"})}

            def execute(self, action, params, credentials, context):
                return ProviderResult.ok("helper")
    """
    (folder / "good.py").write_text(textwrap.dedent(good.format(package=package)))
    (folder / "_helper.py").write_text(textwrap.dedent(helper))
    (folder / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (folder / "disabled.py.bak").write_text(textwrap.dedent(helper).replace('"helper"', '"disabled"'))

    handler = _Collector()
    records = handler.records
    logger = logging.getLogger("provider_registry")
    logger.addHandler(handler)
    sys.path.insert(0, str(root))
    try:
        registry = ProviderRegistry()
        assert registry.discover(package) == ["good"]
        assert registry.names() == ["good"]
        logged = list(records)
        assert registry.discover(package) == []  # a re-run registers nothing twice (and retries broken.py)
    finally:
        sys.path.remove(str(root))
        logger.removeHandler(handler)
        for name in [name for name in sys.modules if name.split(".")[0] == package]:
            del sys.modules[name]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert f"{package}.broken" in logged[0].getMessage()
    assert logged[0].exc_info is not None and "boom at import" in str(logged[0].exc_info[1])


def test_discover_skips_and_logs_a_module_that_fails_to_import(tmp_path: Path) -> None:
    discover_skips_broken_modules(tmp_path)


# --- Provider execution ---------------------------------------------------------------------


def test_logic_transform_returns_the_rendered_template() -> None:
    from providers import registry

    params = {"template": "Test 3"}
    registry.validate_params("logic", "transform", params)
    result = registry.get("logic").execute("transform", params, {}, make_context())
    assert result.success and result.data == "Test 3" and result.error is None


def test_logic_condition_reads_the_run_context() -> None:
    from providers import registry

    context = make_context(run_context={"steps": {"a": {"data": {"count": 2}}}, "input": {}})
    result = registry.get("logic").execute("condition", {"expression": "steps.a.data.count > `1`"}, {}, context)
    assert result.success and result.data == {"result": True}


def test_registered_provider_executes_with_context() -> None:
    registry = echo_registry()
    registry.validate_params("echo", "say", {"text": "ab", "times": 2})
    result = registry.get("echo").execute("say", {"text": "ab", "times": 2}, {"token": "t"}, make_context())
    assert result == ProviderResult.ok("abab", user="user_1")


# --- Provider error handling ----------------------------------------------------------------


def test_provider_failure_is_a_result_not_an_exception() -> None:
    result = echo_registry().get("echo").execute("say", {"text": "fail"}, {}, make_context())
    assert not result.success and not result.retryable
    assert result.error == {"code": "upstream_rejected", "message": "echo refused", "retryable": False}
    assert ProviderResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_unknown_action_executes_to_a_failure() -> None:
    result = echo_registry().get("echo").execute("shout", {}, {}, make_context())
    assert not result.success and result.error is not None
    assert result.error["code"] == "unknown_action" and "'shout'" in result.error["message"]


def test_validation_error_names_the_field() -> None:
    from providers import registry

    with raises(ValidationError) as caught:
        registry.validate_params("openai", "chat_completion", {"prompt": "hi", "temperature": 3})
    error = caught.value
    assert status_for(error) == 400 and error.code == "invalid_params"
    assert error.message == "params.temperature: 3 is greater than the maximum of 2"
    assert error.details == [{"path": "params.temperature", "message": "3 is greater than the maximum of 2"}]


def test_validation_lists_every_error() -> None:
    registry = echo_registry()
    with raises(ValidationError) as caught:
        registry.validate_params("echo", "say", {"text": 5, "times": 0, "tags": ["a", 1], "extra": True})
    paths = sorted(detail["path"] for detail in caught.value.details)
    assert paths == ["params", "params.tags[1]", "params.text", "params.times"]
    assert caught.value.message.startswith("params")
    with raises(ValidationError) as caught:
        registry.validate_params("echo", "say", "not an object")
    assert caught.value.details == [{"path": "params", "message": "'not an object' is not of type 'object'"}]


def test_prompt_or_messages_exactly_one() -> None:
    from providers import registry

    for params in ({}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}):
        with raises(ValidationError) as caught:
            registry.validate_params("anthropic", "messages", params)
        assert caught.value.message == "params: exactly one of 'prompt', 'messages' is required"


def test_logic_expression_error_is_a_failure() -> None:
    from providers import registry

    result = registry.get("logic").execute("extract", {"expression": "a[", "data": {}}, {}, make_context())
    assert not result.success and result.error is not None and result.error["code"] == "expression_error"


GROUPS: dict[str, list[Callable[..., None]]] = {
    "ProviderResult serialization": [
        test_result_round_trips_through_json,
        test_ok_and_fail_shapes,
        test_from_dict_fills_defaults_and_to_dict_copies,
    ],
    "Provider registration": [
        test_register_and_describe,
        test_duplicate_name_refused,
        test_register_refuses_what_is_not_a_concrete_provider,
        test_unknown_provider_and_action_are_lookup_errors_naming_them,
        test_builtin_providers_are_discovered,
        test_discover_skips_and_logs_a_module_that_fails_to_import,
    ],
    "Provider execution": [
        test_logic_transform_returns_the_rendered_template,
        test_logic_condition_reads_the_run_context,
        test_registered_provider_executes_with_context,
    ],
    "Provider error handling": [
        test_provider_failure_is_a_result_not_an_exception,
        test_unknown_action_executes_to_a_failure,
        test_validation_error_names_the_field,
        test_validation_lists_every_error,
        test_prompt_or_messages_exactly_one,
        test_logic_expression_error_is_a_failure,
    ],
}


def _run(check: Callable[..., None]) -> None:
    if "tmp_path" not in inspect.signature(check).parameters:
        check()
        return
    folder = Path(tempfile.mkdtemp(prefix="pilot-test-"))
    try:
        check(tmp_path=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    """Run every group; print ✓ per passing group, or the traceback and ✗ for the first failure."""
    for title, checks in GROUPS.items():
        try:
            for check in checks:
                _run(check)
        except Exception:
            traceback.print_exc()
            print(f"✗ {title}")
            return 1
        print(f"✓ {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
