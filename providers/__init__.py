"""Built-in providers, one module each; importing this package discovers and registers them.

``from providers import registry`` gives the process-wide ``ProviderRegistry``. A module
that fails to import is logged and skipped, so renaming ``providers/x.py`` to ``x.py.bak``
disables that provider without stopping the app.
"""

from __future__ import annotations

from provider_registry import ProviderRegistry

registry = ProviderRegistry()
registry.discover(__name__)

__all__ = ["registry"]
