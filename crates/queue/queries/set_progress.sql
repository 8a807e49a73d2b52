-- Records progress and tells the handler whether cancellation was asked for.
-- No row: the claim is no longer ours (rescued, or lost with a crash).
UPDATE jobs SET progress = $2
WHERE id = $1 AND state = 'running' AND locked_by = $3 AND started_at = $4
RETURNING cancel_requested
