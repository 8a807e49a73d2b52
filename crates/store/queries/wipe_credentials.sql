-- Revocation: the tokens are gone for good; history stays.
UPDATE provider_connections
SET status = 'revoked',
    credentials = NULL,
    access_token_expires_at = NULL,
    refresh_token_expires_at = NULL,
    credentials_version = credentials_version + 1,
    updated_at = now()
WHERE id = $1
