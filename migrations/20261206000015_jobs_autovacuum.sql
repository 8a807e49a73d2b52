-- The jobs table churns: every job is inserted, claimed and finished (two
-- updates, each a new row version) within seconds. PostgreSQL's defaults
-- vacuum a table once a fifth of it is dead, which on a table holding a
-- week of finished jobs means hundreds of thousands of dead versions that
-- every claim's index scan steps over first. Vacuum it (and analyze it)
-- after a small fixed number of changes instead, without throttling, as
-- production queues tune their hot tables (docs/benchmarks.md, "soak").
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
