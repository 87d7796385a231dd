"""``PilotApp``: the Flask app with the parts one Pilot process wires together, as typed fields.

``create_app`` (``app.py``) builds the parts and this app; views reach them through
``current_pilot()``, the scheduler and the CLI through the app they are given.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from database import DatabaseManager
    from execution_engine import ExecutionEngine
    from pilot.security.vault import Vault
    from pilot.settings import Settings
    from provider_registry import ProviderRegistry
    from scheduler import PilotScheduler


class PilotApp(Flask):
    """A Flask app that owns settings, database, vault, provider registry, engine and (when serving) scheduler."""

    settings: Settings
    db: DatabaseManager
    vault: Vault
    registry: ProviderRegistry
    engine: ExecutionEngine
    scheduler: PilotScheduler | None
    # Set while ``python app.py`` waits for an unreachable database to take its migrations.
    migrations_pending: threading.Event

    def __init__(
        self,
        import_name: str,
        *,
        settings: Settings,
        db: DatabaseManager,
        vault: Vault,
        registry: ProviderRegistry,
        engine: ExecutionEngine,
        **flask_options: Any,
    ) -> None:
        super().__init__(import_name, **flask_options)
        self.settings = settings
        self.db = db
        self.vault = vault
        self.registry = registry
        self.engine = engine
        self.scheduler = None  # started only by serving processes: scheduler.start_for_serving
        self.migrations_pending = threading.Event()


def current_pilot() -> PilotApp:
    """The PilotApp handling the current request (or whose app context is pushed)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(app, PilotApp):
        raise RuntimeError("the current Flask app is not a PilotApp; build it with app.create_app()")
    return app
