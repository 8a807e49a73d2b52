-- One batch of finished jobs past their retention. Ids are UUIDv7 (creation
-- time first) and a job finishes after it is created, so only ids below the
-- v7 floor of the younger cutoff ($1) can qualify: a primary-key range walk,
-- no extra index for every completion to maintain. SKIP LOCKED and a LIMIT
-- keep each statement short and out of the workers' way.
WITH old AS (
    SELECT id FROM jobs
    WHERE id < $1
      AND ((state = 'succeeded' AND finished_at < now() - $2::float8 * interval '1 second')
        OR (state IN ('failed', 'cancelled') AND finished_at < now() - $3::float8 * interval '1 second'))
    ORDER BY id
    LIMIT $4::bigint
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs j USING old WHERE j.id = old.id
