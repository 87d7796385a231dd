"""``deploy/gunicorn.conf.py`` for ``bench/floor_app.py``: every server setting of Pilot's, none of its hooks.

    gunicorn -c bench/floor_gunicorn.conf.py bench.floor_app:app

Loads Pilot's config file as it is (worker class, workers, threads, keep-alive, timeouts,
logger, the metrics directory hooks, all read from the same environment variables) and
leaves out only the hooks that start and stop Pilot's scheduler in a worker, which would
look for Pilot's application inside the floor app.
"""

from __future__ import annotations

import runpy
from pathlib import Path

PILOT_HOOKS = ("post_worker_init", "worker_int", "worker_exit")

_pilot = runpy.run_path(str(Path(__file__).resolve().parent.parent / "deploy" / "gunicorn.conf.py"))
globals().update({k: v for k, v in _pilot.items() if not k.startswith("__") and k not in PILOT_HOOKS})
