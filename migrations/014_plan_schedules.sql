-- Pilot 014: the scheduler claims whole ticks (issue 9, items 4 and 6).
--
-- Each enabled scheduled plan has one plan_schedules row holding the time of its
-- next slot, indexed. Every serving process ticks (about once a second) and, in
-- one transaction per batch, locks the due rows (FOR UPDATE SKIP LOCKED), inserts
-- their runs keyed by (plan_id, scheduled_for) and advances next_due_at: a
-- constant number of statements per tick whatever the number of plans due.
-- Cron arithmetic (DST, crontab day numbering, the schedule's timezone) stays in
-- Python; the database only stores and orders its answers.
--
-- next_due_at = '-infinity': not computed yet (the plan was created or its
-- schedule, timezone or enabled flag changed); the next tick computes it as the
-- first slot strictly after base_at. 'infinity': the trigger never fires.

CREATE TABLE IF NOT EXISTS plan_schedules (
    plan_id     bigint       PRIMARY KEY REFERENCES execution_plans (id) ON DELETE CASCADE,
    user_id     varchar(255) NOT NULL CHECK (user_id <> ''),
    next_due_at timestamptz  NOT NULL DEFAULT '-infinity',
    base_at     timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS plan_schedules_due_idx ON plan_schedules (next_due_at);
SELECT pilot_protect_user_table('plan_schedules');  -- forced RLS, four policies (migration 002)

-- Queue depth and the age of the oldest queued run, read by the scheduler's gauges.
CREATE INDEX IF NOT EXISTS plan_runs_queued_age_idx ON plan_runs (created_at) WHERE status = 'queued';

-- A short machine-readable reason on a skipped run: late, missed, overlap, budget
-- (the same column as the run queue's migration 013; whichever runs first adds it).
ALTER TABLE plan_runs ADD COLUMN IF NOT EXISTS reason varchar(32);

-- Every plan change keeps its schedule row in step, in the same transaction, whoever
-- makes it (API, psql, a migration). SECURITY DEFINER: it mirrors the row being
-- written and nothing else, so a pilot_app update needs no rights of its own here.
CREATE OR REPLACE FUNCTION pilot_sync_plan_schedule()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    IF NEW.schedule IS NULL OR NOT NEW.enabled THEN
        DELETE FROM plan_schedules WHERE plan_id = NEW.id;
    ELSIF TG_OP = 'INSERT'
          OR NEW.schedule IS DISTINCT FROM OLD.schedule
          OR NEW.timezone IS DISTINCT FROM OLD.timezone
          OR NEW.enabled IS DISTINCT FROM OLD.enabled
          OR NOT EXISTS (SELECT FROM plan_schedules s WHERE s.plan_id = NEW.id) THEN
        INSERT INTO plan_schedules (plan_id, user_id, next_due_at, base_at)
        VALUES (NEW.id, NEW.user_id, '-infinity', now())
        ON CONFLICT (plan_id) DO UPDATE
            SET user_id = EXCLUDED.user_id, next_due_at = '-infinity', base_at = EXCLUDED.base_at;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pilot_sync_plan_schedule() FROM PUBLIC;

DROP TRIGGER IF EXISTS execution_plans_schedule ON execution_plans;
CREATE TRIGGER execution_plans_schedule
    AFTER INSERT OR UPDATE ON execution_plans
    FOR EACH ROW EXECUTE FUNCTION pilot_sync_plan_schedule();

-- Plans scheduled before this version: their slots count after the later of the
-- last recorded slot and the last change, as the previous catch-up did.
INSERT INTO plan_schedules (plan_id, user_id, next_due_at, base_at)
SELECT p.id, p.user_id, '-infinity',
       greatest(p.updated_at, (SELECT max(r.scheduled_for) FROM plan_runs r WHERE r.plan_id = p.id))
FROM execution_plans p
WHERE p.schedule IS NOT NULL AND p.enabled
ON CONFLICT (plan_id) DO NOTHING;

-- One batch of due schedules, locked for this transaction (other processes skip
-- them), oldest first, with what the firing needs: the schedule, and its owner's
-- budget and this month's spend (issue 11: a spent refuse budget holds firings).
-- next_due_at comes back NULL while not computed yet ('-infinity').
CREATE OR REPLACE FUNCTION pilot_due_schedules(p_now timestamptz, p_limit integer)
RETURNS TABLE (plan_id bigint, user_id varchar, schedule jsonb, timezone varchar,
               next_due_at timestamptz, base_at timestamptz,
               monthly_usd numeric, on_exceed varchar, month_spent numeric)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    WITH due AS (
        -- The plan rows are locked too (KEY SHARE, as the runs' foreign key would), in the same
        -- step and skipping as well: a request changing a plan locks the plan, then its schedule
        -- (trigger), so a tick that locked the schedule first must not wait for the plan after.
        SELECT s.plan_id, s.user_id, s.next_due_at, s.base_at, p.schedule, p.timezone
        FROM plan_schedules s
        JOIN execution_plans p ON p.id = s.plan_id AND p.user_id = s.user_id
        WHERE s.next_due_at <= p_now AND p.enabled AND p.schedule IS NOT NULL
        ORDER BY s.next_due_at
        LIMIT greatest(p_limit, 0)
        FOR UPDATE OF s SKIP LOCKED
        FOR KEY SHARE OF p SKIP LOCKED
    )
    SELECT d.plan_id, d.user_id, d.schedule, d.timezone,
           CASE WHEN isfinite(d.next_due_at) THEN d.next_due_at END, d.base_at,
           b.monthly_usd, b.on_exceed,
           coalesce((SELECT sp.spent_usd FROM budget_spend sp
                     WHERE sp.user_id = d.user_id
                       AND sp.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date), 0)
    FROM due d
    LEFT JOIN budgets b ON b.user_id = d.user_id
    ORDER BY d.next_due_at
$$;

-- The outcome of one batch, in one statement: the slots' runs (a 'queued' slot
-- becomes 'skipped' (reason overlap) when a run of its plan is still queued or
-- running; a slot that already has a run is left alone) and each plan's next due
-- time (NULL: never). p_owner NULL queues runs with no owner and no lease, for any
-- process's claimer (the durable queue); else they are leased to that process.
CREATE OR REPLACE FUNCTION pilot_fire_schedules(
    p_owner varchar, p_lease_seconds integer,
    p_plan_ids bigint[], p_next_due timestamptz[],
    p_run_plans bigint[], p_run_slots timestamptz[], p_run_statuses text[], p_run_reasons text[],
    p_run_errors text[])
RETURNS TABLE (id bigint, plan_id bigint, user_id varchar, status varchar, scheduled_for timestamptz,
               reason varchar, error text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    WITH advanced AS (
        UPDATE plan_schedules s SET next_due_at = coalesce(a.next_due, 'infinity')
        FROM unnest(p_plan_ids, p_next_due) AS a(plan_id, next_due)
        WHERE s.plan_id = a.plan_id
        RETURNING s.plan_id
    ), wanted AS (
        SELECT w.plan_id, w.slot, w.status, w.reason, w.error
        FROM unnest(p_run_plans, p_run_slots, p_run_statuses, p_run_reasons, p_run_errors)
             AS w(plan_id, slot, status, reason, error)
    ), busy AS (
        -- the batch's plans with a run still queued or running, read once for the whole batch
        -- (not once per slot: with stale statistics that became a scan per slot)
        SELECT DISTINCT ON (r.plan_id) r.plan_id, r.user_id, r.id, r.status
        FROM plan_runs r
        WHERE r.status IN ('queued', 'running') AND r.plan_id = ANY (p_run_plans)
        ORDER BY r.plan_id, r.id
    ), inserted AS (
        INSERT INTO plan_runs (plan_id, user_id, trigger, scheduled_for, status, owner_id, heartbeat_at,
                               lease_expires_at, reason, error, finished_at)
        SELECT p.id, p.user_id, 'schedule', w.slot,
               CASE WHEN w.status = 'queued' AND busy.id IS NOT NULL THEN 'skipped' ELSE w.status END,
               p_owner,
               CASE WHEN p_owner IS NOT NULL THEN now() END,
               CASE WHEN p_owner IS NOT NULL THEN now() + make_interval(secs => p_lease_seconds) END,
               CASE WHEN w.status = 'queued' AND busy.id IS NOT NULL THEN 'overlap' ELSE w.reason END,
               CASE WHEN w.status = 'queued' AND busy.id IS NOT NULL
                    THEN format('skipped: run %s of this plan was still %s', busy.id, busy.status)
                    ELSE w.error END,
               CASE WHEN w.status <> 'queued' OR busy.id IS NOT NULL THEN now() END
        FROM wanted w
        JOIN execution_plans p ON p.id = w.plan_id
        LEFT JOIN busy ON w.status = 'queued' AND busy.plan_id = p.id AND busy.user_id = p.user_id
        ORDER BY w.plan_id, w.slot
        ON CONFLICT (plan_id, scheduled_for) DO NOTHING
        RETURNING plan_runs.id, plan_runs.plan_id, plan_runs.user_id, plan_runs.status,
                  plan_runs.scheduled_for, plan_runs.reason, plan_runs.error
    )
    SELECT i.id, i.plan_id, i.user_id, i.status, i.scheduled_for, i.reason, i.error FROM inserted i
$$;

-- What the scheduler's gauges show: schedules, queued runs and the oldest one's age (s).
CREATE OR REPLACE FUNCTION pilot_scheduler_stats()
RETURNS TABLE (schedules bigint, queued bigint, oldest_queued_seconds double precision)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT (SELECT count(*) FROM plan_schedules),
           (SELECT count(*) FROM plan_runs WHERE status = 'queued'),
           coalesce(extract(epoch FROM now() - (SELECT min(created_at) FROM plan_runs WHERE status = 'queued')), 0)::float8
$$;

REVOKE ALL ON FUNCTION pilot_due_schedules(timestamptz, integer) FROM PUBLIC, pilot_app;
REVOKE ALL ON FUNCTION pilot_fire_schedules(varchar, integer, bigint[], timestamptz[], bigint[], timestamptz[],
                                            text[], text[], text[]) FROM PUBLIC, pilot_app;
REVOKE ALL ON FUNCTION pilot_scheduler_stats() FROM PUBLIC, pilot_app;
GRANT EXECUTE ON FUNCTION pilot_due_schedules(timestamptz, integer) TO pilot_system;
GRANT EXECUTE ON FUNCTION pilot_fire_schedules(varchar, integer, bigint[], timestamptz[], bigint[], timestamptz[],
                                               text[], text[], text[]) TO pilot_system;
GRANT EXECUTE ON FUNCTION pilot_scheduler_stats() TO pilot_system;
