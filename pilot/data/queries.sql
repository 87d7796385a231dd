-- Every query Pilot runs, named. Parsed once by store.py; values are always
-- %(name)s parameters. Tables are protected by forced RLS: queries also filter
-- by user_id so the planner can use the per-user indexes.

-- name: upsert_credential
INSERT INTO provider_credentials (user_id, provider, type, encrypted_value)
VALUES (%(user_id)s, %(provider)s, %(type)s, %(encrypted_value)s)
ON CONFLICT (user_id, provider, type)
DO UPDATE SET encrypted_value = EXCLUDED.encrypted_value, updated_at = now()
RETURNING provider, type, encrypted_value, created_at, updated_at;

-- name: list_credentials
SELECT provider, type, encrypted_value, created_at, updated_at
FROM provider_credentials
WHERE user_id = %(user_id)s AND (%(provider)s::text IS NULL OR provider = %(provider)s)
ORDER BY provider, type;

-- name: delete_credentials
DELETE FROM provider_credentials
WHERE user_id = %(user_id)s AND provider = %(provider)s AND (%(type)s::text IS NULL OR type = %(type)s)
RETURNING type;

-- name: all_credentials_for_update
SELECT id, user_id, provider, type, encrypted_value FROM provider_credentials ORDER BY id FOR UPDATE;

-- name: set_encrypted_value
UPDATE provider_credentials SET encrypted_value = %(encrypted_value)s WHERE id = %(id)s;

-- name: insert_plan
INSERT INTO execution_plans (user_id, name, original_prompt, steps, schedule, timezone, enabled, max_cost_usd)
VALUES (%(user_id)s, %(name)s, %(original_prompt)s, %(steps)s, %(schedule)s, %(timezone)s, %(enabled)s,
        %(max_cost_usd)s)
RETURNING *;

-- name: list_plans
SELECT * FROM execution_plans WHERE user_id = %(user_id)s ORDER BY id LIMIT %(limit)s OFFSET %(offset)s;

-- name: get_plan
SELECT * FROM execution_plans WHERE user_id = %(user_id)s AND id = %(id)s;

-- name: get_plan_for_update
SELECT * FROM execution_plans WHERE user_id = %(user_id)s AND id = %(id)s FOR UPDATE;

-- name: update_plan
UPDATE execution_plans
SET name = %(name)s, original_prompt = %(original_prompt)s, steps = %(steps)s, schedule = %(schedule)s,
    timezone = %(timezone)s, enabled = %(enabled)s, max_cost_usd = %(max_cost_usd)s, updated_at = now()
WHERE user_id = %(user_id)s AND id = %(id)s
RETURNING *;

-- name: delete_plan
DELETE FROM execution_plans WHERE user_id = %(user_id)s AND id = %(id)s RETURNING id;

-- name: insert_log
INSERT INTO execution_logs (user_id, plan_id, run_id, step_index, step_id, provider, action, status, latency_ms,
                            error_code, error, attempt, input, output, model, input_tokens, output_tokens, cost_usd)
VALUES (%(user_id)s, %(plan_id)s, %(run_id)s, %(step_index)s, %(step_id)s, %(provider)s, %(action)s, %(status)s,
        %(latency_ms)s, %(error_code)s, %(error)s, %(attempt)s, %(input)s, %(output)s, %(model)s, %(input_tokens)s,
        %(output_tokens)s, %(cost_usd)s)
RETURNING id;

-- name: list_logs
SELECT id, plan_id, run_id, step_index, step_id, provider, action, status, latency_ms, error_code, error, attempt,
       input, output, "timestamp", model, input_tokens, output_tokens, cost_usd::float8 AS cost_usd
FROM execution_logs
WHERE user_id = %(user_id)s
  AND (%(provider)s::text IS NULL OR provider = %(provider)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(plan_id)s::bigint IS NULL OR plan_id = %(plan_id)s)
  AND (%(run_id)s::bigint IS NULL OR run_id = %(run_id)s)
  AND (%(since)s::timestamptz IS NULL OR "timestamp" >= %(since)s)
ORDER BY "timestamp" DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: run_logs
-- The columns and order live in pilot_run_logs (migration 020), which finish_run uses too.
SELECT * FROM pilot_run_logs(%(user_id)s, %(run_id)s);

