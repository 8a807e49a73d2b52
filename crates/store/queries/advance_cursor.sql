-- Compare-and-set: a sync only commits if nobody moved the cursor since it
-- started.
UPDATE provider_connections
SET sync_cursor = $2, last_sync_at = now(), updated_at = now()
WHERE id = $1 AND sync_cursor IS NOT DISTINCT FROM $3
