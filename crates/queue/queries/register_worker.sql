INSERT INTO queue_workers (id, name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
