-- Pilot 011: token usage and cost per LLM step, a monthly budget per user, a
-- cost cap per plan run (issue 11, items 1 and 2).
--
-- Every column added here is nullable or defaulted, so rows written by the
-- client's checklist (Phase 1) and by earlier versions stay valid; status
-- values of execution_logs are unchanged ('success'/'error'): a step refused by
-- a budget is an 'error' row with error_code 'budget_exceeded'.

-- 1. What each LLM step used and cost. NULL on rows of steps that are not
--    billed per token (webhook, logic) and on rows written before this
--    version; cost_usd is NULL too when no price is known for the model.
ALTER TABLE execution_logs ADD COLUMN IF NOT EXISTS model varchar(200);
ALTER TABLE execution_logs ADD COLUMN IF NOT EXISTS input_tokens integer;
ALTER TABLE execution_logs ADD COLUMN IF NOT EXISTS output_tokens integer;
ALTER TABLE execution_logs ADD COLUMN IF NOT EXISTS cost_usd numeric(20, 10);
-- GET /api/metrics/costs reads a user's LLM steps by time.
CREATE INDEX IF NOT EXISTS execution_logs_user_cost_idx
    ON execution_logs (user_id, "timestamp")
    INCLUDE (provider, model, plan_id, input_tokens, output_tokens, cost_usd)
    WHERE model IS NOT NULL;

-- 2. A plan may cap what one of its runs spends (checked before each LLM step).
ALTER TABLE execution_plans ADD COLUMN IF NOT EXISTS max_cost_usd numeric(14, 6)
    CHECK (max_cost_usd IS NULL OR max_cost_usd >= 0);

-- 3. A user's monthly budget (PUT /api/budget).
CREATE TABLE IF NOT EXISTS budgets (
    user_id     varchar(255)   PRIMARY KEY CHECK (user_id <> ''),
    monthly_usd numeric(14, 6) NOT NULL CHECK (monthly_usd >= 0),
    on_exceed   varchar(16)    NOT NULL DEFAULT 'refuse' CHECK (on_exceed IN ('refuse', 'warn')),
    created_at  timestamptz    NOT NULL DEFAULT now(),
    updated_at  timestamptz    NOT NULL DEFAULT now()
);
SELECT pilot_protect_user_table('budgets');  -- forced RLS, four policies (migration 002)

-- 4. The recorded spend of each user in each UTC calendar month: one counter
--    row, incremented in the same transaction that writes the step's log row,
--    so it always equals the sum of the committed steps' costs of that month
--    (whatever prune-logs later deletes). Budgets are checked against it.
CREATE TABLE IF NOT EXISTS budget_spend (
    user_id    varchar(255)    NOT NULL CHECK (user_id <> ''),
    month      date            NOT NULL CHECK (month = date_trunc('month', month)::date),
    spent_usd  numeric(20, 10) NOT NULL DEFAULT 0,
    steps      bigint          NOT NULL DEFAULT 0,
    updated_at timestamptz     NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, month)
);
SELECT pilot_protect_user_table('budget_spend');  -- forced RLS, four policies (migration 002)
