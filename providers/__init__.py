"""Built-in providers, one module each; the registry discovers them, nothing registers on import.

``build_registry()`` discovers every provider module into a new ``ProviderRegistry``:
``create_app`` calls it, so each app has a registry of its own (and a test may pass
another). ``from providers import registry`` gives one more, built on first use
(PEP 562), for the checklist and scripts. A module that fails to import is logged
and skipped, so renaming ``providers/x.py`` to ``x.py.bak`` disables that provider
without stopping the app.
"""

from __future__ import annotations

import threading

from provider_registry import ProviderRegistry

_lock = threading.Lock()


def build_registry() -> ProviderRegistry:
    """A new registry holding every provider module of this package."""
    registry = ProviderRegistry()
    registry.discover(__name__)
    return registry


def __getattr__(name: str) -> ProviderRegistry:
    """``registry``: this package's providers, discovered on first use."""
    if name != "registry":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        registry = globals().get("registry")
        if registry is None:
            registry = build_registry()
            globals()["registry"] = registry  # later lookups find it without this function
    return registry


__all__ = ["build_registry", "registry"]
