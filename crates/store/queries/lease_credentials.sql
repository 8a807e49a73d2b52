-- The token lease: one holder per connection across every daemon may call
-- the provider's token or revocation endpoint. Taken when free or expired;
-- no transaction stays open while the holder talks to the provider.
UPDATE provider_connections
SET token_lease_holder = $2,
    token_lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
WHERE id = $1 AND (token_lease_until IS NULL OR token_lease_until < clock_timestamp())
RETURNING provider, status, credentials, credentials_version,
          access_token_expires_at, refresh_token_expires_at
