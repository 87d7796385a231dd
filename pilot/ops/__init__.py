"""Running Pilot: Prometheus metrics, JSON logging, operator CLI commands and maintenance over all users."""
