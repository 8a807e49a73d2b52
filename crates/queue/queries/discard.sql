-- Finished jobs only: pending or running ones are cancelled first.
DELETE FROM jobs WHERE id = $1 AND state IN ('succeeded', 'failed', 'cancelled')
RETURNING *
