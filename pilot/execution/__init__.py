"""The engine's halves that run whole plans: queued runs (``runs.py``) and their leases (``leases.py``)."""
