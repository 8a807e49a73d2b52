-- Jobs finished per queue and minute since $1, succeeded and not (failed or
-- cancelled), for the console's charts (counted at most every 10 s per API
-- daemon; the day partitions and jobs_done's BRIN index on finished_at
-- bound the scan to the last hour's rows). Retention may have dropped
-- some: the counts are of the jobs still kept.
SELECT queue AS "queue!",
       date_trunc('minute', finished_at) AS "minute!",
       count(*) FILTER (WHERE state = 'succeeded') AS "succeeded!",
       count(*) FILTER (WHERE state <> 'succeeded') AS "failed!"
FROM jobs_done
WHERE finished_at >= $1
GROUP BY 1, 2
ORDER BY 1, 2
