-- Pilot 019: fewer wake-ups per run (issue 9, item 5).
--
-- Until now the run events of migration 017 (JSON naming a run, on every insert,
-- status, progress and error change) went out on the run queue's channel
-- `pilot_runs`, so every claimer of every process woke three or four times per run
-- only to drop them; and every insert of a queued run woke every claimer, even when
-- the process that inserted it claims it itself the next moment (`?wait=true`).
--   * Run events move to their own channel, `pilot_run_events`; `pilot_runs` carries
--     only the queue's empty wake-ups (queued inserts, requeues).
--   * A transaction that sets `pilot.quiet_enqueue` to 'on' (transaction-local) inserts
--     its queued runs without the wake-up: the inserting process claims at once and
--     sends the wake-up itself (pg_notify('pilot_runs', '')) only if it did not take them.
CREATE OR REPLACE FUNCTION pilot_notify_run_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('pilot_run_events', json_build_object('run_id', NEW.id, 'user_id', NEW.user_id)::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pilot_notify_runs_queued()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF coalesce(current_setting('pilot.quiet_enqueue', true), '') <> 'on'
       AND EXISTS (SELECT 1 FROM pilot_new_runs WHERE status = 'queued') THEN
        PERFORM pg_notify('pilot_runs', '');
    END IF;
    RETURN NULL;
END
$$;
