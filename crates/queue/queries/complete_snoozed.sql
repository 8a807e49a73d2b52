-- Snoozed jobs wait until their time without spending the attempt (the
-- claim's attempt is given back) and without an error: they did not fail,
-- something they depend on (a provider) asked them to wait. Fenced by the
-- claim like complete_succeeded.sql.
UPDATE jobs AS j
SET state = 'scheduled',
    run_at = now() + u.delay_ms * interval '1 millisecond',
    attempt = GREATEST(j.attempt - 1, 0),
    locked_by = NULL,
    waiting = u.waiting
FROM unnest($1::uuid[], $2::bigint[], $3::jsonb[], $5::timestamptz[])
    AS u(id, delay_ms, waiting, started_at)
WHERE j.id = u.id AND j.state NOT IN ('scheduled', 'available', 'retryable') AND j.locked_by IS NOT DISTINCT FROM $4 AND j.started_at = u.started_at
