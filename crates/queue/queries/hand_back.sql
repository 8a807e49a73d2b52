-- Shutdown: jobs we could not finish go back to the queue; the interrupted
-- attempt is not counted against them. Returns the interrupted attempts so
-- their audit ATTEMPT records can be closed in the same transaction.
UPDATE jobs AS j
SET state = 'available', locked_by = NULL, attempt = GREATEST(j.attempt - 1, 0), run_at = now()
FROM unnest($1::uuid[]) AS u(id)
WHERE j.id = u.id AND j.state = 'running' AND j.locked_by = $2
RETURNING j.id, j.queue, j.kind, j.attempt + 1 AS "attempt!"
