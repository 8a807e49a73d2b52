-- One batch of finished jobs past their retention that no droppable day
-- partition held (those in the default partitions, mostly): jobs_done's
-- partitions prune this to the old days, and its id index finds the rows.
DELETE FROM jobs_done
WHERE id IN (
    SELECT id FROM jobs_done
    WHERE (state = 'succeeded' AND finished_at < now() - $1::float8 * interval '1 second')
       OR (state IN ('failed', 'cancelled') AND finished_at < now() - $2::float8 * interval '1 second')
    LIMIT $3::bigint
)