-- name: provider_metrics
-- Whole hours from provider_metrics_hourly (migration 015), the rest of the window from execution_logs:
-- counts and rates exact; p95 exact (raw_p95) when no rolled-up hour is in the window, else estimated by
-- store.provider_metrics from latency_buckets, the summed histogram.
WITH w AS (
    SELECT since, date_trunc('hour', since, 'UTC') + interval '1 hour' AS first_full,
           coalesce((SELECT rolled_until FROM metrics_rollup_state), '-infinity') AS rolled
    FROM (SELECT now() - make_interval(hours => %(hours)s) AS since) AS s
),
raw AS (  -- what the rollup does not hold: the partial first hour, and the hours not rolled up yet
    SELECT l.provider, l.status, l.latency_ms, l."timestamp" FROM execution_logs l, w
    WHERE l.user_id = %(user_id)s AND l."timestamp" > w.since AND l."timestamp" < w.first_full
    UNION ALL
    SELECT l.provider, l.status, l.latency_ms, l."timestamp" FROM execution_logs l, w
    WHERE l.user_id = %(user_id)s AND l."timestamp" > w.since AND l."timestamp" >= greatest(w.rolled, w.first_full)
),
hourly AS (
    SELECT h.* FROM provider_metrics_hourly h, w
    WHERE h.user_id = %(user_id)s AND h.hour >= w.first_full AND h.hour < w.rolled
),
totals AS (
    SELECT provider, count(*) AS total, count(*) FILTER (WHERE status = 'success') AS successful,
           count(*) FILTER (WHERE status = 'error') AS failed, sum(latency_ms) AS latency_sum,
           max(latency_ms) AS latency_max, 0 AS rolled,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS raw_p95
    FROM raw GROUP BY provider
    UNION ALL
    SELECT provider, total, successful, failed, latency_sum, latency_max, total, NULL FROM hourly
),
buckets AS (
    SELECT provider, bucket, sum(n) AS n FROM (
        SELECT provider, width_bucket(latency_ms, pilot_latency_bounds()) AS bucket, count(*) AS n
        FROM raw GROUP BY 1, 2
        UNION ALL
        SELECT h.provider, (c.i - 1)::integer, c.n FROM hourly h, unnest(h.buckets) WITH ORDINALITY AS c(n, i)
        WHERE c.n > 0
    ) AS b GROUP BY 1, 2
)
SELECT t.provider,
       sum(t.total)::bigint AS total_executions,
       sum(t.successful)::bigint AS successful,
       sum(t.failed)::bigint AS failed,
       round(100.0 * sum(t.successful) / sum(t.total), 2)::float AS success_rate,
       round((sum(t.latency_sum) / sum(t.total))::numeric, 2)::float AS avg_latency_ms,
       max(t.latency_max) AS max_latency_ms,
       sum(t.rolled)::bigint AS rolled_total,
       max(t.raw_p95) AS raw_p95,
       (SELECT json_agg(json_build_array(b.bucket, b.n) ORDER BY b.bucket) FROM buckets b
        WHERE b.provider = t.provider) AS latency_buckets
FROM totals t
GROUP BY t.provider
ORDER BY success_rate ASC, t.provider;

-- name: error_trends
-- Errors per UTC hour: whole hours from provider_metrics_hourly, the rest from execution_logs (exact).
WITH w AS (
    SELECT since, date_trunc('hour', since, 'UTC') + interval '1 hour' AS first_full,
           coalesce((SELECT rolled_until FROM metrics_rollup_state), '-infinity') AS rolled
    FROM (SELECT now() - make_interval(hours => %(hours)s) AS since) AS s
),
raw AS (  -- what the rollup does not hold: the partial first hour, and the hours not rolled up yet
    SELECT l.provider, l.status, l.latency_ms, l."timestamp" FROM execution_logs l, w
    WHERE l.user_id = %(user_id)s AND l."timestamp" > w.since AND l."timestamp" < w.first_full
    UNION ALL
    SELECT l.provider, l.status, l.latency_ms, l."timestamp" FROM execution_logs l, w
    WHERE l.user_id = %(user_id)s AND l."timestamp" > w.since AND l."timestamp" >= greatest(w.rolled, w.first_full)
),
hourly AS (
    SELECT h.* FROM provider_metrics_hourly h, w
    WHERE h.user_id = %(user_id)s AND h.hour >= w.first_full AND h.hour < w.rolled
),
parts AS (
    SELECT date_trunc('hour', "timestamp", 'UTC') AS hour, provider, count(*) AS total,
           count(*) FILTER (WHERE status = 'error') AS errors
    FROM raw GROUP BY 1, 2
    UNION ALL
    SELECT hour, provider, total, failed FROM hourly
)
SELECT hour, provider, sum(total)::bigint AS total, sum(errors)::bigint AS errors,
       round(100.0 * sum(errors) / sum(total), 2)::float AS error_rate
