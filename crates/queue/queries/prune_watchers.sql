DELETE FROM job_watchers WHERE expires_at < now()
