-- Field hardening (issue: survive the field).
--
-- Audit records are timestamped when the event happens, not when its
-- transaction began: an OUTCOME committed at the end of a long unit of work
-- must not be dated before its ATTEMPT.
ALTER TABLE audit_records ALTER COLUMN created_at SET DEFAULT clock_timestamp();
-- An attempt that was taken from its worker (rescued from a dead or
-- stalled worker, handed back at shutdown, released after a lost claim or
-- completion) is closed with an `abandoned` OUTCOME.
ALTER TABLE audit_records DROP CONSTRAINT audit_records_outcome_check;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_outcome_check
    CHECK (outcome IN ('attempted', 'succeeded', 'failed', 'abandoned'));

-- Idempotency keys are leased, not held forever: a request whose handler
-- never answered (the process died) lets a retry take the key over once the
-- lease has expired.
ALTER TABLE idempotency_keys ADD COLUMN locked_until timestamptz;

-- The token single-flight is a lease row, not a transaction held across the
-- provider's token call: whoever holds an unexpired lease is the only one in
-- the cluster who may call the token or revocation endpoint for that
-- connection.
ALTER TABLE provider_connections
    ADD COLUMN token_lease_holder uuid,
    ADD COLUMN token_lease_until timestamptz;
