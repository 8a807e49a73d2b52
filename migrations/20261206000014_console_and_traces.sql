-- The trace a job continues: the W3C traceparent of the span that enqueued
-- it (NULL when no trace was being recorded).
ALTER TABLE jobs ADD COLUMN trace_parent text;

-- The console's "last hour" charts count jobs by when they finished. A
-- finishing update is never HOT (its state is in other indexes' keys and
-- predicates), so this index costs one more entry per finished job and
-- nothing on claims.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Listing the failed and cancelled jobs newest first (what operators look
-- for) without walking every succeeded one.
CREATE INDEX jobs_dead ON jobs (id) WHERE state IN ('failed', 'cancelled');
