-- Pilot 001: the application role and the tx-local identity function.
--
-- pilot_app is the role every request transaction switches to with
-- SET LOCAL ROLE: NOLOGIN, no BYPASSRLS, owns nothing, so row-level security
-- applies even when DATABASE_URL names a superuser (the PostgREST pattern).
-- Roles are cluster-wide; concurrent migrations of two databases may race on
-- CREATE ROLE, hence the exception handler.
DO $$
BEGIN
    CREATE ROLE pilot_app NOLOGIN NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The connecting role must be allowed to SET ROLE pilot_app.
DO $$
BEGIN
    EXECUTE format('GRANT pilot_app TO %I', current_user);
EXCEPTION WHEN duplicate_object OR invalid_grant_operation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO pilot_app;

-- RETURNS VARCHAR on purpose: the client's checklist (Phase 1 Step 4) runs
-- CREATE OR REPLACE with that return type, which must not fail.
CREATE OR REPLACE FUNCTION current_user_id() RETURNS VARCHAR
    LANGUAGE sql STABLE
    AS $$ SELECT current_setting('app.current_user_id', true)::VARCHAR $$;
