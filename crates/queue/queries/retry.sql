-- A dead or cancelled job runs again, with at least one attempt left.
UPDATE jobs
SET state = 'available', run_at = now(), finished_at = NULL, cancel_requested = false,
    max_attempts = GREATEST(max_attempts, attempt + 1)
WHERE id = $1 AND state IN ('failed', 'cancelled')
RETURNING id, queue, kind, payload, state AS "state: JobState", priority, attempt, max_attempts,
          run_at, unique_key, owner, throttle_key, subject, waiting, locked_by, cancel_requested,
          progress, errors, created_at, started_at, finished_at
