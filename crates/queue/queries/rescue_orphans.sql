-- Jobs held by a worker whose heartbeat is older than $1 seconds go back to
-- the queue, or die (to jobs_done) if that was their last attempt.
WITH orphans AS (
    SELECT j.id, j.attempt >= j.max_attempts AS last FROM jobs j
    WHERE j.state = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM queue_workers w
          WHERE w.id = j.locked_by AND w.heartbeat_at >= now() - $1::float8 * interval '1 second')
    FOR UPDATE OF j SKIP LOCKED
),
again AS (
    UPDATE jobs AS j
    SET state = 'available', run_at = now(), locked_by = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'at', now(),
            'error', 'worker stopped heartbeating; job rescued'))
    FROM orphans
    WHERE j.id = orphans.id AND NOT orphans.last
    RETURNING j.id, j.queue, j.kind, j.attempt
),
dead AS (
    DELETE FROM jobs AS j USING orphans
    WHERE j.id = orphans.id AND orphans.last
    RETURNING j.*
),
buried AS (
    INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                           unique_key, owner, locked_by, progress, errors, created_at, started_at,
                           finished_at, cancel_requested, watched, throttle_key, waiting, subject,
                           trace_parent)
    SELECT id, queue, kind, payload, 'failed', priority, attempt, max_attempts, now(),
           unique_key, owner, NULL, progress,
           errors || jsonb_build_array(jsonb_build_object(
               'attempt', attempt, 'at', now(),
               'error', 'worker stopped heartbeating; job rescued')),
           created_at, started_at, now(), cancel_requested, watched, throttle_key, waiting,
           subject, trace_parent
    FROM dead
    RETURNING id, queue, kind, attempt
)
SELECT id AS "id!", queue AS "queue!", kind AS "kind!", attempt AS "attempt!" FROM again
UNION ALL
SELECT id, queue, kind, attempt FROM buried
