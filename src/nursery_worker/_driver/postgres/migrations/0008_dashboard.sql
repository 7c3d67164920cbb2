-- nursery-worker schema version 8: what the dashboard reads instead of scanning the jobs table.
-- {schema} is replaced by the configured schema, quoted as an identifier.
--
-- rollup_minute / rollup_hour: finished attempts counted by the workers, per (bucket, queue, task,
-- error type) (error_type '' for completed and cancelled attempts), with the summed duration and a
-- fixed log-scale duration histogram (see _rollup.py), so percentiles add up over any range. Each
-- worker adds its counts every rollup_interval seconds (an upsert that sums); the pruner deletes
-- old rows. audit: every action taken through the dashboard or the admin API, by the database's
-- clock. workers.last_exit: how the previous process of a supervised slot ended.

CREATE TABLE {schema}.rollup_minute (
    bucket       timestamptz      NOT NULL,
    queue        text             NOT NULL,
    task         text             NOT NULL,
    error_type   text             NOT NULL DEFAULT '',
    completed    bigint           NOT NULL DEFAULT 0,
    failed       bigint           NOT NULL DEFAULT 0,
    discarded    bigint           NOT NULL DEFAULT 0,
    cancelled    bigint           NOT NULL DEFAULT 0,
    duration_sum double precision NOT NULL DEFAULT 0,
    histogram    bigint[]         NOT NULL,
    PRIMARY KEY (bucket, queue, task, error_type)
);

CREATE TABLE {schema}.rollup_hour (LIKE {schema}.rollup_minute INCLUDING ALL);

CREATE TABLE {schema}.audit (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text        NOT NULL,
    action text        NOT NULL,
    target jsonb       NOT NULL DEFAULT jsonb_build_object(),
    count  bigint      NOT NULL DEFAULT 0
);

ALTER TABLE {schema}.workers ADD COLUMN last_exit text;

-- A job's dependants in any state, for the dashboard's workflow graph (migration 6's index holds
-- only the pending ones).
CREATE INDEX jobs_depends_on_idx ON {schema}.jobs USING gin (depends_on) WHERE depends_on IS NOT NULL;
