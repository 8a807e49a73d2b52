-- Newest first (ids are UUIDv7), filtered; $1 limits to one owner (a
-- client's own jobs; operators pass NULL or the owner they look for), $4
-- to one subject, $6 to one queue. $5 is the previous page's last id.
SELECT id AS "id!", queue AS "queue!", kind AS "kind!", payload AS "payload!",
       state AS "state!: JobState", priority AS "priority!", attempt AS "attempt!",
       max_attempts AS "max_attempts!", run_at AS "run_at!", unique_key, owner, throttle_key,
       subject, waiting, locked_by, cancel_requested AS "cancel_requested!", progress,
       errors AS "errors!", created_at AS "created_at!", started_at, finished_at
FROM jobs_all
WHERE ($1::text IS NULL OR owner = $1)
  AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR kind = $3)
  AND ($4::text IS NULL OR subject = $4)
  AND ($6::text IS NULL OR queue = $6)
  AND ($5::uuid IS NULL OR id < $5)
ORDER BY id DESC
LIMIT $7
