"""The layout docs/architecture.md describes: the design card's parts at the top, the rest in pilot/ by
concern, and the rule "HTTP calls domain, domain calls data and security, nothing calls HTTP"."""

from __future__ import annotations

import ast
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN_CARD = {"app.py", "database.py", "provider_registry.py", "execution_engine.py", "scheduler.py"}
# Rooms below the HTTP layer: none of them may import it, nor Flask's request machinery.
BELOW_HTTP = (
    "pilot/data",
    "pilot/security",
    "pilot/steps",
    "pilot/execution",
    "pilot/planner",
    "pilot/costs",
    "providers",
)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` yields ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def python_files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def test_only_the_design_cards_parts_are_python_modules_at_the_top() -> None:
    assert {path.name for path in ROOT.glob("*.py")} == DESIGN_CARD


def test_no_top_level_name_is_also_an_installed_package() -> None:
    """A module at the top would hide an installed package of the same name from every import."""
    ours = {path.stem for path in ROOT.glob("*.py")} | {"pilot", "providers"}
    installed = set(packages_distributions())
    assert ours & installed == set()


def test_nothing_below_the_http_layer_imports_it() -> None:
    offenders = []
    for path in [*python_files(*BELOW_HTTP), *python_files("pilot/ops"), ROOT / "execution_engine.py"]:
        for module in imported_modules(path):
            if module == "pilot.http" or module.startswith("pilot.http."):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    for path in [ROOT / "scheduler.py", ROOT / "database.py", ROOT / "provider_registry.py"]:
        offenders += [f"{path.name} imports {m}" for m in imported_modules(path) if m.startswith("pilot.http")]
    assert offenders == []


def test_domain_data_and_security_do_not_read_the_request() -> None:
    """Only the HTTP layer (and the console and metrics blueprints) touch flask.request."""
    readers = [
        str(path.relative_to(ROOT))
        for path in [*python_files(*BELOW_HTTP), ROOT / "execution_engine.py", ROOT / "scheduler.py"]
        if {"flask.request", "flask.g", "flask.current_app"} & imported_modules(path)
    ]
    assert readers == []


def test_sql_lives_only_in_the_data_layer_and_migrations() -> None:
    """No module but pilot/data/store.py passes SQL text to a cursor (database.py's own setup aside)."""
    allowed = {ROOT / "pilot" / "data" / "store.py", ROOT / "database.py", ROOT / "scheduler.py"}
    offenders = []
    for path in [*ROOT.glob("*.py"), *python_files("pilot", "providers")]:
        if path in allowed or "console/screenshots.py" in str(path):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "execute" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant | ast.JoinedStr):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
