DELETE FROM sync_staging WHERE stage_id = $1
