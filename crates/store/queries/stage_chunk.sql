INSERT INTO sync_staging (stage_id, chunk, body) VALUES ($1, $2, $3)
