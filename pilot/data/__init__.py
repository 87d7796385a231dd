"""The data layer: ``store.py`` names every query Pilot runs; ``queries.sql`` holds their SQL."""
