-- FOR KEY SHARE: the connection cannot be deleted under a running sync, but
-- a token refresh (FOR NO KEY UPDATE) is not blocked by it. Two syncs of one
-- connection are settled at commit by advance_cursor.sql.
SELECT sync_cursor FROM provider_connections WHERE id = $1 FOR KEY SHARE
