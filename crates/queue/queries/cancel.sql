-- Pending jobs are cancelled at once (to jobs_done); a running one is
-- flagged and stops at its handler's next checkpoint. Returns the job as it
-- now is.
WITH flagged AS (
    UPDATE jobs SET cancel_requested = true
    WHERE id = $1 AND state = 'running'
    RETURNING *
),
gone AS (
    DELETE FROM jobs
    WHERE id = $1 AND state IN ('scheduled', 'available', 'retryable')
    RETURNING *
),
cancelled AS (
    INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                           unique_key, owner, locked_by, progress, errors, created_at, started_at,
                           finished_at, cancel_requested, watched, throttle_key, waiting, subject,
                           trace_parent)
    SELECT id, queue, kind, payload, 'cancelled', priority, attempt, max_attempts, run_at,
           unique_key, owner, NULL, progress, errors, created_at, started_at,
           now(), false, watched, throttle_key, waiting, subject, trace_parent
    FROM gone
    RETURNING *
)
SELECT id AS "id!", queue AS "queue!", kind AS "kind!", payload AS "payload!",
       state AS "state!: JobState", priority AS "priority!", attempt AS "attempt!",
       max_attempts AS "max_attempts!", run_at AS "run_at!", unique_key, owner, throttle_key,
       subject, waiting, locked_by, cancel_requested AS "cancel_requested!", progress,
       errors AS "errors!", created_at AS "created_at!", started_at, finished_at
FROM flagged
UNION ALL
SELECT id, queue, kind, payload, state, priority, attempt, max_attempts, run_at, unique_key,
       owner, throttle_key, subject, waiting, locked_by, cancel_requested, progress, errors,
       created_at, started_at, finished_at
FROM cancelled
