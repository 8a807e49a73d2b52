SELECT provider, status, credentials, sync_cursor
FROM provider_connections
WHERE id = $1
