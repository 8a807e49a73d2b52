UPDATE provider_connections
SET credentials = $2,
    access_token_expires_at = $3,
    refresh_token_expires_at = $4,
    credentials_version = credentials_version + 1,
    updated_at = now()
WHERE id = $1
RETURNING credentials_version
