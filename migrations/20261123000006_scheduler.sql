-- The scheduler: one leader at a time through a lease row, and one row per
-- processed tick of each cycle. The tick's primary key is what makes a tick
-- happen exactly once: its row is inserted in the same transaction as the
-- jobs the tick enqueues, so even two daemons that both believe they lead
-- (a long pause, a partition) cannot both process it.
CREATE TABLE scheduler_leases (
    name         text PRIMARY KEY,
    holder       text        NOT NULL,
    term         bigint      NOT NULL,
    acquired_at  timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE TABLE scheduler_ticks (
    cycle        text        NOT NULL,
    tick         timestamptz NOT NULL,
    leader       text        NOT NULL,
    term         bigint      NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    enqueued     bigint      NOT NULL DEFAULT 0,
    flagged      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (cycle, tick)
);

-- Connections whose refresh token expires soon are flagged once, so the
-- client can ask the user to authorize again before it breaks.
ALTER TABLE provider_connections ADD COLUMN reauth_warned_at timestamptz;
CREATE INDEX provider_connections_grant_expiring
    ON provider_connections (refresh_token_expires_at)
    WHERE status = 'active' AND reauth_warned_at IS NULL AND refresh_token_expires_at IS NOT NULL;

-- The stale-sync sweep: active connections by provider and last sync.
CREATE INDEX provider_connections_sync_due
    ON provider_connections (provider, last_sync_at NULLS FIRST)
    WHERE status = 'active';
