-- One batch of finished jobs past their retention; SKIP LOCKED and a LIMIT
-- keep each statement short and out of the workers' way.
WITH old AS (
    SELECT id FROM jobs
    WHERE (state = 'succeeded' AND finished_at < now() - $1 * interval '1 second')
       OR (state IN ('failed', 'cancelled') AND finished_at < now() - $2 * interval '1 second')
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs j USING old WHERE j.id = old.id
