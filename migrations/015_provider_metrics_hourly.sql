-- 015: provider metrics read from hourly rollups (issue 9 item 7).
--
-- Closed hours of execution_logs are rolled up, periodically and by one process at a
-- time, into provider_metrics_hourly: per user, provider and hour the counts, the sum
-- and maximum of latency_ms, and a histogram of latency_ms over fixed buckets
-- (pilot_latency_bounds). A metrics read takes the whole hours of its window from the
-- rollup and the rest (the partial first hour, and every hour not rolled up yet: the
-- open one) from execution_logs, so counts, success rates and errors per hour are the
-- raw query's exactly; p95 comes from the summed histogram (README "Provider metrics").
-- Nothing on the write path touches the rollup: no hot counter row.

-- The upper bounds (ms) of the latency buckets: bucket i holds bounds[i] <= latency < bounds[i+1]
-- (width_bucket), bucket 0 everything below bounds[1]. pilot/data/store.py LATENCY_BOUNDS_MS is
-- the same list (a test compares them); changing it means recomputing every rolled-up hour.
CREATE OR REPLACE FUNCTION pilot_latency_bounds() RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT '{0.5,1,2,5,10,25,50,100,150,200,300,400,500,750,1000,1500,2000,3000,4000,5000,7500,10000,15000,20000,30000,60000,120000,300000}'::double precision[]
$$;

CREATE TABLE IF NOT EXISTS provider_metrics_hourly (
    user_id     varchar(255)       NOT NULL CHECK (user_id <> ''),
    hour        timestamptz        NOT NULL,
    provider    varchar(64)        NOT NULL,
    total       bigint             NOT NULL,
    successful  bigint             NOT NULL,
    failed      bigint             NOT NULL,
    latency_sum double precision   NOT NULL,
    latency_max double precision   NOT NULL,
    buckets     bigint[]           NOT NULL,  -- one count per bucket, 0 .. array_length(pilot_latency_bounds())
    PRIMARY KEY (user_id, hour, provider)
);
SELECT pilot_protect_user_table('provider_metrics_hourly');

-- Every hour before rolled_until is in provider_metrics_hourly (NULL: nothing rolled up yet).
CREATE TABLE IF NOT EXISTS metrics_rollup_state (
    id            boolean     PRIMARY KEY DEFAULT true CHECK (id),
    rolled_until  timestamptz,
    rolled_at     timestamptz
);
INSERT INTO metrics_rollup_state (id) VALUES (true) ON CONFLICT DO NOTHING;
GRANT SELECT ON metrics_rollup_state TO pilot_app;

-- The rollup reads execution_logs by time across users: a BRIN index over the append-only
-- table's physical time order costs the write path next to nothing (unsummarized ranges
-- are simply read).
CREATE INDEX IF NOT EXISTS execution_logs_time_brin ON execution_logs USING brin ("timestamp");

-- Recompute the rollup of [p_from, p_to) from execution_logs (whole hours). SECURITY DEFINER
-- (the migrating role, which bypasses RLS): it reads and writes every user's rows.
CREATE OR REPLACE FUNCTION pilot_rollup_hours(p_from timestamptz, p_to timestamptz) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_rows integer;
BEGIN
    DELETE FROM provider_metrics_hourly WHERE hour >= p_from AND hour < p_to;
    INSERT INTO provider_metrics_hourly
        (user_id, hour, provider, total, successful, failed, latency_sum, latency_max, buckets)
    SELECT g.user_id, g.hour, g.provider, sum(g.n), sum(g.ok), sum(g.bad), sum(g.s), max(g.m),
           (SELECT array_agg(coalesce(c.n, 0) ORDER BY i)
            FROM generate_series(0, cardinality(pilot_latency_bounds())) AS i
            LEFT JOIN unnest(array_agg(g.bucket), array_agg(g.n)) AS c(b, n) ON c.b = i)
    FROM (
        SELECT user_id, date_trunc('hour', "timestamp") AS hour, provider,
               width_bucket(latency_ms, pilot_latency_bounds()) AS bucket,
               count(*) AS n,
               count(*) FILTER (WHERE status = 'success') AS ok,
               count(*) FILTER (WHERE status = 'error') AS bad,
               sum(latency_ms) AS s, max(latency_ms) AS m
        FROM execution_logs
        WHERE "timestamp" >= p_from AND "timestamp" < p_to
        GROUP BY 1, 2, 3, 4
    ) AS g
    GROUP BY g.user_id, g.hour, g.provider;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- Roll up the closed hours since the last rollup: hours that ended at least p_settle_seconds
-- ago (a log row carries its transaction's start time, so a row of an hour can commit a little
-- after the hour), at most p_max_hours of them per call. One caller at a time across every
-- process: the others get -1 at once (pg_try_advisory_xact_lock), never a second rollup.
-- Returns the number of hours rolled up (0: nothing closed since).
CREATE OR REPLACE FUNCTION pilot_rollup_metrics(p_settle_seconds integer, p_max_hours integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_from timestamptz;
    v_to timestamptz;
BEGIN
    IF NOT pg_try_advisory_xact_lock(x'50494C4F54'::bigint + 15) THEN
        RETURN -1;
    END IF;
    SELECT rolled_until INTO v_from FROM metrics_rollup_state WHERE id FOR UPDATE;
    IF v_from IS NULL THEN
        SELECT date_trunc('hour', min("timestamp")) INTO v_from FROM execution_logs;
    END IF;
    v_to := date_trunc('hour', now() - make_interval(secs => greatest(p_settle_seconds, 0)));
    v_from := coalesce(v_from, v_to);
    v_to := least(v_to, v_from + make_interval(hours => greatest(p_max_hours, 1)));
    IF v_to <= v_from THEN
        UPDATE metrics_rollup_state SET rolled_until = v_from, rolled_at = now() WHERE id;
        RETURN 0;
    END IF;
    PERFORM pilot_rollup_hours(v_from, v_to);
    UPDATE metrics_rollup_state SET rolled_until = v_to, rolled_at = now() WHERE id;
    RETURN (extract(epoch FROM v_to - v_from) / 3600)::integer;
END
$$;

-- After prune-logs removed every row before p_cutoff: the rollup forgets the hours before it
-- and recomputes the hour it falls in, so it still equals the raw rows.
CREATE OR REPLACE FUNCTION pilot_rollup_pruned(p_cutoff timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_hour timestamptz := date_trunc('hour', p_cutoff);
    v_rolled timestamptz;
BEGIN
    SELECT rolled_until INTO v_rolled FROM metrics_rollup_state WHERE id FOR UPDATE;
    DELETE FROM provider_metrics_hourly WHERE hour < v_hour;
    IF v_rolled IS NOT NULL AND v_hour < v_rolled THEN
        PERFORM pilot_rollup_hours(v_hour, v_hour + interval '1 hour');
    END IF;
END
$$;

REVOKE ALL ON FUNCTION pilot_rollup_hours(timestamptz, timestamptz) FROM PUBLIC, pilot_app;
REVOKE ALL ON FUNCTION pilot_rollup_metrics(integer, integer) FROM PUBLIC, pilot_app;
REVOKE ALL ON FUNCTION pilot_rollup_pruned(timestamptz) FROM PUBLIC, pilot_app;
GRANT EXECUTE ON FUNCTION pilot_rollup_metrics(integer, integer) TO pilot_system;
