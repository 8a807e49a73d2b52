-- The pending or running job holding a unique key, if any.
SELECT * FROM jobs
WHERE unique_key = $1 AND state IN ('scheduled', 'available', 'running', 'retryable')
