-- The trace a job continues: the W3C traceparent of the span that enqueued
-- it (NULL when no trace was being recorded).
ALTER TABLE jobs ADD COLUMN trace_parent text;

-- Listing the failed and cancelled jobs newest first (what operators look
-- for) without walking every succeeded one. Only jobs that end that way
-- get an entry. (The console's "last hour" charts have no index of their
-- own: one on finished_at, an entry for every finished job, cost the drain
-- benchmark 3.6 %; the API counts at most once per 10 s instead.)
CREATE INDEX jobs_dead ON jobs (id) WHERE state IN ('failed', 'cancelled');
