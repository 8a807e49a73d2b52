INSERT INTO provider_connections (id, user_id, provider, status, credentials,
                                  access_token_expires_at, refresh_token_expires_at,
                                  provider_item_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id, user_id, provider, status, access_token_expires_at, refresh_token_expires_at,
          sync_cursor IS NOT NULL AS "has_synced!", last_sync_at, reauth_warned_at, created_at, updated_at
