DELETE FROM job_watchers WHERE job_id = $1 AND watcher = $2
