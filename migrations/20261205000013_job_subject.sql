-- What a job is about (a connection id), filled in by the domain when it
-- enqueues: the generic queue no longer reads its payload to list a
-- connection's jobs.
ALTER TABLE jobs ADD COLUMN subject text;
UPDATE jobs SET subject = payload->>'connection_id' WHERE payload ? 'connection_id';
CREATE INDEX jobs_subject ON jobs (subject, id) WHERE subject IS NOT NULL;
