-- Records a webhook's signature digest; no row back: seen before (a replay).
-- Receipts past any signature's freshness are pruned on the way.
WITH pruned AS (
    DELETE FROM webhook_receipts WHERE received_at < now() - interval '15 minutes'
)
INSERT INTO webhook_receipts (digest, provider)
VALUES ($1, $2)
ON CONFLICT (digest) DO NOTHING
RETURNING 1 AS "fresh!"