FROM parts
GROUP BY 1, 2
ORDER BY hour DESC, provider;

-- name: jit_off
-- The metrics reads' row estimates are blind to the rollup's watermark (read by the query itself), so their
-- cost can cross jit_above_cost: JIT then compiles for ~0.8 s a query that runs in ~30 ms.
SET LOCAL jit = off;

-- name: rollup_metrics
SELECT pilot_rollup_metrics(%(settle_seconds)s, %(max_hours)s) AS hours;

-- name: rollup_pruned
SELECT pilot_rollup_pruned(%(cutoff)s);

-- name: rollup_state
SELECT rolled_until, rolled_at FROM metrics_rollup_state;

-- name: provider_metrics_raw
-- The raw query, over every row of the window: the reference the rollup is tested and benched against.
SELECT provider,
       count(*) AS total_executions,
       count(*) FILTER (WHERE status = 'success') AS successful,
       count(*) FILTER (WHERE status = 'error') AS failed,
       round(100.0 * count(*) FILTER (WHERE status = 'success') / count(*), 2)::float AS success_rate,
       round(avg(latency_ms)::numeric, 2)::float AS avg_latency_ms,
       max(latency_ms) AS max_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms
FROM execution_logs
WHERE user_id = %(user_id)s AND "timestamp" > now() - make_interval(hours => %(hours)s)
GROUP BY provider
ORDER BY success_rate ASC, provider;

-- name: error_trends_raw
SELECT date_trunc('hour', "timestamp", 'UTC') AS hour,
       provider,
       count(*) AS total,
       count(*) FILTER (WHERE status = 'error') AS errors,
       round(100.0 * count(*) FILTER (WHERE status = 'error') / count(*), 2)::float AS error_rate
FROM execution_logs
WHERE user_id = %(user_id)s AND "timestamp" > now() - make_interval(hours => %(hours)s)
GROUP BY 1, 2
ORDER BY hour DESC, provider;

-- name: insert_run
-- The run's input is kept on its row; the engine reads it when it executes the run.
-- plan_version_id NULL: the plan's latest version (trigger of migration 016); a replay names its own.
INSERT INTO plan_runs (plan_id, user_id, trigger, scheduled_for, status, owner_id, heartbeat_at, lease_expires_at,
                       error, finished_at, input, plan_version_id, replayed_from, replay)
VALUES (%(plan_id)s, %(user_id)s, %(trigger)s, %(scheduled_for)s, %(status)s, %(owner_id)s, now(),
        now() + make_interval(secs => %(lease_seconds)s), %(error)s,
        CASE WHEN %(status)s = 'skipped' THEN now() END, %(input)s, %(plan_version_id)s, %(replayed_from)s,
        %(replay)s)
ON CONFLICT (plan_id, scheduled_for) DO NOTHING
RETURNING *;

