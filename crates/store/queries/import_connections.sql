INSERT INTO provider_connections (id, user_id, provider, status, credentials,
                                  access_token_expires_at, refresh_token_expires_at)
SELECT u.id, u.user_id, u.provider, 'active', u.credentials, u.access, u.refresh
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::timestamptz[], $6::timestamptz[])
     AS u(id, user_id, provider, credentials, access, refresh)
