-- Snoozes every pending job of throttle key $1 due before $2 until then,
-- saying why ($3); returns how many.
UPDATE jobs
SET state = 'scheduled', run_at = $2, waiting = $3
WHERE throttle_key = $1 AND state IN ('scheduled', 'available', 'retryable') AND run_at < $2
