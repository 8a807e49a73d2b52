-- Compare-and-set: moves the cursor only if it is still the one the sync
-- started from ($3); no row updated means another sync got there first.
UPDATE provider_connections
SET sync_cursor = $2, last_sync_at = now(), updated_at = now()
WHERE id = $1 AND sync_cursor IS NOT DISTINCT FROM $3
