-- nursery-worker schema version 11: durable steps, durable sleeps and events, progress (issue 22).
-- {schema} is replaced by the configured schema, quoted as an identifier.
--
-- A job's steps are rows of their own, deleted with their job (pruning, `jobs delete`). A job
-- suspended by a durable wait is `scheduled` (until the sleep's end or the event's timeout) with
-- wait_step naming the step that waits, and wait_event the key it waits for; `app.emit` finds
-- the waiters of a key through jobs_wait_event_idx. Events are kept (first emit wins; a late
-- waiter still receives the payload) until the pruner removes them after `event_retention`.

ALTER TABLE {schema}.jobs
    ADD COLUMN progress   jsonb,
    ADD COLUMN wait_event text,
    ADD COLUMN wait_step  text;

CREATE INDEX jobs_wait_event_idx ON {schema}.jobs (wait_event)
    WHERE state = 'scheduled' AND wait_event IS NOT NULL;

CREATE TABLE {schema}.steps (
    job_id      bigint      NOT NULL REFERENCES {schema}.jobs (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    position    integer     NOT NULL,
    state       text        NOT NULL CHECK (state IN ('completed', 'failed', 'waiting', 'timed_out')),
    attempt     integer     NOT NULL,
    runs        integer     NOT NULL DEFAULT 1,
    result      jsonb,
    error       jsonb,
    duration    double precision,
    wake_at     timestamptz,
    event       text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name)
);

-- An event's row exists from its first emit or its first waiter (a placeholder: emitted_at is
-- NULL). A waiter updates the row (waited_at) in the transaction that suspends its job, and an
-- emit updates or inserts it before waking the key's waiters: the row lock orders the two, so a
-- waiter that suspends while an emit commits is always woken (no lost wake-up).
CREATE TABLE {schema}.durable_events (
    key         text        PRIMARY KEY,
    payload     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    waited_at   timestamptz,
    emitted_at  timestamptz
);
CREATE INDEX durable_events_age_idx ON {schema}.durable_events ((coalesce(emitted_at, waited_at, created_at)));
