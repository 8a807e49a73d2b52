-- Day partitions of jobs_done: today's and the next two created, those past
-- retention ($1 succeeded, $2 failed or cancelled, in seconds) dropped.
-- Returns how many jobs the dropped ones held.
SELECT jobs_done_maintain($1::float8 * interval '1 second', $2::float8 * interval '1 second') AS "dropped!"
