-- Batched completion. Each job is fenced by its claim: the holder ($2) and
-- the claim's start time (the lease token), so an outcome of a claim that
-- was lost or rescued meanwhile changes nothing. The join on unnest keeps
-- the plan on the primary key.
UPDATE jobs AS j
SET state = 'succeeded', finished_at = now(), locked_by = NULL
FROM unnest($1::uuid[], $3::timestamptz[]) AS u(id, started_at)
WHERE j.id = u.id AND j.state = 'running' AND j.locked_by = $2 AND j.started_at = u.started_at
