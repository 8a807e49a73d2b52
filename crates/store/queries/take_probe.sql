-- The open breaker of provider $1 is due for probes: one daemon ($2) takes
-- them (half-open); no row for the others.
UPDATE provider_health
SET breaker = 'half_open', probe_holder = $2, changed_at = now()
WHERE provider = $1
  AND ((breaker = 'open' AND probe_at <= now())
       -- A probe holder that vanished: its probes lapse like the open state.
       OR (breaker = 'half_open' AND changed_at < now() - $3::float8 * interval '1 millisecond'))
RETURNING provider, breaker, changed_at, probe_at, probe_holder, trips, paused_until, reason
