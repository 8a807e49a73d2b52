UPDATE jobs SET progress = $2 WHERE id = $1 AND state = 'running' AND locked_by = $3
