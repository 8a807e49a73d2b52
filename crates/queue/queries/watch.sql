INSERT INTO job_watchers (job_id, watcher, expires_at) VALUES ($1, $2, now() + interval '1 day')
