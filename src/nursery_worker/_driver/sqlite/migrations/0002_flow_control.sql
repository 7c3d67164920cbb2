-- nursery-worker embedded engine (SQLite), schema version 2: what PostgreSQL's versions 6 and 7
-- hold. Workflows (the 'pending' state, depends_on, pending_deps, has_dependents), task and queue
-- limits (limit_key, the queues' limit columns, rate_limits), circuit breakers, periodic jobs.
-- {p} is replaced by the table prefix ("nursery_worker_").
--
-- SQLite cannot change a CHECK constraint in place, so the jobs table is rebuilt: a copy with the
-- new columns, the rows moved over, the old table dropped and the copy renamed. The AUTOINCREMENT
-- sequence is carried over, so that an id used before (and pruned since) is never reused.

CREATE TABLE "{p}jobs_v2" (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a prune
    task                TEXT    NOT NULL,
    queue               TEXT    NOT NULL,
    args                TEXT    NOT NULL DEFAULT '{}',
    state               TEXT    NOT NULL DEFAULT 'available'
                        CHECK (state IN ('pending', 'scheduled', 'available', 'executing', 'retryable',
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
    -- The jobs this one waits for (a JSON array of distinct ids), and how many have not completed.
    depends_on          TEXT,
    pending_deps        INTEGER NOT NULL DEFAULT 0,
    -- Set on a job once another job depends on it: only such jobs release or cancel dependents.
    has_dependents      INTEGER NOT NULL DEFAULT 0,
    -- NULL for a job of a task without limits or breaker (the fast claim); otherwise the partition
    -- of its task's limits ('' when the task's limits are not partitioned).
    limit_key           TEXT,
    CHECK (state <> 'executing' OR worker_id IS NOT NULL),
    CHECK (unique_key IS NULL OR (instr(',' || unique_states || ',', ',scheduled,') > 0
                                  AND instr(',' || unique_states || ',', ',available,') > 0
                                  AND instr(',' || unique_states || ',', ',executing,') > 0
                                  AND instr(',' || unique_states || ',', ',retryable,') > 0))
);
INSERT INTO "{p}jobs_v2" (id, task, queue, args, state, priority, attempt, max_attempts, scheduled_at, inserted_at,
                          attempted_at, finished_at, worker_id, errors, result, cancel_requested_at, unique_key,
                          unique_states, retry_policy, trace_context)
SELECT id, task, queue, args, state, priority, attempt, max_attempts, scheduled_at, inserted_at, attempted_at,
       finished_at, worker_id, errors, result, cancel_requested_at, unique_key, unique_states, retry_policy,
       trace_context
FROM "{p}jobs";
INSERT INTO sqlite_sequence (name, seq)
SELECT '{p}jobs_v2', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '{p}jobs_v2');
UPDATE sqlite_sequence
SET seq = max(seq, coalesce((SELECT s.seq FROM sqlite_sequence AS s WHERE s.name = '{p}jobs'), 0))
WHERE name = '{p}jobs_v2';
DROP TABLE "{p}jobs";
ALTER TABLE "{p}jobs_v2" RENAME TO "{p}jobs";

-- The fast claim serves jobs without task limits; limited jobs have their own index, by group.
CREATE INDEX "{p}jobs_fetch_idx" ON "{p}jobs" (queue, priority DESC, scheduled_at, id)
    WHERE state = 'available' AND limit_key IS NULL;
CREATE INDEX "{p}jobs_limited_idx" ON "{p}jobs" (queue, task, limit_key, priority DESC, scheduled_at, id)
    WHERE state = 'available' AND limit_key IS NOT NULL;
CREATE INDEX "{p}jobs_limited_executing_idx" ON "{p}jobs" (task, limit_key)
    WHERE state = 'executing' AND limit_key IS NOT NULL;
-- Pending jobs, for releasing and cancelling dependents. Empty unless workflows are in use.
CREATE INDEX "{p}jobs_pending_idx" ON "{p}jobs" (queue) WHERE state = 'pending';
CREATE INDEX "{p}jobs_due_idx" ON "{p}jobs" (scheduled_at) WHERE state IN ('scheduled', 'retryable');
CREATE INDEX "{p}jobs_executing_idx" ON "{p}jobs" (worker_id) WHERE state = 'executing';
CREATE INDEX "{p}jobs_finished_idx" ON "{p}jobs" (state, finished_at)
    WHERE state IN ('completed', 'discarded', 'cancelled');
CREATE INDEX "{p}jobs_task_idx" ON "{p}jobs" (task, id);
-- A pending job is queued: it holds its unique key like the other queued and running states.
CREATE UNIQUE INDEX "{p}jobs_unique_idx" ON "{p}jobs" (task, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'scheduled', 'available', 'executing', 'retryable');

-- Queue limits, stored with the queue's pause flag: set once, honoured by every worker.
ALTER TABLE "{p}queues" ADD COLUMN max_concurrency INTEGER CHECK (max_concurrency >= 1);
ALTER TABLE "{p}queues" ADD COLUMN rate_limit INTEGER CHECK (rate_limit >= 1);
ALTER TABLE "{p}queues" ADD COLUMN rate_period REAL CHECK (rate_period > 0);

-- Rate limits spread starts evenly (GCRA): a scope ('t:<task>:<partition>' or 'q:<queue>') lets a
-- job start every period/count seconds; "tat" is when the next slot opens (microseconds).
CREATE TABLE "{p}rate_limits" (
    scope TEXT    PRIMARY KEY,
    tat   INTEGER NOT NULL
);

-- Circuit breakers, one row per task that has one (written by the workers that run it).
CREATE TABLE "{p}breakers" (
    task         TEXT    PRIMARY KEY,
    threshold    INTEGER NOT NULL CHECK (threshold >= 1),
    cooldown     REAL    NOT NULL CHECK (cooldown > 0),
    state        TEXT    NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    failures     INTEGER NOT NULL DEFAULT 0,
    opened_at    INTEGER,
    probe_job_id INTEGER,
    updated_at   INTEGER NOT NULL
);

-- Periodic jobs: one row per schedule. Each tick is enqueued by one transaction that advances
-- last_tick (guarded by last_tick < tick) and inserts the job only if the row changed.
-- active_since: ticks before it are never enqueued. last_job_id has no foreign key: jobs are pruned.
CREATE TABLE "{p}periodic" (
    name         TEXT    PRIMARY KEY,
    cron         TEXT    NOT NULL,
    timezone     TEXT    NOT NULL,
    task         TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    args         TEXT    NOT NULL DEFAULT '{}',
    active_since INTEGER NOT NULL,
    last_tick    INTEGER,
    last_job_id  INTEGER,
    updated_at   INTEGER NOT NULL
);
