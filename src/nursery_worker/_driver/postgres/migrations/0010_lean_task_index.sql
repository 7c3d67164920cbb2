-- nursery-worker schema version 10: the index that lists jobs by task leaves out the executing ones.
-- {schema} is replaced by the configured schema, quoted as an identifier.
--
-- No update of a job is HOT (its state is in the predicate of the partial indexes), so every claim
-- and every completion wrote a new entry in each full index: the primary key and this one. Leaving
-- the executing jobs out spares the claim its entry here; the few executing jobs of a task are found
-- by jobs_executing_idx, and reads filtered by task take both (see _queries.ordered_page). Existing
-- rows stay where they are; only this index is rebuilt.

DROP INDEX {schema}.jobs_task_idx;
CREATE INDEX jobs_task_idx ON {schema}.jobs (task, id) WHERE state <> 'executing';
