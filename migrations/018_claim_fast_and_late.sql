-- Pilot 018: a claim that does not grow with the queue, hands over what a run needs,
-- and records scheduled runs that waited too long as skipped (issue 9, items 5 and 6).
--
-- Migration 013's claim ranked every queued row per user on every claim (a window
-- over the whole queue: 3-7 ms per claim with 5,000 queued), and the claimed run
-- then read its plan and plan version in a transaction of its own. Here:
--   * the per-user cap is computed over the oldest queued rows only (a prefix of the
--     queue in claim order: a user's rows in it are that user's oldest, so the rank is
--     the same as over the whole queue); only when that prefix cannot fill the claim
--     because capped users hold it are the users walked one by one (a loose index
--     scan over the users with queued runs, each user's free places from its oldest);
--   * each claimed row comes back with the steps it executes (its plan version's, or
--     the plan's) and whether its plan still exists, so starting a run costs nothing more;
--   * a scheduled run still queued SCHEDULER_MAX_LATENESS_SECONDS after it was fired
--     is not started minutes late: it ends `skipped`, reason `late`, and comes back
--     with `late` true so the claiming process counts it.
-- The old four-argument function is dropped: a process of an earlier version claims
-- nothing until it is restarted (its queued runs wait for the new processes).

-- A user's queued runs in claim order (the per-user walk and the queue limit's count).
CREATE INDEX IF NOT EXISTS plan_runs_user_queued_id_idx ON plan_runs (user_id, id) WHERE status = 'queued';
DROP INDEX IF EXISTS plan_runs_user_queued_idx;

DROP FUNCTION IF EXISTS pilot_claim_runs(varchar, integer, integer, integer);

CREATE OR REPLACE FUNCTION pilot_claim_runs(p_owner varchar, p_limit integer, p_max_per_user integer,
                                            p_lease_seconds integer, p_max_lateness_seconds double precision)
RETURNS TABLE (id bigint, plan_id bigint, user_id varchar, trigger varchar, scheduled_for timestamptz,
               status varchar, created_at timestamptz, started_at timestamptz, claimed_at timestamptz,
               owner_id varchar, lease_expires_at timestamptz, input jsonb, replay jsonb,
               plan_version_id bigint, attempts integer, reason varchar, error text, finished_at timestamptz,
               steps jsonb, plan_exists boolean, late boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    prefix CONSTANT integer := greatest(p_limit, 1) * 4 + 64;  -- oldest queued rows ranked on the fast path
    picked bigint[];
    seen integer;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(5049544, 13);  -- one claimer at a time (the cap is counted, then taken)

    -- 1. Scheduled runs queued longer than the lateness allows: skipped (late), not started.
    --    Only looked for when the oldest queued row is that old (one index probe otherwise).
    IF p_max_lateness_seconds IS NOT NULL AND EXISTS (
        SELECT 1 FROM (SELECT q.created_at FROM plan_runs q WHERE q.status = 'queued' ORDER BY q.id LIMIT 1) o
        WHERE o.created_at < now() - make_interval(secs => p_max_lateness_seconds)) THEN
        RETURN QUERY
        WITH oldest AS (
            SELECT q.id FROM plan_runs q
            WHERE q.status = 'queued' ORDER BY q.id LIMIT 1000
        ), late AS (
            SELECT r.id FROM plan_runs r
            WHERE r.id IN (SELECT oldest.id FROM oldest) AND r.status = 'queued' AND r.trigger = 'schedule'
              AND r.created_at < now() - make_interval(secs => p_max_lateness_seconds)
            FOR UPDATE SKIP LOCKED
        )
        UPDATE plan_runs r
        SET status = 'skipped', reason = 'late', finished_at = now(),
            error = format('skipped: late: it could not start within SCHEDULER_MAX_LATENESS_SECONDS (%s s) '
                           'of being queued', p_max_lateness_seconds)
        FROM late WHERE r.id = late.id
        RETURNING r.id, r.plan_id, r.user_id, r.trigger, r.scheduled_for, r.status, r.created_at, r.started_at,
                  r.claimed_at, r.owner_id, r.lease_expires_at, r.input, r.replay, r.plan_version_id, r.attempts,
                  r.reason, r.error, r.finished_at, NULL::jsonb, NULL::boolean, true;
    END IF;

    -- 2. Which runs: the oldest within the cap, ranked over a prefix of the queue.
    WITH head AS (
        SELECT q.id, q.user_id FROM plan_runs q WHERE q.status = 'queued' ORDER BY q.id LIMIT prefix
    ), running AS (
        SELECT r.user_id, count(*)::integer AS n FROM plan_runs r
        WHERE r.status = 'running' AND r.user_id IN (SELECT DISTINCT head.user_id FROM head)
        GROUP BY r.user_id
    ), ranked AS (
        SELECT head.id, coalesce(running.n, 0) + row_number() OVER (PARTITION BY head.user_id ORDER BY head.id) AS place
        FROM head LEFT JOIN running ON running.user_id = head.user_id
    )
    SELECT array_agg(x.id ORDER BY x.id), (SELECT count(*) FROM head)
    INTO picked, seen
    FROM (SELECT ranked.id FROM ranked
          WHERE p_max_per_user IS NULL OR ranked.place <= p_max_per_user
          ORDER BY ranked.id LIMIT p_limit) x;

    IF coalesce(cardinality(picked), 0) < p_limit AND seen >= prefix AND p_max_per_user IS NOT NULL THEN
        -- Capped users hold the head of the queue: walk the users with queued runs instead.
        WITH RECURSIVE users (u) AS (
            SELECT min(q.user_id) FROM plan_runs q WHERE q.status = 'queued'
            UNION ALL
            SELECT (SELECT min(q.user_id) FROM plan_runs q WHERE q.status = 'queued' AND q.user_id > users.u)
            FROM users WHERE users.u IS NOT NULL
        ), room AS (
            SELECT users.u,
                   p_max_per_user - (SELECT count(*) FROM plan_runs r WHERE r.status = 'running' AND r.user_id = users.u)
                       AS free
            FROM users WHERE users.u IS NOT NULL
        )
        SELECT array_agg(c.id ORDER BY c.id) INTO picked
        FROM (SELECT mine.id FROM room
              CROSS JOIN LATERAL (SELECT q.id FROM plan_runs q
                                  WHERE q.status = 'queued' AND q.user_id = room.u
                                  ORDER BY q.id LIMIT least(room.free, p_limit)) mine
              WHERE room.free > 0
              ORDER BY mine.id LIMIT p_limit) c;
    END IF;

    IF coalesce(cardinality(picked), 0) = 0 THEN
        RETURN;
    END IF;

    -- 3. Take them (a row locked or started meanwhile is skipped), start them, and hand over their steps.
    RETURN QUERY
    WITH locked AS (
        SELECT r.id FROM plan_runs r
        WHERE r.id = ANY (picked) AND r.status = 'queued'
        ORDER BY r.id
        FOR UPDATE SKIP LOCKED
    ), started AS (
        UPDATE plan_runs r
        SET status = 'running', owner_id = p_owner, started_at = now(), claimed_at = now(), heartbeat_at = now(),
            lease_expires_at = now() + make_interval(secs => greatest(p_lease_seconds, 1)),
            attempts = r.attempts + 1
        FROM locked WHERE r.id = locked.id
        RETURNING r.*
    )
    SELECT s.id, s.plan_id, s.user_id, s.trigger, s.scheduled_for, s.status, s.created_at, s.started_at,
           s.claimed_at, s.owner_id, s.lease_expires_at, s.input, s.replay, s.plan_version_id, s.attempts,
           s.reason, s.error, s.finished_at,
           CASE WHEN p.id IS NOT NULL THEN coalesce(v.steps, p.steps) END,
           p.id IS NOT NULL, false
    FROM started s
    LEFT JOIN execution_plans p ON p.id = s.plan_id AND p.user_id = s.user_id
    LEFT JOIN plan_versions v ON v.id = s.plan_version_id AND v.user_id = s.user_id
    ORDER BY s.id;
END
$$;

REVOKE ALL ON FUNCTION pilot_claim_runs(varchar, integer, integer, integer, double precision) FROM PUBLIC, pilot_app;
GRANT EXECUTE ON FUNCTION pilot_claim_runs(varchar, integer, integer, integer, double precision) TO pilot_system;
