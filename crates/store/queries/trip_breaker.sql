-- Opens provider $1's breaker (from closed, or from half-open after a
-- failed probe) with cool-down $2 ms doubled per consecutive trip (at most
-- $3 ms). No row: it was open already (another daemon tripped it first).
INSERT INTO provider_health AS h (provider, breaker, changed_at, probe_at, trips, reason)
VALUES ($1, 'open', now(), now() + $2::float8 * interval '1 millisecond', 1, $4)
ON CONFLICT (provider) DO UPDATE
SET breaker = 'open',
    changed_at = now(),
    trips = h.trips + 1,
    probe_at = now() + LEAST($2::float8 * power(2, h.trips), $3::float8) * interval '1 millisecond',
    probe_holder = NULL,
    reason = $4
WHERE h.breaker = 'closed' OR (h.breaker = 'half_open' AND h.probe_holder = $5)
RETURNING provider, breaker, changed_at, probe_at, probe_holder, trips, paused_until, reason
