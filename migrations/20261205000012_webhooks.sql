-- Provider webhooks (Plaid): a connection is named by the provider's own id
-- for it (Plaid's item_id), and each signed webhook is accepted once.

ALTER TABLE provider_connections ADD COLUMN provider_item_id text;
CREATE UNIQUE INDEX provider_connections_item
    ON provider_connections (provider, provider_item_id)
    WHERE provider_item_id IS NOT NULL;

-- The SHA-256 of each accepted webhook's signature. A signature is fresh
-- for five minutes, so receipts older than that only need to outlive the
-- clock skew we allow; they are pruned as new ones arrive.
CREATE TABLE webhook_receipts (
    digest      text        PRIMARY KEY,
    provider    text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_receipts_received ON webhook_receipts (received_at);
