-- Pilot 017: every change to a run that a watcher can see (created, started, a step
-- begun or ended, finished) tells every Pilot process, on commit, whoever made it:
-- the engine, the reaper, psql. GET /api/runs/<id>/events (pilot/execution/events.py)
-- listens on one connection per process (pilot/data/listener.py) and re-reads the run
-- under row-level security, so the payload carries only which run changed and whose it is.
-- Lease renewals (heartbeat_at, lease_expires_at alone) notify nobody.
CREATE OR REPLACE FUNCTION pilot_notify_run_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('pilot_runs', json_build_object('run_id', NEW.id, 'user_id', NEW.user_id)::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS plan_runs_notify_insert ON plan_runs;
CREATE TRIGGER plan_runs_notify_insert
    AFTER INSERT ON plan_runs
    FOR EACH ROW EXECUTE FUNCTION pilot_notify_run_change();

DROP TRIGGER IF EXISTS plan_runs_notify_update ON plan_runs;
CREATE TRIGGER plan_runs_notify_update
    AFTER UPDATE ON plan_runs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.step_results IS DISTINCT FROM NEW.step_results
          OR OLD.error IS DISTINCT FROM NEW.error)
    EXECUTE FUNCTION pilot_notify_run_change();