-- name: enqueue_run
-- An accepted run, queued with its input for any process's claimer (issue 9). No owner
-- and no lease until claimed; the insert NOTIFYs pilot_runs on commit (trigger,
-- migration 013). With queue_max set, nothing is inserted (no row back) when the user
-- already has that many queued runs; with scheduled_for set, nothing either when the
-- (plan, slot) has a run already; nor when the plan is not the user's (checked here,
-- in the same statement: RLS does not cover the foreign key).
-- plan_version_id NULL: the plan's latest version (trigger of migration 016); a replay names its own.
-- With start_owner set (?wait=true), the run is inserted already started for that owner when
-- migration 021's pilot_may_start_now says a claim would take it now (nothing queued, the user
-- under max_per_user): status running with the owner, lease and attempt a claim sets, and the
-- steps it executes in `steps` (NULL for a queued run). A started run's commit does not wait for
-- its WAL flush (as a claim's, commit_without_flush): nothing has been answered for it yet, and the
-- run's next synchronous commit (a marker, its finish, the lease renewal before a 202) flushes it.
-- A queued run's commit does wait: a 202 may follow at once.
WITH start AS MATERIALIZED (
    SELECT CASE WHEN %(start_owner)s::varchar IS NULL THEN false
                ELSE pilot_may_start_now(%(max_per_user)s) END AS now
), run AS (
    INSERT INTO plan_runs (plan_id, user_id, trigger, scheduled_for, status, input, reason,
                           plan_version_id, replayed_from, replay,
                           owner_id, started_at, claimed_at, heartbeat_at, lease_expires_at, attempts)
    SELECT p.id, p.user_id, %(trigger)s, %(scheduled_for)s, CASE WHEN start.now THEN 'running' ELSE 'queued' END,
           %(input)s, %(reason)s, %(plan_version_id)s, %(replayed_from)s, %(replay)s,
           CASE WHEN start.now THEN %(start_owner)s END, CASE WHEN start.now THEN now() END,
           CASE WHEN start.now THEN now() END, CASE WHEN start.now THEN now() END,
           CASE WHEN start.now THEN now() + make_interval(secs => greatest(%(lease_seconds)s::integer, 1)) END,
           CASE WHEN start.now THEN 1 ELSE 0 END
    FROM execution_plans p CROSS JOIN start
    WHERE p.user_id = %(user_id)s AND p.id = %(plan_id)s
      AND (%(queue_max)s::integer IS NULL
           OR (SELECT count(*) FROM plan_runs q WHERE q.user_id = %(user_id)s AND q.status = 'queued') < %(queue_max)s)
    ON CONFLICT (plan_id, scheduled_for) DO NOTHING
    RETURNING *
)
SELECT run.*, CASE WHEN run.status = 'running' THEN coalesce(v.steps, p.steps) END AS steps,
       CASE WHEN run.status = 'running' THEN set_config('synchronous_commit', 'off', true) END AS unflushed
FROM run
JOIN execution_plans p ON p.id = run.plan_id AND p.user_id = run.user_id
LEFT JOIN plan_versions v ON v.id = run.plan_version_id AND v.user_id = run.user_id;

-- name: commit_without_flush
-- This transaction's commit does not wait for its WAL to reach the disk. Only for a claim
-- (migration 018): claims hold the claimers' advisory lock through their commit, so waiting
-- for the flush there serialized every claim of every process behind one fsync each. A
-- claim lost to a database crash leaves its runs queued (run again from the start, as a
-- requeue would); nothing a run does after its claim can be durable without it, since every
-- later synchronous commit (a step's marker, the finish) flushes the WAL before it.
SET LOCAL synchronous_commit TO off;

-- name: quiet_enqueue
-- The queued runs this transaction inserts wake no claimer (migration 019): the caller claims
-- them itself at once, and sends the wake-up (notify_queued) if it did not take them all.
SELECT set_config('pilot.quiet_enqueue', 'on', true);

-- name: notify_queued
SELECT pg_notify('pilot_runs', '');

-- name: queued_count
SELECT count(*) AS queued FROM plan_runs WHERE user_id = %(user_id)s AND status = 'queued';

-- name: claim_runs
-- Up to ``limit`` queued runs of any user, oldest first, within the per-user cap,
-- started for ``owner`` in one statement with the steps each executes (SECURITY
-- DEFINER; pilot_system only, migration 018); scheduled runs queued longer than
-- ``max_lateness`` seconds come back as well, ended skipped (late true).
SELECT * FROM pilot_claim_runs(%(owner)s, %(limit)s, %(max_per_user)s, %(lease_seconds)s, %(max_lateness)s);

-- name: start_run
UPDATE plan_runs
SET status = 'running', started_at = now(), owner_id = %(owner_id)s, heartbeat_at = now(),
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE user_id = %(user_id)s AND id = %(id)s AND status = 'queued'
RETURNING *;

-- name: progress_run
-- With owner_id set, only while that process still holds the run: one whose lease lapsed
-- may have been requeued and claimed by another process since.
UPDATE plan_runs SET step_results = %(step_results)s, heartbeat_at = now()
WHERE user_id = %(user_id)s AND id = %(id)s AND status = 'running'
  AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s);

-- name: append_progress
-- The entries since the last marker, ending with the step now running; the previous marker (the last
-- entry, when it says running) is replaced by its step's outcome, which is among the new entries.
UPDATE plan_runs
SET step_results = CASE WHEN step_results -> -1 ->> 'status' = 'running' THEN step_results - (-1)
                        ELSE step_results END || %(entries)s,
    heartbeat_at = now()
WHERE user_id = %(user_id)s AND id = %(id)s AND status = 'running'
  AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s);

