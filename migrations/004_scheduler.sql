-- Pilot 004: what the scheduler needs beyond RLS-scoped queries.
--
-- The scheduler must see every user's schedules and every process's leases.
-- It does so only through these narrow SECURITY DEFINER functions (owned by
-- the migrating role, which must bypass RLS: superuser or BYPASSRLS), never
-- through a bypassing login. Claims and runs then happen as the plan's owner,
-- under RLS, like any request.

CREATE OR REPLACE FUNCTION pilot_list_schedules(p_plan_id bigint DEFAULT NULL)
RETURNS TABLE (plan_id bigint, user_id varchar, schedule jsonb, timezone varchar,
               schedule_changed_at timestamptz, last_scheduled_for timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT p.id, p.user_id, p.schedule, p.timezone, p.updated_at,
           (SELECT max(r.scheduled_for) FROM plan_runs r WHERE r.plan_id = p.id)
    FROM execution_plans p
    WHERE p.schedule IS NOT NULL AND p.enabled AND (p_plan_id IS NULL OR p.id = p_plan_id)
    ORDER BY p.id
$$;

-- Renew the lease of every unfinished run this process owns.
CREATE OR REPLACE FUNCTION pilot_heartbeat(p_owner varchar)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    WITH renewed AS (
        UPDATE plan_runs SET heartbeat_at = now()
        WHERE owner_id = p_owner AND status IN ('queued', 'running')
        RETURNING 1
    )
    SELECT count(*)::integer FROM renewed
$$;

-- Mark runs interrupted: those of a given owner (graceful shutdown), or every
-- run whose lease expired (its owner died: kill -9, OOM, power loss). A step
-- that was in flight is reported as such: its outcome is unknown and it is
-- never retried blindly.
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
           OR (p_owner IS NULL AND r.heartbeat_at < now() - make_interval(secs => p_lease_seconds)))
    RETURNING r.id, r.plan_id, r.user_id
$$;

REVOKE ALL ON FUNCTION pilot_list_schedules(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pilot_heartbeat(varchar) FROM PUBLIC;
REVOKE ALL ON FUNCTION pilot_interrupt_runs(varchar, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pilot_list_schedules(bigint) TO pilot_app;
GRANT EXECUTE ON FUNCTION pilot_heartbeat(varchar) TO pilot_app;
GRANT EXECUTE ON FUNCTION pilot_interrupt_runs(varchar, integer, text) TO pilot_app;

-- Every change to a plan tells every Pilot process (LISTEN pilot_schedules),
-- on commit, whoever made it: the API, psql or a migration.
CREATE OR REPLACE FUNCTION pilot_notify_schedule_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('pilot_schedules', coalesce(NEW.id, OLD.id)::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS execution_plans_notify ON execution_plans;
CREATE TRIGGER execution_plans_notify
    AFTER INSERT OR UPDATE OR DELETE ON execution_plans
    FOR EACH ROW EXECUTE FUNCTION pilot_notify_schedule_change();
