-- Pilot 020: a run's log rows in one place, so the finish of a run can hand them back
-- (issue 9, item 5).
--
-- `?wait=true` answered with the finished run and its log rows read in a transaction of
-- their own (the fourth of four per run). The finish statement now returns them itself
-- when a request in the finishing process waits for the run, and both it and the plain
-- read (GET /api/runs/<id>) take the rows from this function, so the two answers cannot
-- drift apart. A SQL function run as its caller (row-level security applies), inlined by
-- the planner into the statement that uses it.
CREATE OR REPLACE FUNCTION pilot_run_logs(p_user_id varchar, p_run_id bigint)
RETURNS TABLE (id bigint, step_index integer, step_id varchar, provider varchar, action varchar, status varchar,
               latency_ms double precision, error_code varchar, error text, attempt integer, input jsonb,
               output jsonb, "timestamp" timestamptz, model varchar, input_tokens integer, output_tokens integer,
               cost_usd double precision)
LANGUAGE sql STABLE
AS $$
    SELECT l.id, l.step_index, l.step_id, l.provider, l.action, l.status, l.latency_ms, l.error_code, l.error,
           l.attempt, l.input, l.output, l."timestamp", l.model, l.input_tokens, l.output_tokens,
           l.cost_usd::float8
    FROM execution_logs l
    WHERE l.user_id = p_user_id AND l.run_id = p_run_id
    ORDER BY l.id
$$;
