-- Claims the database says worker $1 holds but the worker is not running and
-- has no outcome for (its completion or its claim's undoing was lost with a
-- database crash): back to the queue, or dead (to jobs_done) if that was the
-- last attempt.
WITH strays AS (
    SELECT j.id, j.attempt >= j.max_attempts AS last
    FROM jobs j JOIN unnest($2::uuid[], $3::timestamptz[]) AS u(id, started_at)
        ON j.id = u.id AND j.started_at = u.started_at
    WHERE j.state = 'running' AND j.locked_by = $1
    FOR UPDATE OF j
),
again AS (
    UPDATE jobs AS j
    SET state = 'available', run_at = now(), locked_by = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'at', now(),
            'error', 'the worker holding this job was not running it (state lost in a database crash); job rescued'))
    FROM strays
    WHERE j.id = strays.id AND NOT strays.last
    RETURNING j.id, j.queue, j.kind, j.attempt
),
dead AS (
    DELETE FROM jobs AS j USING strays
    WHERE j.id = strays.id AND strays.last
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
               'error', 'the worker holding this job was not running it (state lost in a database crash); job rescued')),
           created_at, started_at, now(), cancel_requested, watched, throttle_key, waiting,
           subject, trace_parent
    FROM dead
    RETURNING id, queue, kind, attempt
)
SELECT id AS "id!", queue AS "queue!", kind AS "kind!", attempt AS "attempt!" FROM again
UNION ALL
SELECT id, queue, kind, attempt FROM buried
