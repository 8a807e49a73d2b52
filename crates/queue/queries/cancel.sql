-- Pending jobs are cancelled at once; a running one is flagged and stops at
-- its handler's next checkpoint. Returns the job as it now is.
UPDATE jobs
SET state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
    cancel_requested = (state = 'running'),
    finished_at = CASE WHEN state = 'running' THEN finished_at ELSE now() END
WHERE id = $1 AND state IN ('scheduled', 'available', 'retryable', 'running')
RETURNING id, queue, kind, payload, state AS "state: JobState", priority, attempt, max_attempts,
          run_at, unique_key, owner, throttle_key, subject, waiting, locked_by, cancel_requested,
          progress, errors, created_at, started_at, finished_at
