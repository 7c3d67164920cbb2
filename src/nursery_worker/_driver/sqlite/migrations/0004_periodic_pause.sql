-- nursery-worker embedded engine (SQLite), schema version 4: what PostgreSQL's version 9 holds.
-- Pausing a periodic schedule: a paused schedule's ticks are not enqueued; resuming clears
-- paused_at (microseconds since 1970-01-01 UTC). {p} is replaced by the table prefix.

ALTER TABLE "{p}periodic" ADD COLUMN paused_at INTEGER;
