INSERT INTO queue_pauses (queue, paused_by) VALUES ($1, $2)
ON CONFLICT (queue) DO NOTHING
