-- Wakes the jobs of throttle key $1 snoozed for it: due now.
UPDATE jobs
SET run_at = now(), waiting = NULL
WHERE throttle_key = $1 AND state IN ('scheduled', 'available', 'retryable')
  AND waiting IS NOT NULL AND run_at > now()
RETURNING queue
