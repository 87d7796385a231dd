"""The parts one Pilot app wires together, reachable from routes as ``services()``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from database import DatabaseManager
from pilot.security.vault import Vault
from pilot.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: DatabaseManager
    vault: Vault
    registry: Any = None
    engine: Any = None
    scheduler: Any = None
    # Set while ``python app.py`` waits for an unreachable database to take its migrations.
    migrations_pending: threading.Event = field(default_factory=threading.Event)


def services() -> Services:
    svc: Services = current_app.extensions["pilot"]
    return svc
