"""HTTP blueprints: each handler parses, calls the data layer or engine, serializes."""
