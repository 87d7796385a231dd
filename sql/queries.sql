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
INSERT INTO execution_plans (user_id, name, original_prompt, steps, schedule, timezone, enabled)
VALUES (%(user_id)s, %(name)s, %(original_prompt)s, %(steps)s, %(schedule)s, %(timezone)s, %(enabled)s)
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
    timezone = %(timezone)s, enabled = %(enabled)s, updated_at = now()
WHERE user_id = %(user_id)s AND id = %(id)s
RETURNING *;

-- name: delete_plan
DELETE FROM execution_plans WHERE user_id = %(user_id)s AND id = %(id)s RETURNING id;
