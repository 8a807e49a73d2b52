-- Active connections whose access token expires before $1
-- (index provider_connections_refresh_due).
SELECT id, user_id, provider FROM provider_connections
WHERE status = 'active' AND access_token_expires_at < $1
