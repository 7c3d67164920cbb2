-- nursery-worker schema version 4: queue pause. A queue has a row here only once it has been paused
-- or resumed; a queue without a row is running. Workers skip the jobs of a paused queue when they
-- fetch; jobs already executing finish normally.
-- {schema} is replaced by the configured schema, quoted as an identifier.

CREATE TABLE {schema}.queues (
    name       text        PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    paused_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
