DELETE FROM queue_workers WHERE heartbeat_at < now() - $1 * interval '1 second'
