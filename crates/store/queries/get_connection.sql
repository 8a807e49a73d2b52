SELECT id, user_id, provider, status, access_token_expires_at, refresh_token_expires_at,
       sync_cursor IS NOT NULL AS "has_synced!", last_sync_at, reauth_warned_at, created_at, updated_at
FROM provider_connections
WHERE id = $1 AND user_id = $2
