-- Whether a job of the same kind about the same subject, enqueued before
-- this one ($3; ids are time-ordered), is running now.
SELECT EXISTS (
    SELECT 1 FROM jobs
    WHERE subject = $1 AND kind = $2 AND state = 'running' AND id < $3
) AS "running!"
