-- Pilot 013: the queue is the runs table (issue 9, items 1-3).
--
-- Every accepted run is a plan_runs row with status 'queued' and its input;
-- nothing about it lives only in one process's memory. Any serving process with
-- free capacity claims queued rows with FOR UPDATE SKIP LOCKED (pilot_claim_runs),
-- oldest first, at most MAX_RUNNING_PER_USER running per user. An insert of a
-- queued row NOTIFYs pilot_runs on commit (one notification per statement,
-- whoever inserts: the API, the scheduler, psql), and claimers also poll.

-- 1. What the queue needs on a run: when it was claimed, how many times it was
--    claimed (a run requeued after a crash is retried a bounded number of times),
--    and a short machine-readable reason for a skipped or interrupted run.
ALTER TABLE plan_runs ADD COLUMN IF NOT EXISTS claimed_at timestamptz;
ALTER TABLE plan_runs ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE plan_runs ADD COLUMN IF NOT EXISTS reason varchar(32);

-- The queue in claim order, a user's queued and running counts (429, the cap).
CREATE INDEX IF NOT EXISTS plan_runs_queued_idx ON plan_runs (id) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS plan_runs_user_queued_idx ON plan_runs (user_id) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS plan_runs_user_running_idx ON plan_runs (user_id) WHERE status = 'running';

-- A queued row waits for a claimer: it has no owner and no lease until claimed.
-- (Rows queued by an earlier version carry the inserting process as owner; the
-- reaper below never touches queued rows, so they are simply claimed.)

-- 2. Wake the claimers: one NOTIFY per statement that inserted a queued run
--    (identical notifications of one transaction are folded into one on commit).
CREATE OR REPLACE FUNCTION pilot_notify_runs_queued()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pilot_new_runs WHERE status = 'queued') THEN
        PERFORM pg_notify('pilot_runs', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS plan_runs_notify_queued ON plan_runs;
CREATE TRIGGER plan_runs_notify_queued
    AFTER INSERT ON plan_runs
    REFERENCING NEW TABLE AS pilot_new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pilot_notify_runs_queued();

-- 3. The claim. Claims cross users, so, like listing schedules and reaping, it is a
--    narrow SECURITY DEFINER function (owned by the migrating role, which bypasses
--    RLS) that only pilot_system may call. Claims are serialized by a transaction
--    advisory lock so the per-user cap holds exactly across processes; the rows
--    themselves are taken FOR UPDATE SKIP LOCKED, oldest first, and started in the
--    same statement (status, owner, lease, started_at, claimed_at, attempts).
CREATE OR REPLACE FUNCTION pilot_claim_runs(p_owner varchar, p_limit integer, p_max_per_user integer,
                                            p_lease_seconds integer)
RETURNS SETOF plan_runs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(5049544, 13);  -- one claimer at a time (the cap is counted, then taken)
    RETURN QUERY
    WITH running AS (
        SELECT r.user_id, count(*)::integer AS n FROM plan_runs r WHERE r.status = 'running' GROUP BY r.user_id
    ), ranked AS (
        SELECT q.id, coalesce(running.n, 0) + row_number() OVER (PARTITION BY q.user_id ORDER BY q.id) AS place
        FROM plan_runs q LEFT JOIN running ON running.user_id = q.user_id
        WHERE q.status = 'queued'
    ), picked AS (
        SELECT ranked.id FROM ranked
        WHERE p_max_per_user IS NULL OR ranked.place <= p_max_per_user
        ORDER BY ranked.id LIMIT p_limit
    ), locked AS (
        SELECT r.id FROM plan_runs r
        WHERE r.id IN (SELECT picked.id FROM picked) AND r.status = 'queued'
        ORDER BY r.id
        FOR UPDATE SKIP LOCKED
    )
    UPDATE plan_runs r
    SET status = 'running', owner_id = p_owner, started_at = now(), claimed_at = now(), heartbeat_at = now(),
        lease_expires_at = now() + make_interval(secs => greatest(p_lease_seconds, 1)), attempts = r.attempts + 1
    FROM locked WHERE r.id = locked.id
    RETURNING r.*;
END
$$;

-- Whether a run's recorded steps did nothing but side-effect-free work: every entry
-- of step_results is a `pure` step (logic) or was skipped. Such a run may run again.
CREATE OR REPLACE FUNCTION pilot_run_is_pure(p_step_results jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = public, pg_temp
AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_step_results) = 'array'
                                                THEN p_step_results ELSE '[]'::jsonb END) e
        WHERE coalesce(e ->> 'status', '') <> 'skipped' AND coalesce(e ->> 'pure', 'false') <> 'true')
