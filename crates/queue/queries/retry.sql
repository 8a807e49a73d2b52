-- A dead or cancelled job runs again, with at least one attempt left.
UPDATE jobs
SET state = 'available', run_at = now(), finished_at = NULL, cancel_requested = false,
    max_attempts = GREATEST(max_attempts, attempt + 1)
WHERE id = $1 AND state IN ('failed', 'cancelled')
RETURNING *
