-- Idempotency-Key support for POSTs: the first response for a (subject,
-- key) is stored and replayed for the same request; a different request
-- under the same key is refused.
CREATE TABLE idempotency_keys (
    subject        text        NOT NULL,
    key            text        NOT NULL,
    request_hash   bytea       NOT NULL,
    -- NULL while the first request is still being handled.
    status         smallint,
    content_type   text,
    location       text,
    body           bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
