"""Everything that supports the design card's parts (``app.py``, ``database.py``, ``provider_registry.py``,
``execution_engine.py``, ``scheduler.py``, ``providers/``), grouped by concern.

Importing this package, or any module in it, builds nothing: no app, pool, thread or file.
``docs/architecture.md`` says which folder owns what and who may call whom.
"""
