-- nursery-worker embedded engine (SQLite), schema version 3: what PostgreSQL's version 8 holds.
-- Metric rollups per minute and per hour, the audit table, and workers.last_exit.
-- {p} is replaced by the table prefix ("nursery_worker_"). Times are integer microseconds; the
-- histogram is a JSON array of counts.

CREATE TABLE "{p}rollup_minute" (
    bucket       INTEGER NOT NULL,
    queue        TEXT    NOT NULL,
    task         TEXT    NOT NULL,
    error_type   TEXT    NOT NULL DEFAULT '',
    completed    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    discarded    INTEGER NOT NULL DEFAULT 0,
    cancelled    INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL    NOT NULL DEFAULT 0,
    histogram    TEXT    NOT NULL,
    PRIMARY KEY (bucket, queue, task, error_type)
);

CREATE TABLE "{p}rollup_hour" (
    bucket       INTEGER NOT NULL,
    queue        TEXT    NOT NULL,
    task         TEXT    NOT NULL,
    error_type   TEXT    NOT NULL DEFAULT '',
    completed    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    discarded    INTEGER NOT NULL DEFAULT 0,
    cancelled    INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL    NOT NULL DEFAULT 0,
    histogram    TEXT    NOT NULL,
    PRIMARY KEY (bucket, queue, task, error_type)
);

CREATE TABLE "{p}audit" (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL DEFAULT '{}',
    count  INTEGER NOT NULL DEFAULT 0
);

ALTER TABLE "{p}workers" ADD COLUMN last_exit TEXT;

-- A job's dependants in any state, for the dashboard's workflow graph: only jobs with dependencies
-- are read.
CREATE INDEX "{p}jobs_depends_idx" ON "{p}jobs" (id) WHERE depends_on IS NOT NULL;
