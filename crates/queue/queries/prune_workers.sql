DELETE FROM queue_workers WHERE heartbeat_at < now() - $1::float8 * interval '1 second'
