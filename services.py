"""The parts one Pilot app wires together, reachable from routes as ``services()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from config import Settings
from credentials import Vault
from database import DatabaseManager


@dataclass
class Services:
    settings: Settings
    db: DatabaseManager
    vault: Vault
    registry: Any = None
    engine: Any = None
    scheduler: Any = None


def services() -> Services:
    svc: Services = current_app.extensions["pilot"]
    return svc
