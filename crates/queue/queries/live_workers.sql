-- Worker processes heard from within $1 seconds.
SELECT count(*) AS "workers!" FROM queue_workers WHERE heartbeat_at > now() - make_interval(secs => $1::float8)
