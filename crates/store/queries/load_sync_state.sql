SELECT provider, status, credentials, credentials_version, access_token_expires_at, sync_cursor
FROM provider_connections
WHERE id = $1
