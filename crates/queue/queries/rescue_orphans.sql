-- Jobs held by a worker whose heartbeat is older than $1 seconds go back to
-- the queue (or die, if that was their last attempt).
WITH orphans AS (
    SELECT j.id FROM jobs j
    WHERE j.state = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM queue_workers w
          WHERE w.id = j.locked_by AND w.heartbeat_at >= now() - $1::float8 * interval '1 second')
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs AS j
SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'failed' ELSE 'available' END,
    finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
    run_at = now(),
    locked_by = NULL,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', now(),
        'error', 'worker stopped heartbeating; job rescued'))
FROM orphans
WHERE j.id = orphans.id
RETURNING j.id, j.queue, j.kind, j.attempt
