-- Flags, once, active connections whose refresh token expires before $1,
-- and audits each (index provider_connections_grant_expiring).
WITH flagged AS (
    UPDATE provider_connections
    SET reauth_warned_at = now(), updated_at = now()
    WHERE status = 'active' AND reauth_warned_at IS NULL AND refresh_token_expires_at < $1
    RETURNING id, refresh_token_expires_at
)
INSERT INTO audit_records (action, phase, outcome, actor, resource_type, resource_id,
                           correlation_id, reason, context)
SELECT 'reauth_warning', 'outcome', 'succeeded', 'system:scheduler', 'connection', id::text, $2,
       'the refresh token expires soon: the user should authorize again',
       jsonb_build_object('refresh_token_expires_at', refresh_token_expires_at)
FROM flagged
