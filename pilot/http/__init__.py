"""The HTTP layer: blueprints (``routes/``), the request guard, shared request helpers, the OpenAPI document
and the table that turns domain errors into HTTP statuses."""
