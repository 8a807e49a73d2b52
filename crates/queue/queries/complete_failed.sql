-- Batched failure: each job goes back to 'retryable' (run_at pushed back by
-- its delay) or, 'failed' (dead) or 'cancelled', leaves the hot table for
-- jobs_done; either way with the error appended to its history. Fenced by
-- the claim like complete_succeeded.sql.
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $6::timestamptz[])
        AS u(id, state, delay_ms, message, started_at)
),
again AS (
    UPDATE jobs AS j
    SET state = 'retryable',
        run_at = now() + u.delay_ms * interval '1 millisecond',
        locked_by = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'at', now(), 'error', u.message))
    FROM u
    WHERE u.state = 'retryable'
      AND j.id = u.id AND j.state NOT IN ('scheduled', 'available', 'retryable') AND j.locked_by IS NOT DISTINCT FROM $5 AND j.started_at = u.started_at
    RETURNING j.id
),
done AS (
    DELETE FROM jobs AS j
    USING u
    WHERE u.state IN ('failed', 'cancelled')
      AND j.id = u.id AND j.state NOT IN ('scheduled', 'available', 'retryable') AND j.locked_by IS NOT DISTINCT FROM $5 AND j.started_at = u.started_at
    RETURNING j.*, u.state AS outcome, u.message
)
INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                       unique_key, owner, locked_by, progress, errors, created_at, started_at,
                       finished_at, cancel_requested, watched, throttle_key, waiting, subject,
                       trace_parent)
SELECT id, queue, kind, payload, outcome, priority, attempt, max_attempts, run_at,
       unique_key, owner, NULL, progress,
       errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', now(), 'error', message)),
       created_at, started_at, now(), cancel_requested, watched, throttle_key, waiting, subject,
       trace_parent
FROM done
