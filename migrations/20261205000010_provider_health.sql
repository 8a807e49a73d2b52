-- Protecting providers: a circuit breaker and a shared pause per provider,
-- and jobs that wait for them without spending attempts.

-- The key whose breaker and pauses apply to a job (the provider, for
-- provider work), and why a job waits when it was snoozed.
ALTER TABLE jobs ADD COLUMN throttle_key text;
ALTER TABLE jobs ADD COLUMN waiting jsonb;
-- Snoozing and waking a provider's pending jobs.
CREATE INDEX jobs_throttle_pending ON jobs (throttle_key, run_at)
    WHERE throttle_key IS NOT NULL AND state IN ('scheduled', 'available', 'retryable');

-- One row per provider: its breaker (closed: calls go through; open: none
-- do until probe_at; half_open: only the probe holder's calls do) and a
-- pause every daemon honours (a provider's 429 with Retry-After).
CREATE TABLE provider_health (
    provider      text PRIMARY KEY,
    breaker       text        NOT NULL DEFAULT 'closed'
        CHECK (breaker IN ('closed', 'open', 'half_open')),
    changed_at    timestamptz NOT NULL DEFAULT now(),
    probe_at      timestamptz,
    probe_holder  uuid,
    -- Consecutive times the breaker opened without closing in between
    -- (the cool-down doubles each time).
    trips         integer     NOT NULL DEFAULT 0,
    paused_until  timestamptz,
    reason        text
);

-- An attempt a provider's breaker or pause put off: it ends `deferred` (no
-- result, no attempt spent).
ALTER TABLE audit_records DROP CONSTRAINT audit_records_outcome_check;
ALTER TABLE audit_records ADD CONSTRAINT audit_records_outcome_check
    CHECK (outcome IN ('attempted', 'succeeded', 'failed', 'abandoned', 'deferred'));
