-- Pilot 010: where a drafted plan came from (POST /api/plans/draft with save: true).
-- provenance is {"provider", "model", "attempts", "drafted_at"}; NULL for plans written by
-- people. The column belongs to the row, so the table's forced RLS and its four policies
-- (migration 002) cover it as they are; no policy changes.
ALTER TABLE execution_plans ADD COLUMN IF NOT EXISTS provenance jsonb;
