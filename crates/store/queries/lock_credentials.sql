-- The refresh lock: one refresher per connection across every daemon.
-- FOR NO KEY UPDATE does not wait for a running sync (which holds only
-- FOR KEY SHARE on this row until it commits).
SELECT provider, status, credentials, credentials_version,
       access_token_expires_at, refresh_token_expires_at
FROM provider_connections
WHERE id = $1
FOR NO KEY UPDATE