-- name: finish_run
-- With with_logs, the row comes back with its run's log rows too (run_logs' rows, as JSON), those
-- written by this transaction's earlier statements included: a ?wait=true answer needs no read.
-- user_queued: the user has runs queued, which the place this run frees may let a claim start now.
UPDATE plan_runs SET status = %(status)s, finished_at = now(), step_results = %(step_results)s, error = %(error)s
WHERE user_id = %(user_id)s AND id = %(id)s AND status IN ('queued', 'running')
  AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s)
RETURNING *, CASE WHEN %(with_logs)s THEN
    (SELECT coalesce(json_agg(l ORDER BY l.id), '[]'::json) FROM pilot_run_logs(plan_runs.user_id, plan_runs.id) l)
END AS logs,
    EXISTS (SELECT 1 FROM plan_runs q
            WHERE q.user_id = plan_runs.user_id AND q.status = 'queued' AND q.id <> plan_runs.id) AS user_queued;

-- name: get_run
SELECT * FROM plan_runs WHERE user_id = %(user_id)s AND id = %(id)s;

-- name: get_plan_version
SELECT id, plan_id, version, steps, created_at FROM plan_versions WHERE user_id = %(user_id)s AND id = %(id)s;

-- name: list_plan_versions
SELECT id, plan_id, version, steps, created_at FROM plan_versions
WHERE user_id = %(user_id)s AND plan_id = %(plan_id)s ORDER BY version;

-- name: list_runs
SELECT * FROM plan_runs WHERE user_id = %(user_id)s AND plan_id = %(plan_id)s
ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_user_runs
-- A user's runs across plans for GET /api/runs (served by plan_runs_user_idx);
-- step_results stay out of the list: they can be large and the list is polled.
SELECT r.id, r.plan_id, p.name AS plan_name, r.user_id, r.trigger, r.scheduled_for, r.status, r.created_at,
       r.started_at, r.finished_at, r.error, r.plan_version_id, r.replayed_from
FROM plan_runs r
LEFT JOIN execution_plans p ON p.user_id = r.user_id AND p.id = r.plan_id
WHERE r.user_id = %(user_id)s
  AND (%(plan_id)s::bigint IS NULL OR r.plan_id = %(plan_id)s)
  AND (%(status)s::text IS NULL OR r.status = %(status)s)
  AND (%(trigger)s::text IS NULL OR r.trigger = %(trigger)s)
  AND (%(before)s::bigint IS NULL OR r.id < %(before)s)
ORDER BY r.id DESC
LIMIT %(limit)s;

-- name: recent_finished_runs
SELECT status FROM plan_runs
WHERE user_id = %(user_id)s AND plan_id = %(plan_id)s AND trigger = 'schedule'
  AND status IN ('success', 'error', 'interrupted')
ORDER BY id DESC LIMIT %(limit)s;

-- name: set_plan_enabled
UPDATE execution_plans SET enabled = %(enabled)s, updated_at = now()
WHERE user_id = %(user_id)s AND id = %(id)s
RETURNING *;

-- name: due_schedules
-- One tick's batch: due schedules locked FOR UPDATE SKIP LOCKED (only in a system_transaction).
SELECT * FROM pilot_due_schedules(%(now)s, %(limit)s);

