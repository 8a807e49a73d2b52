-- Batched failure: each job goes to 'retryable' (run_at pushed back by its
-- delay), 'failed' (dead) or 'cancelled', with the error appended to its
-- history. Fenced by the claim like complete_succeeded.sql.
UPDATE jobs AS j
SET state = u.state,
    run_at = CASE WHEN u.state = 'retryable' THEN now() + u.delay_ms * interval '1 millisecond'
                  ELSE j.run_at END,
    finished_at = CASE WHEN u.state IN ('failed', 'cancelled') THEN now() END,
    locked_by = NULL,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', now(), 'error', u.message))
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $6::timestamptz[])
    AS u(id, state, delay_ms, message, started_at)
WHERE j.id = u.id AND j.state NOT IN ('scheduled', 'available', 'retryable', 'succeeded', 'failed', 'cancelled') AND j.locked_by IS NOT DISTINCT FROM $5 AND j.started_at = u.started_at
