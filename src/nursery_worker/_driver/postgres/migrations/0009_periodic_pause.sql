-- nursery-worker: pausing a periodic schedule (`nursery-worker cron pause NAME`, app.pause_periodic).
-- A paused schedule's ticks are not enqueued (the scheduler skips it, and the guarded enqueue
-- refuses it); resuming clears paused_at, and the next due tick runs as usual.
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.periodic ADD COLUMN paused_at timestamptz;