-- name: fire_schedules
-- The batch's runs and next due times, in the same transaction as due_schedules.
SELECT * FROM pilot_fire_schedules(%(owner)s, %(lease_seconds)s, %(plan_ids)s::bigint[], %(next_due)s::timestamptz[],
                                   %(run_plans)s::bigint[], %(run_slots)s::timestamptz[], %(run_statuses)s::text[],
                                   %(run_reasons)s::text[], %(run_errors)s::text[]);

-- name: scheduler_stats
SELECT * FROM pilot_scheduler_stats();

-- name: heartbeat
SELECT pilot_heartbeat(%(owner)s, %(run_ids)s::bigint[], %(lease_seconds)s) AS renewed;

-- name: interrupt_runs
SELECT * FROM pilot_interrupt_runs(%(owner)s, %(lease_seconds)s, %(reason)s);

-- name: list_scheduled_plans
-- With the stored next due time (NULL while paused or never), whether it is still to be computed
-- (due_pending: then it is the first slot after base_at).
SELECT p.id, p.name, p.schedule, p.timezone, p.enabled, s.base_at,
       CASE WHEN isfinite(s.next_due_at) THEN s.next_due_at END AS next_due_at,
       s.next_due_at = '-infinity' AS due_pending
FROM execution_plans p
LEFT JOIN plan_schedules s ON s.user_id = p.user_id AND s.plan_id = p.id
WHERE p.user_id = %(user_id)s AND p.schedule IS NOT NULL ORDER BY p.id;

-- name: all_cron_plans
-- Every user's plans with a cron schedule: operator commands only (connecting role, not pilot_app).
SELECT id, user_id, name, schedule->>'cron' AS cron,
       coalesce(nullif(schedule->>'timezone', ''), timezone) AS timezone, enabled
FROM execution_plans WHERE schedule->>'cron' IS NOT NULL ORDER BY id;

-- name: insert_api_token
INSERT INTO api_tokens (user_id, name, token_hash) VALUES (%(user_id)s, %(name)s, %(token_hash)s)
RETURNING id, user_id, name, created_at;

-- name: list_api_tokens
SELECT id, name, created_at, last_used_at, revoked_at FROM api_tokens WHERE user_id = %(user_id)s ORDER BY id;

-- name: revoke_api_token
UPDATE api_tokens SET revoked_at = now()
WHERE user_id = %(user_id)s AND id = %(id)s AND revoked_at IS NULL
RETURNING id;

-- name: token_user
SELECT pilot_token_user(%(token_hash)s) AS user_id;

-- name: role_bypasses_rls
SELECT rolsuper OR rolbypassrls AS bypass FROM pg_roles WHERE rolname = current_user;

-- name: function_owner_bypasses_rls
SELECT coalesce(bool_and(r.rolsuper OR r.rolbypassrls), false) AS bypass
FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
WHERE p.proname = %(function)s;

-- name: prune_logs_batch
WITH batch AS (
    SELECT id FROM execution_logs
    WHERE id > %(after_id)s AND "timestamp" < %(cutoff)s
    ORDER BY id LIMIT %(limit)s
)
DELETE FROM execution_logs e USING batch WHERE e.id = batch.id
RETURNING e.id;

-- name: prune_runs_batch
-- Finished runs only, and never a plan's latest run (the scheduler's memory of
-- its last firing).
WITH batch AS (
    SELECT r.id FROM plan_runs r
    WHERE r.id > %(after_id)s
      AND r.status NOT IN ('queued', 'running')
      AND coalesce(r.finished_at, r.created_at) < %(cutoff)s
      AND EXISTS (SELECT 1 FROM plan_runs newer WHERE newer.plan_id = r.plan_id AND newer.id > r.id)
    ORDER BY r.id LIMIT %(limit)s
)
DELETE FROM plan_runs r USING batch WHERE r.id = batch.id
RETURNING r.id;

-- name: all_credentials
-- Every user's credentials, not locked: redact-history reads them once to know each user's secrets.
SELECT id, user_id, provider, type, encrypted_value FROM provider_credentials ORDER BY id;

-- name: logs_to_redact
SELECT id, user_id, error, input, output FROM execution_logs
WHERE id > %(after_id)s ORDER BY id LIMIT %(limit)s FOR UPDATE;