$$;

-- 4. Reaping, redefined (same signature as migration 006). Only running rows are
--    reaped: a queued row waits for any claimer, however old. A running row whose
--    lease lapsed (its process died) is
--      - requeued when nothing it did so far had side effects (every step recorded
--        in step_results is a `pure` one, i.e. logic, or was skipped), at most 3
--        claims in all: the log rows of its pure steps are deleted, since it runs
--        again from its first step, and the claimers are woken;
--      - otherwise interrupted, naming the step that was in flight (never re-sent).
--    Its own graceful shutdown (p_owner set) interrupts that process's running
--    rows only; its queued rows stay queued for the other processes.
CREATE OR REPLACE FUNCTION pilot_interrupt_runs(p_owner varchar, p_lease_seconds integer, p_reason text)
RETURNS TABLE (run_id bigint, plan_id bigint, user_id varchar)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    requeued integer := 0;
BEGIN
    IF p_owner IS NULL THEN
        WITH lapsed AS (
            SELECT r.id FROM plan_runs r
            WHERE r.status = 'running'
              AND coalesce(r.lease_expires_at, r.heartbeat_at, r.created_at) < now()
              AND coalesce(r.heartbeat_at, r.created_at)
                  < now() - make_interval(secs => greatest(coalesce(p_lease_seconds, 0), 0))
              AND r.attempts < 3
              AND pilot_run_is_pure(r.step_results)
            FOR UPDATE SKIP LOCKED
        ), cleared AS (
            DELETE FROM execution_logs l USING lapsed WHERE l.run_id = lapsed.id
        )
        UPDATE plan_runs r
        SET status = 'queued', owner_id = NULL, started_at = NULL, claimed_at = NULL, heartbeat_at = NULL,
            lease_expires_at = NULL, step_results = '[]'::jsonb, error = NULL
        FROM lapsed WHERE r.id = lapsed.id;
        GET DIAGNOSTICS requeued = ROW_COUNT;
        IF requeued > 0 THEN
            PERFORM pg_notify('pilot_runs', '');
        END IF;
    END IF;
    RETURN QUERY
    UPDATE plan_runs r
    SET status = 'interrupted',
        finished_at = now(),
        error = p_reason
            || CASE WHEN r.step_results -> -1 ->> 'status' = 'running'
                    THEN format('; step %s (%s.%s) was in flight: its outcome is unknown and it was not retried',
                                coalesce(r.step_results -> -1 ->> 'id', r.step_results -> -1 ->> 'index'),
                                r.step_results -> -1 ->> 'provider', r.step_results -> -1 ->> 'action')
                    ELSE '' END
    WHERE r.status = 'running'
      AND ((p_owner IS NOT NULL AND r.owner_id = p_owner)
           OR (p_owner IS NULL
               AND coalesce(r.lease_expires_at, r.heartbeat_at, r.created_at) < now()
               AND coalesce(r.heartbeat_at, r.created_at)
                   < now() - make_interval(secs => greatest(coalesce(p_lease_seconds, 0), 0))
               -- one the requeue above skipped (locked just then) waits for the next pass
               AND NOT (r.attempts < 3 AND pilot_run_is_pure(r.step_results))))
    RETURNING r.id, r.plan_id, r.user_id;
END
$$;

REVOKE ALL ON FUNCTION pilot_run_is_pure(jsonb) FROM PUBLIC;  -- used by the reaper, as its owner
REVOKE ALL ON FUNCTION pilot_claim_runs(varchar, integer, integer, integer) FROM PUBLIC, pilot_app;
REVOKE ALL ON FUNCTION pilot_interrupt_runs(varchar, integer, text) FROM PUBLIC, pilot_app;
GRANT EXECUTE ON FUNCTION pilot_claim_runs(varchar, integer, integer, integer) TO pilot_system;
GRANT EXECUTE ON FUNCTION pilot_interrupt_runs(varchar, integer, text) TO pilot_system;
