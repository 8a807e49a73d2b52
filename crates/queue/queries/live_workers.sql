-- Worker processes heard from within $1 seconds.
SELECT count(*) FROM queue_workers WHERE heartbeat_at > now() - make_interval(secs => $1)
