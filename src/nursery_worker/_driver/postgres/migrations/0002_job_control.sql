-- nursery-worker schema version 2: job control (results, cancel requests, unique jobs, per-job retry).
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.jobs
    ADD COLUMN result              jsonb,
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN unique_key          text,
    ADD COLUMN unique_states       text[],
    ADD COLUMN retry_policy        jsonb,
    ADD CONSTRAINT jobs_unique_states_check
        CHECK (unique_key IS NULL OR unique_states @> ARRAY['scheduled', 'available', 'executing', 'retryable']);

-- Unique jobs: at most one queued or running row per (task, unique_key), race-free. Only queued
-- and running states are in the index, so no worker write ever moves a row into conflict (only an
-- insert or an explicit retry can meet one). A job whose scope (unique_states) also holds finished
-- states is checked against finished twins by the insert itself (see the driver).
CREATE UNIQUE INDEX jobs_unique_idx ON {schema}.jobs (task, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'executing', 'retryable');

-- Inspection by task (app.list_jobs, the CLI).
CREATE INDEX jobs_task_idx ON {schema}.jobs (task, id);

-- Pruning by final state and age.
DROP INDEX {schema}.jobs_finished_idx;
CREATE INDEX jobs_finished_idx ON {schema}.jobs (state, finished_at)
    WHERE state IN ('completed', 'discarded', 'cancelled');
