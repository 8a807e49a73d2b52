-- Active connections of provider $1 not synced since $2, or never
-- (index provider_connections_sync_due).
SELECT id, user_id FROM provider_connections
WHERE status = 'active' AND provider = $1 AND (last_sync_at IS NULL OR last_sync_at < $2)
