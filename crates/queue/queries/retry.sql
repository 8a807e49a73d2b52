-- A dead or cancelled job runs again (back from jobs_done to the queue),
-- with at least one attempt left.
WITH back AS (
    DELETE FROM jobs_done WHERE id = $1 AND state IN ('failed', 'cancelled')
    RETURNING *
)
INSERT INTO jobs (id, queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                  unique_key, owner, locked_by, progress, errors, created_at, started_at,
                  finished_at, cancel_requested, watched, throttle_key, waiting, subject,
                  trace_parent)
SELECT id, queue, kind, payload, 'available', priority, attempt,
       GREATEST(max_attempts, attempt + 1), now(), unique_key, owner, NULL, progress, errors,
       created_at, started_at, NULL, false, watched, throttle_key, waiting, subject,
       trace_parent
FROM back
RETURNING id, queue, kind, payload, state AS "state: JobState", priority, attempt, max_attempts,
          run_at, unique_key, owner, throttle_key, subject, waiting, locked_by, cancel_requested,
          progress, errors, created_at, started_at, finished_at
