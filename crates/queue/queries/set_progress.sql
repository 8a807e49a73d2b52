-- Records progress and tells the handler whether cancellation was asked for.
UPDATE jobs SET progress = $2
WHERE id = $1 AND state = 'running' AND locked_by = $3
RETURNING cancel_requested
