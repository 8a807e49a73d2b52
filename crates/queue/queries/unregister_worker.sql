DELETE FROM queue_workers WHERE id = $1
