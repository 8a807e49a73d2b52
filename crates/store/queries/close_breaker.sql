-- The probes of holder $2 succeeded: provider $1's breaker closes.
UPDATE provider_health
SET breaker = 'closed', changed_at = now(), probe_at = NULL, probe_holder = NULL,
    trips = 0, reason = NULL
WHERE provider = $1 AND breaker = 'half_open' AND probe_holder = $2
RETURNING provider
