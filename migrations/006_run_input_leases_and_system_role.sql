-- Pilot 006: a run keeps its input; a run's lease is set by whoever executes it;
-- system work (schedules, leases, reaping) gets its own role, and pilot_app can
-- no longer call any function that reads or changes other users' rows.
--
-- Upgrade note: the previous version's scheduler calls pilot_list_schedules,
-- pilot_heartbeat and pilot_interrupt_runs as pilot_app; after this migration
-- those calls are refused, so stop the old schedulers before applying it
-- (README: Database, roles and row-level security).

-- 1. The input a run was accepted with, read by the engine when it executes the
--    run (issue 9 builds the durable queue on these rows).
ALTER TABLE plan_runs ADD COLUMN IF NOT EXISTS input jsonb NOT NULL DEFAULT '{}'::jsonb;

-- 2. Each run carries its own lease expiry, set and renewed by the process
--    executing it with that process's RUN_LEASE_SECONDS, so a reaper configured
--    with a shorter lease cannot interrupt a run that is still being renewed.
ALTER TABLE plan_runs ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz;
UPDATE plan_runs SET lease_expires_at = coalesce(heartbeat_at, created_at) + interval '30 seconds'
WHERE lease_expires_at IS NULL AND status IN ('queued', 'running');

-- 3. pilot_system: NOLOGIN, no BYPASSRLS, owns nothing, granted to the connecting
--    role like pilot_app and assumed only by Pilot's own system transactions
--    (database.system_transaction), never by a request's.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pilot_system') THEN
        CREATE ROLE pilot_system NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently by a migration of another database
END
$$;
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'pilot_system', 'MEMBER') THEN
        EXECUTE format('GRANT pilot_system TO %I', current_user);
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO pilot_system;

-- Its only table rights: renew the leases of unfinished runs. It sees a run's
-- id, owner and status (no user data), may change only the two lease columns,
-- and cannot move a run out of queued/running this way. These two policies are
-- for pilot_system alone; the four user policies of migration 003 still govern
-- everyone else.
REVOKE ALL ON plan_runs FROM pilot_system;
GRANT SELECT (id, owner_id, status) ON plan_runs TO pilot_system;
GRANT UPDATE (heartbeat_at, lease_expires_at) ON plan_runs TO pilot_system;
DROP POLICY IF EXISTS plan_runs_system_select ON plan_runs;
CREATE POLICY plan_runs_system_select ON plan_runs FOR SELECT TO pilot_system
    USING (status IN ('queued', 'running'));
DROP POLICY IF EXISTS plan_runs_system_update ON plan_runs;
CREATE POLICY plan_runs_system_update ON plan_runs FOR UPDATE TO pilot_system
    USING (status IN ('queued', 'running'))
    WITH CHECK (status IN ('queued', 'running'));

-- 4. Leases. Renewal runs as pilot_system under those policies (SECURITY
--    INVOKER: a policy serves, no bypassing owner needed). It names the runs the
--    caller is executing, so a run whose executor is gone stops being renewed
--    even while its process lives, and is reaped.
DROP FUNCTION IF EXISTS pilot_heartbeat(varchar);
CREATE OR REPLACE FUNCTION pilot_heartbeat(p_owner varchar, p_run_ids bigint[], p_lease_seconds integer)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY INVOKER
SET search_path = public, pg_temp
AS $$
    WITH renewed AS (
        UPDATE plan_runs
        SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => greatest(p_lease_seconds, 1))
        WHERE id = ANY (p_run_ids) AND owner_id = p_owner AND status IN ('queued', 'running')
        RETURNING 1
    )
    SELECT count(*)::integer FROM renewed
$$;

-- Mark runs interrupted: those of a given owner (its own graceful shutdown), or
-- those whose lease expired (their owner died: kill -9, OOM, power loss). It
-- reads the step in flight and changes the outcome, which no pilot_system policy
-- allows, so it stays SECURITY DEFINER (owned by the migrating role, which
-- bypasses RLS) and checks expiry itself rather than trusting the caller: a run
-- is reaped only once the lease its owner set has passed, and p_lease_seconds
-- (the reaper's own setting, never below 0) can only add patience.
CREATE OR REPLACE FUNCTION pilot_interrupt_runs(p_owner varchar, p_lease_seconds integer, p_reason text)
RETURNS TABLE (run_id bigint, plan_id bigint, user_id varchar)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    UPDATE plan_runs r
    SET status = 'interrupted',
        finished_at = now(),
        error = p_reason
            || CASE WHEN r.step_results -> -1 ->> 'status' = 'running'
                    THEN format('; step %s (%s.%s) was in flight: its outcome is unknown and it was not retried',
                                coalesce(r.step_results -> -1 ->> 'id', r.step_results -> -1 ->> 'index'),
                                r.step_results -> -1 ->> 'provider', r.step_results -> -1 ->> 'action')
                    ELSE '' END
    WHERE r.status IN ('queued', 'running')
      AND ((p_owner IS NOT NULL AND r.owner_id = p_owner)
           OR (p_owner IS NULL
               AND coalesce(r.lease_expires_at, r.heartbeat_at, r.created_at) < now()
               AND coalesce(r.heartbeat_at, r.created_at)
                   < now() - make_interval(secs => greatest(coalesce(p_lease_seconds, 0), 0))))
    RETURNING r.id, r.plan_id, r.user_id
$$;

-- 5. Who may call what. Listing every user's schedules stays a narrow SECURITY
--    DEFINER function too (a pilot_system policy on execution_plans would break
--    the checklist's "4 policies per table"). All three: pilot_system only.
--    pilot_token_user (migration 005) is the one SECURITY DEFINER function
--    pilot_app keeps: it resolves a token before any user is known.
REVOKE ALL ON FUNCTION pilot_list_schedules(bigint) FROM PUBLIC, pilot_app;
REVOKE ALL ON FUNCTION pilot_heartbeat(varchar, bigint[], integer) FROM PUBLIC, pilot_app;
REVOKE ALL ON FUNCTION pilot_interrupt_runs(varchar, integer, text) FROM PUBLIC, pilot_app;
GRANT EXECUTE ON FUNCTION pilot_list_schedules(bigint) TO pilot_system;
GRANT EXECUTE ON FUNCTION pilot_heartbeat(varchar, bigint[], integer) TO pilot_system;
GRANT EXECUTE ON FUNCTION pilot_interrupt_runs(varchar, integer, text) TO pilot_system;
