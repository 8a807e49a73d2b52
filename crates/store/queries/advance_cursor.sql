UPDATE provider_connections
SET sync_cursor = $2, last_sync_at = now(), updated_at = now()
WHERE id = $1
