-- A handler completes its own job inside the transaction that commits its
-- work, so the work and the job's success are durable together. Fenced by
-- the claim ($2 holder, $3 the claim's start): no row means the claim was
-- lost (rescued, or undone by a database crash) and the caller must roll
-- its work back.
UPDATE jobs
SET state = 'succeeded', finished_at = now(), locked_by = NULL,
    progress = COALESCE($4, progress)
WHERE id = $1 AND state = 'running' AND locked_by = $2 AND started_at = $3
RETURNING id
