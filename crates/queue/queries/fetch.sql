-- Claim up to $2 due jobs of queue $1 for worker $3, shared fairly between
-- owners starting after $4, with at most $5 jobs of one owner running (0:
-- no cap). The procedure and its plans: migrations/*_fair_claims.sql.
SELECT id, queue, kind, payload, attempt, max_attempts, owner, throttle_key, run_at, started_at, turn
FROM queue_claim($1, $2::int, $3, $4, $5::int)
