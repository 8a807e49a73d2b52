SELECT body FROM sync_staging WHERE stage_id = $1 AND chunk = $2