-- name: set_log_redacted
UPDATE execution_logs SET error = %(error)s, input = %(input)s, output = %(output)s WHERE id = %(id)s;

-- name: runs_to_redact
SELECT id, user_id, error, step_results, replay FROM plan_runs
WHERE id > %(after_id)s ORDER BY id LIMIT %(limit)s FOR UPDATE;

-- name: set_run_redacted
UPDATE plan_runs SET error = %(error)s, step_results = %(step_results)s, replay = %(replay)s WHERE id = %(id)s;

-- name: plans_to_redact
SELECT id, user_id, steps FROM execution_plans
WHERE id > %(after_id)s ORDER BY id LIMIT %(limit)s FOR UPDATE;

-- name: set_plan_steps
UPDATE execution_plans SET steps = %(steps)s, updated_at = now() WHERE id = %(id)s;

-- name: versions_to_redact
SELECT id, plan_id, user_id, version, steps FROM plan_versions
WHERE id > %(after_id)s ORDER BY id LIMIT %(limit)s FOR UPDATE;

-- name: set_plan_version_steps
-- Operator only (redact-history --move-plan-headers): pilot_app may not update a version.
UPDATE plan_versions SET steps = %(steps)s WHERE id = %(id)s;

-- name: insert_drafted_plan
INSERT INTO execution_plans (user_id, name, original_prompt, steps, schedule, timezone, enabled, provenance)
VALUES (%(user_id)s, %(name)s, %(original_prompt)s, %(steps)s, %(schedule)s, %(timezone)s, %(enabled)s,
        %(provenance)s)
RETURNING *;

-- --- costs and budgets (issue 11) ------------------------------------------------

-- name: budget_standing
-- What an LLM step's admission reads, in one round trip: the user's budget (NULLs when
-- none), this UTC month's recorded spend, the plan's cap per run and the run's spend.
SELECT b.monthly_usd, b.on_exceed,
       coalesce((SELECT s.spent_usd FROM budget_spend s
                 WHERE s.user_id = %(user_id)s
                   AND s.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date), 0) AS month_spent,
       (SELECT p.max_cost_usd FROM execution_plans p
        WHERE p.user_id = %(user_id)s AND p.id = %(plan_id)s::bigint) AS plan_max,
       (SELECT coalesce(sum(l.cost_usd), 0) FROM execution_logs l
        WHERE l.user_id = %(user_id)s AND l.run_id = %(run_id)s::bigint) AS run_spent
FROM (SELECT 1) AS one
LEFT JOIN budgets b ON b.user_id = %(user_id)s;

-- name: add_month_spend
-- Runs in the transaction that writes the step's log row: the counter always equals the
-- sum of the month's committed costs, and every admission sees each committed cost.
INSERT INTO budget_spend AS s (user_id, month, spent_usd, steps)
VALUES (%(user_id)s, date_trunc('month', now() AT TIME ZONE 'UTC')::date, %(cost_usd)s, 1)
ON CONFLICT (user_id, month)
DO UPDATE SET spent_usd = s.spent_usd + EXCLUDED.spent_usd, steps = s.steps + 1, updated_at = now();

-- name: month_spend
SELECT to_char(m.month, 'YYYY-MM') AS month, coalesce(s.spent_usd, 0)::float8 AS spent_usd,
       coalesce(s.steps, 0) AS priced_steps
FROM (SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month) AS m
LEFT JOIN budget_spend s ON s.user_id = %(user_id)s AND s.month = m.month;

-- name: get_budget
SELECT monthly_usd::float8 AS monthly_usd, on_exceed, created_at, updated_at FROM budgets
WHERE user_id = %(user_id)s;

-- name: put_budget
INSERT INTO budgets (user_id, monthly_usd, on_exceed) VALUES (%(user_id)s, %(monthly_usd)s, %(on_exceed)s)
ON CONFLICT (user_id)
DO UPDATE SET monthly_usd = EXCLUDED.monthly_usd, on_exceed = EXCLUDED.on_exceed, updated_at = now()
RETURNING monthly_usd::float8 AS monthly_usd, on_exceed, created_at, updated_at;

-- name: delete_budget
DELETE FROM budgets WHERE user_id = %(user_id)s RETURNING user_id;

