-- The pending or running job that holds the unique key of job $1, if any
-- (then $1 cannot run again until that one finishes).
SELECT h.id
FROM jobs t
JOIN jobs h ON h.unique_key = t.unique_key AND h.id <> t.id
WHERE t.id = $1 AND t.unique_key IS NOT NULL
  AND h.state IN ('scheduled', 'available', 'running', 'retryable')
LIMIT 1
