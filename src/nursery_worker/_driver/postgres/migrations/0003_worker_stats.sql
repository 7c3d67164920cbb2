-- nursery-worker schema version 3: what each worker reports in its heartbeat, for
-- `nursery-worker status`; and, for workers started by a supervisor, which one and which slot.
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.workers
    ADD COLUMN state         text    NOT NULL DEFAULT 'running',
    ADD COLUMN processed     bigint  NOT NULL DEFAULT 0,
    ADD COLUMN failed        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN running       integer NOT NULL DEFAULT 0,
    ADD COLUMN supervisor_id text,
    ADD COLUMN child_index   integer,
    ADD COLUMN restarts      integer NOT NULL DEFAULT 0;
