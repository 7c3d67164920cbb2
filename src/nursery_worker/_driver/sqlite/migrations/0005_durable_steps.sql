-- nursery-worker embedded engine (SQLite), schema version 5: what PostgreSQL's version 11 holds.
-- Durable steps, durable sleeps and events, progress. {p} is replaced by the table prefix. Times
-- are integer microseconds; JSON is text. A trigger deletes a job's steps with it (PostgreSQL: a
-- foreign key ON DELETE CASCADE).

ALTER TABLE "{p}jobs" ADD COLUMN progress TEXT;
ALTER TABLE "{p}jobs" ADD COLUMN wait_event TEXT;
ALTER TABLE "{p}jobs" ADD COLUMN wait_step TEXT;

CREATE INDEX "{p}jobs_wait_event_idx" ON "{p}jobs" (wait_event)
    WHERE state = 'scheduled' AND wait_event IS NOT NULL;

CREATE TABLE "{p}steps" (
    job_id      INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('completed', 'failed', 'waiting', 'timed_out')),
    attempt     INTEGER NOT NULL,
    runs        INTEGER NOT NULL DEFAULT 1,
    result      TEXT,
    error       TEXT,
    duration    REAL,
    wake_at     INTEGER,
    event       TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);

-- (One line: the migration runner ends a statement at a line that ends with a semicolon.)
CREATE TRIGGER "{p}jobs_delete_steps" AFTER DELETE ON "{p}jobs"
BEGIN DELETE FROM "{p}steps" WHERE job_id = old.id; END;

CREATE TABLE "{p}durable_events" (
    key         TEXT    PRIMARY KEY,
    payload     TEXT,
    created_at  INTEGER NOT NULL,
    waited_at   INTEGER,
    emitted_at  INTEGER
);
CREATE INDEX "{p}durable_events_age_idx" ON "{p}durable_events" (coalesce(emitted_at, waited_at, created_at));
