-- Pilot 001: the application role and the tx-local identity function.
--
-- pilot_app is the role every request transaction switches to with
-- SET LOCAL ROLE: NOLOGIN, no BYPASSRLS, owns nothing, so row-level security
-- applies even when DATABASE_URL names a superuser (the PostgREST pattern).
-- Roles are cluster-wide; concurrent migrations of two databases may race on
-- CREATE ROLE, hence the exception handler.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pilot_app') THEN
        CREATE ROLE pilot_app NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently by a migration of another database
END
$$;

-- The connecting role must be allowed to SET ROLE pilot_app.
DO $$
BEGIN
    -- Superusers, and roles a DBA already made members, need no grant (and may lack the right to give one).
    IF NOT pg_has_role(current_user, 'pilot_app', 'MEMBER') THEN
        EXECUTE format('GRANT pilot_app TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO pilot_app;

-- RETURNS VARCHAR on purpose: the client's checklist (Phase 1 Step 4) runs
-- CREATE OR REPLACE with that return type, which must not fail.
CREATE OR REPLACE FUNCTION current_user_id() RETURNS VARCHAR
    LANGUAGE sql STABLE
    AS $$ SELECT current_setting('app.current_user_id', true)::VARCHAR $$;
