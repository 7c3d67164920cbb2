-- nursery-worker embedded engine (SQLite), schema version 1: everything PostgreSQL's versions 1-5
-- hold, in one step. The SQLite schema has its own version numbers.
-- {p} is replaced by the table prefix, the configured schema name and an underscore
-- ("nursery_worker_"), so several schemas can share one file.
--
-- Times are INTEGER microseconds since 1970-01-01 UTC, read from the database's clock (SQLite's
-- 'now') once per transaction. JSON values are TEXT.

CREATE TABLE "{p}jobs" (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a prune
    task                TEXT    NOT NULL,
    queue               TEXT    NOT NULL,
    args                TEXT    NOT NULL DEFAULT '{}',
    state               TEXT    NOT NULL DEFAULT 'available'
                        CHECK (state IN ('scheduled', 'available', 'executing', 'retryable',
                                         'completed', 'discarded', 'cancelled')),
    priority            INTEGER NOT NULL DEFAULT 0,
    attempt             INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts        INTEGER NOT NULL DEFAULT 20 CHECK (max_attempts >= 1),
    scheduled_at        INTEGER NOT NULL,
    inserted_at         INTEGER NOT NULL,
    attempted_at        INTEGER,
    finished_at         INTEGER,
    worker_id           TEXT,
    errors              TEXT    NOT NULL DEFAULT '[]',
    result              TEXT,
    cancel_requested_at INTEGER,
    unique_key          TEXT,
    -- The states in which the key is taken, comma-separated; always the queued and running ones.
    unique_states       TEXT,
    retry_policy        TEXT,
    trace_context       TEXT,
    CHECK (state <> 'executing' OR worker_id IS NOT NULL),
    CHECK (unique_key IS NULL OR (instr(',' || unique_states || ',', ',scheduled,') > 0
                                  AND instr(',' || unique_states || ',', ',available,') > 0
                                  AND instr(',' || unique_states || ',', ',executing,') > 0
                                  AND instr(',' || unique_states || ',', ',retryable,') > 0))
);

-- The fetch: highest priority, then oldest, among the available jobs of some queues.
CREATE INDEX "{p}jobs_fetch_idx" ON "{p}jobs" (queue, priority DESC, scheduled_at, id)
    WHERE state = 'available';
-- The promoter: scheduled and retryable jobs that are due.
CREATE INDEX "{p}jobs_due_idx" ON "{p}jobs" (scheduled_at) WHERE state IN ('scheduled', 'retryable');
-- The reaper: executing jobs by worker.
CREATE INDEX "{p}jobs_executing_idx" ON "{p}jobs" (worker_id) WHERE state = 'executing';
-- Pruning by final state and age.
CREATE INDEX "{p}jobs_finished_idx" ON "{p}jobs" (state, finished_at)
    WHERE state IN ('completed', 'discarded', 'cancelled');
-- Inspection by task.
CREATE INDEX "{p}jobs_task_idx" ON "{p}jobs" (task, id);
-- Unique jobs: at most one queued or running row per (task, unique_key). Only queued and running
-- states are in the index, so no worker write ever moves a row into conflict.
CREATE UNIQUE INDEX "{p}jobs_unique_idx" ON "{p}jobs" (task, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'executing', 'retryable');

CREATE TABLE "{p}workers" (
    id            TEXT    PRIMARY KEY,
    hostname      TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    queues        TEXT    NOT NULL,  -- a JSON array of queue names
    concurrency   INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'running',
    processed     INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    running       INTEGER NOT NULL DEFAULT 0,
    supervisor_id TEXT,
    child_index   INTEGER,
    restarts      INTEGER NOT NULL DEFAULT 0
);

-- Queue pause: a row once a queue has been paused or resumed; no row means running.
CREATE TABLE "{p}queues" (
    name       TEXT    PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    paused_at  INTEGER,
    updated_at INTEGER NOT NULL
);

-- What PostgreSQL sends with NOTIFY: 'available:<queue>', 'cancel:<id>', 'finished:<ids>'. Each
-- write that would notify adds rows in its own transaction; listeners read the rows after the id
-- they last saw (AUTOINCREMENT: ids grow in commit order and are never reused). Rows older than a
-- minute are deleted by the promoter.
CREATE TABLE "{p}events" (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    payload TEXT    NOT NULL
);
CREATE INDEX "{p}events_at_idx" ON "{p}events" (at);
