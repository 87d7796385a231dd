-- Pilot 021: a `?wait=true` run starts in its own insert when nothing waits before it
-- (issue 9, item 5).
--
-- A waited run was inserted queued, then claimed by the same request thread in a
-- transaction of its own (the claimers' advisory lock, a second row version), then
-- finished: three transactions where the floor has two. When the queue is empty and the
-- user is under MAX_RUNNING_PER_USER, the claim could only have picked this very run,
-- so the insert now starts it itself (status running, the owner and lease a claim
-- would set), and the run costs two transactions: its insert and its finish.
--
-- A yes is given under the claimers' advisory lock, held until the insert commits, so
-- it counts what every claim and every other such insert has started: the per-user cap
-- stays exact across processes, and a run never jumps a queued one (any queued run at
-- all, of any user, sends the new run to the queue behind it). The conditions are
-- looked at once before the lock too: most refusals (a queue, a capped user) then take
-- no lock, for a refused run is inserted queued and its commit waits for the WAL flush,
-- which must not hold every claimer back (migration 018).
-- SECURITY DEFINER because the queue and the running count span users; it answers one
-- boolean about the caller (current_user_id()) and takes no user id, so pilot_app
-- learns nothing about other users' rows beyond "something is queued".
CREATE OR REPLACE FUNCTION pilot_may_start_now(p_max_per_user integer)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    me CONSTANT varchar := current_user_id();
BEGIN
    IF coalesce(me, '') = '' THEN
        RETURN false;
    END IF;
    FOR locked IN 0..1 LOOP
        IF locked = 1 THEN
            PERFORM pg_advisory_xact_lock(5049544, 13);  -- the claimers' lock (migrations 013, 018)
        END IF;
        -- Each statement takes a snapshot of its own: after the lock, it sees every start committed before it.
        IF EXISTS (SELECT 1 FROM plan_runs q WHERE q.status = 'queued')
           OR (SELECT count(*) FROM plan_runs r WHERE r.status = 'running' AND r.user_id = me) >= p_max_per_user THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION pilot_may_start_now(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pilot_may_start_now(integer) TO pilot_app;
