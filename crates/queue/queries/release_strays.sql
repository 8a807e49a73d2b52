-- Claims the database says worker $1 holds but the worker is not running and
-- has no outcome for (its completion or its claim's undoing was lost with a
-- database crash): back to the queue, or dead if that was the last attempt.
UPDATE jobs AS j
SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'failed' ELSE 'available' END,
    finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
    run_at = now(),
    locked_by = NULL,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', now(),
        'error', 'the worker holding this job was not running it (state lost in a database crash); job rescued'))
FROM unnest($2::uuid[], $3::timestamptz[]) AS u(id, started_at)
WHERE j.id = u.id AND j.state = 'running' AND j.locked_by = $1 AND j.started_at = u.started_at
RETURNING j.id, j.queue, j.kind, j.attempt
