-- nursery-worker: periodic jobs (cron). One row per schedule, written by the workers' schedulers.
-- Each tick is enqueued by one statement that advances last_tick (guarded by last_tick < tick) and
-- inserts the job only if the row changed, so any number of schedulers enqueue each tick once.
-- active_since: ticks before it are never enqueued (when the schedule first appeared, or its
-- expression or time zone last changed). last_job_id has no foreign key: finished jobs are pruned.
-- {schema} is replaced by the configured schema, quoted as an identifier.

CREATE TABLE {schema}.periodic (
    name         text        PRIMARY KEY,
    cron         text        NOT NULL,
    timezone     text        NOT NULL,
    task         text        NOT NULL,
    queue        text        NOT NULL,
    args         jsonb       NOT NULL DEFAULT jsonb_build_object(),
    active_since timestamptz NOT NULL DEFAULT now(),
    last_tick    timestamptz,
    last_job_id  bigint,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