-- name: budget_for_firing
-- The scheduler's view of a plan's owner at a firing (run as that user): budget and month's spend.
SELECT b.monthly_usd, b.on_exceed,
       coalesce((SELECT s.spent_usd FROM budget_spend s
                 WHERE s.user_id = %(user_id)s
                   AND s.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date), 0) AS month_spent
FROM budgets b WHERE b.user_id = %(user_id)s;

-- name: cost_report
-- GET /api/metrics/costs: the user's LLM steps (model set) since a time, grouped by one of
-- provider, model (with its provider), plan or UTC day. Group columns that do not apply are NULL.
WITH grouped AS (
    SELECT CASE WHEN %(group_by)s IN ('provider', 'model') THEN l.provider END AS provider,
           CASE WHEN %(group_by)s = 'model' THEN l.model END AS model,
           CASE WHEN %(group_by)s = 'plan' THEN l.plan_id END AS plan_id,
           CASE WHEN %(group_by)s = 'day' THEN (l."timestamp" AT TIME ZONE 'UTC')::date END AS day,
           coalesce(sum(l.input_tokens), 0) AS input_tokens,
           coalesce(sum(l.output_tokens), 0) AS output_tokens,
           coalesce(sum(l.cost_usd), 0)::float8 AS cost_usd,
           count(*) AS steps,
           count(*) FILTER (WHERE l.cost_usd IS NULL) AS unpriced_steps
    FROM execution_logs l
    WHERE l.user_id = %(user_id)s AND l.model IS NOT NULL AND l."timestamp" >= %(since)s
    GROUP BY 1, 2, 3, 4
)
SELECT g.provider, g.model, g.plan_id, p.name AS plan_name, to_char(g.day, 'YYYY-MM-DD') AS day,
       g.input_tokens, g.output_tokens, g.cost_usd, g.steps, g.unpriced_steps
FROM grouped g
LEFT JOIN execution_plans p ON p.user_id = %(user_id)s AND p.id = g.plan_id
ORDER BY g.day NULLS FIRST, g.cost_usd DESC, g.provider, g.model, g.plan_id;

-- --- idempotency keys (issue 11) --------------------------------------------------

-- name: claim_idempotency_key
-- Claim (user, key) for this request: a new key, one older than the retention, or one
-- left in progress by a process that died (its lock lapsed) for the same request. No row
-- back: another request holds or answered it.
INSERT INTO idempotency_keys AS k (user_id, key, fingerprint, method, path, state, token, locked_until)
VALUES (%(user_id)s, %(key)s, %(fingerprint)s, %(method)s, %(path)s, 'in_progress', %(token)s,
        now() + make_interval(secs => %(lock_seconds)s))
ON CONFLICT (user_id, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method, path = EXCLUDED.path, state = 'in_progress',
    token = EXCLUDED.token, locked_until = EXCLUDED.locked_until, response_status = NULL,
    response_headers = NULL, response_body = NULL, created_at = now(), completed_at = NULL
WHERE k.created_at < now() - make_interval(hours => %(retention_hours)s)
   OR (k.state = 'in_progress' AND k.locked_until < now() AND k.fingerprint = EXCLUDED.fingerprint)
RETURNING k.token;

-- name: get_idempotency_key
SELECT fingerprint, state, response_status, response_headers, response_body, created_at
FROM idempotency_keys WHERE user_id = %(user_id)s AND key = %(key)s;

-- name: complete_idempotency_key
UPDATE idempotency_keys
SET state = 'done', response_status = %(status)s, response_headers = %(headers)s, response_body = %(body)s,
    completed_at = now(), locked_until = NULL
WHERE user_id = %(user_id)s AND key = %(key)s AND token = %(token)s AND state = 'in_progress'
RETURNING id;

-- name: release_idempotency_key
DELETE FROM idempotency_keys
WHERE user_id = %(user_id)s AND key = %(key)s AND token = %(token)s AND state = 'in_progress';

-- name: prune_idempotency_batch
WITH batch AS (
    SELECT id FROM idempotency_keys
    WHERE id > %(after_id)s AND created_at < %(cutoff)s
    ORDER BY id LIMIT %(limit)s
)
DELETE FROM idempotency_keys k USING batch WHERE k.id = batch.id
RETURNING k.id;
