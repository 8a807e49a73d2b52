-- Token lifecycle. `credentials_version` goes up by one on every change of
-- a connection's tokens; a refresh trigger says which version it found
-- stale, so of many concurrent triggers only the first calls the provider.
ALTER TABLE provider_connections
    ADD COLUMN credentials_version bigint NOT NULL DEFAULT 1;

-- The refresh sweep's query: active connections by access-token expiry.
CREATE INDEX provider_connections_refresh_due
    ON provider_connections (access_token_expires_at)
    WHERE status = 'active' AND access_token_expires_at IS NOT NULL;
