-- One job; a pending job with the same unique key wins and is returned.
WITH ins AS (
    INSERT INTO jobs (id, queue, kind, payload, state, priority, max_attempts, run_at, unique_key, owner)
    VALUES ($1, $2, $3, $4,
            CASE WHEN $7::timestamptz > now() THEN 'scheduled' ELSE 'available' END,
            $5, $6, GREATEST($7::timestamptz, now()), $8, $9)
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
        DO NOTHING
    RETURNING *, true AS created
)
SELECT * FROM ins
UNION ALL
SELECT j.*, false AS created FROM jobs j
WHERE j.unique_key = $8
  AND j.state IN ('scheduled', 'available', 'running', 'retryable')
  AND NOT EXISTS (SELECT 1 FROM ins)
LIMIT 1
