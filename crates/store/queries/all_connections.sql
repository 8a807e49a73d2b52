-- Every user's connections, newest first, optionally of one status (the
-- operators' console: e.g. who needs to authorize again).
SELECT id, user_id, provider, status, access_token_expires_at, refresh_token_expires_at,
       sync_cursor IS NOT NULL AS "has_synced!", last_sync_at, reauth_warned_at, created_at, updated_at
FROM provider_connections
WHERE $1::text IS NULL OR status = $1
ORDER BY created_at DESC, id DESC
LIMIT $2
