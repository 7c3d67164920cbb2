"""The PostgreSQL driver: the only module that imports psycopg or holds SQL.

Design (measured in ``docs/database-layer.md`` and ``docs/performance.md``): psycopg's async API
runs only on asyncio, so every statement runs on a *sync* psycopg connection from a
``psycopg_pool.ConnectionPool``. Each call is a single autocommit statement that does a whole batch
(claim N jobs, finish N jobs, insert N jobs). The hot ones (a one-job or small insert, the claims,
the batched completion, reading a job) run from the event loop itself (:meth:`PostgresDriver._direct`):
psycopg's execution generator driven by ``anyio.wait_readable``/``wait_writable`` on an idle pooled
connection, trio and asyncio alike. Everything else, and the hot statements when no pooled
connection is idle, takes one ``anyio.to_thread.run_sync`` hop per call. The listener never blocks a
thread either: it waits for its socket to become readable on the event loop and is cancelled
instantly.

Every statement that moves an executing job mirrors a ``*_guarded`` function of ``_state.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import re
import select
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs
import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.waiting import Ready, Wait

from .._dsn import redact
from .._errors import ConfigurationError, DatabaseError, JobStateError, SchemaNotReady
from .._flow import BreakerInfo, RateLimit, dependency_ids, order_graph
from .._models import (
    Completion,
    Job,
    JobError,
    JobSpec,
    LimitedClaim,
    QueueInfo,
    RescueResult,
    WorkerInfo,
    WorkerLoad,
    WorkerRow,
)
from .._periodic import PeriodicEnqueued, PeriodicEntry, PeriodicRow, PeriodicState
from .._state import JobState
from . import Notification, error_entry, spec_columns

logger = logging.getLogger("nursery_worker.driver")

T = TypeVar("T")

#: The schema version this code reads and writes; the last entry of MIGRATIONS.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, "0001_initial.sql"),
    (2, "0002_job_control.sql"),
    (3, "0003_worker_stats.sql"),
    (4, "0004_queues.sql"),
    (5, "0005_trace_context.sql"),
    (6, "0006_flow_control.sql"),
    (7, "0007_periodic.sql"),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_JOB_COLUMNS = (
    "id, task, queue, args, state, attempt, max_attempts, priority, scheduled_at, inserted_at, "
    "attempted_at, finished_at, errors, worker_id, result, cancel_requested_at, unique_key, retry_policy, "
    "trace_context, depends_on"
)
_J_COLUMNS = ", ".join("j." + c.strip() for c in _JOB_COLUMNS.split(","))
_TERMINAL = "('completed', 'discarded', 'cancelled')"
_ACTIVE_SET = frozenset({"pending", "scheduled", "available", "executing", "retryable"})
#: A finished-jobs notification carries the ids, or '*' when they would not fit NOTIFY's 8000 bytes.
_NOTIFY_FINISHED = """
SELECT pg_notify(%(channel)s, 'finished:' || CASE WHEN length(f.ids) > 7000 THEN '*' ELSE f.ids END)
FROM (SELECT string_agg(id::text, ',') AS ids FROM {source} WHERE state IN ('completed', 'discarded', 'cancelled')) AS f
WHERE f.ids IS NOT NULL
"""
#: One NOTIFY per queue that got available jobs, not one per row (the listeners only need a nudge).
_NOTIFY_AVAILABLE = """
SELECT pg_notify(%(channel)s, 'available:' || q.queue)
FROM (SELECT DISTINCT queue FROM {source} WHERE state = 'available') AS q
"""

# --- SQL -------------------------------------------------------------------------------------
# {s} is the schema identifier; %(name)s parameters are always bound, never formatted in.

# Rows come back in id order, which is the order given: identities are drawn in ORDER BY u.ord.
# With unique jobs, ON CONFLICT skips a row whose (task, unique_key) is taken in its scope; the
# caller matches the returned rows to its specs and looks the existing jobs up.
_SQL_INSERT = (
    """
WITH ins AS (
    INSERT INTO {s}.jobs (task, queue, args, priority, max_attempts, scheduled_at, state,
                          unique_key, unique_states, retry_policy, trace_context, limit_key)
    SELECT u.task, u.queue, u.args::jsonb, u.priority, u.max_attempts, w.at,
           CASE WHEN w.at > now() THEN 'scheduled' ELSE 'available' END,
           u.unique_key, string_to_array(u.unique_states, ','), u.retry_policy::jsonb, u.trace_context::jsonb,
           u.limit_key
    FROM unnest(%(tasks)s::text[], %(queues)s::text[], %(args)s::text[], %(priorities)s::int[],
                %(max_attempts)s::int[], %(scheduled)s::timestamptz[], %(delays)s::float8[],
                %(unique_keys)s::text[], %(unique_states)s::text[], %(retry_policies)s::text[],
                %(trace_contexts)s::text[], %(limit_keys)s::text[])
         WITH ORDINALITY AS u(task, queue, args, priority, max_attempts, scheduled_at, delay,
                              unique_key, unique_states, retry_policy, trace_context, limit_key, ord)
    CROSS JOIN LATERAL (
        SELECT coalesce(u.scheduled_at, now() + coalesce(u.delay, 0) * interval '1 second') AS at
    ) AS w
    ORDER BY u.ord
    {on_conflict}
    RETURNING id, state, queue, scheduled_at, inserted_at, unique_key, task
), notified AS ("""
    + _NOTIFY_AVAILABLE.format(source="ins")
    + """)
SELECT id, state, scheduled_at, inserted_at, unique_key, task, (SELECT count(*) FROM notified)
FROM ins ORDER BY id
"""
)
# One job: plain parameters (no arrays to build) and one NOTIFY.
_SQL_INSERT_ONE = """
WITH ins AS (
    INSERT INTO {s}.jobs (task, queue, args, priority, max_attempts, scheduled_at, state, retry_policy,
                          trace_context, limit_key)
    SELECT %(task)s, %(queue)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s, w.at,
           CASE WHEN w.at > now() THEN 'scheduled' ELSE 'available' END, %(retry_policy)s::jsonb,
           %(trace_context)s::jsonb, %(limit_key)s
    FROM (SELECT coalesce(%(scheduled)s::timestamptz, now() + coalesce(%(delay)s::float8, 0) * interval '1 second')
          AS at) AS w
    RETURNING id, state, queue, scheduled_at, inserted_at
)
SELECT id, state, scheduled_at, inserted_at, NULL, NULL,
       CASE WHEN state = 'available' THEN pg_notify(%(channel)s, 'available:' || queue) END
FROM ins
"""

# Bulk inserts of many jobs go through COPY: ids drawn first (so the jobs come back in order),
# the transaction's now() read once and the schedule computed from it, then one NOTIFY per queue.
_COPY_MIN = 200
#: Rows formatted per write to the COPY stream.
_COPY_CHUNK = 2_000
#: COPY's text format: a backslash starts an escape, tab and newline end a field and a row.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str | None) -> str:
    """A text field of COPY's text format: NULL as ``\\N``, the special characters escaped."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


_SQL_COPY_PREPARE = (
    "SELECT now(), array_agg(nextval(pg_get_serial_sequence(%(table)s, 'id'))) FROM generate_series(1, %(n)s)"
)
_SQL_COPY = (
    "COPY {s}.jobs (id, task, queue, args, priority, max_attempts, scheduled_at, state, retry_policy, trace_context, "
    "limit_key) FROM STDIN"
)
_SQL_NOTIFY_QUEUES = "SELECT pg_notify(%(channel)s, 'available:' || q) FROM unnest(%(queues)s::text[]) AS q"

_ACTIVE = "('pending', 'scheduled', 'available', 'executing', 'retryable')"
_ON_CONFLICT = "ON CONFLICT (task, unique_key) WHERE unique_key IS NOT NULL AND state IN " + _ACTIVE + " DO NOTHING"

# The job holding each unique key, in the scope of states of the spec asking (a queued or running
# holder first, then the newest). Queued and running holders are what the index refused an insert
# for; finished ones count only for a spec whose scope includes their state.
_SQL_UNIQUE_HOLDERS = """
SELECT DISTINCT ON (k.ord) k.ord, __J_COLUMNS__ FROM {s}.jobs AS j
JOIN unnest(%(tasks)s::text[], %(keys)s::text[], %(states)s::text[])
     WITH ORDINALITY AS k(task, unique_key, states, ord)
  ON j.task = k.task AND j.unique_key = k.unique_key
WHERE j.unique_key IS NOT NULL AND j.state = ANY (string_to_array(k.states, ','))
ORDER BY k.ord, (j.state IN __ACTIVE__) DESC, j.id DESC
""".replace("__J_COLUMNS__", _J_COLUMNS).replace("__ACTIVE__", _ACTIVE)

# fetch_guarded: available -> executing, attempt + 1, worker set.
# The claim selects ids in a sub-select and updates them by primary key. The guard of
# fetch_guarded (available) is the sub-select's WHERE: FOR UPDATE re-checks it on the row it locks
# (READ COMMITTED's re-check), so a locked row is available, and no one else can change it before
# the UPDATE of the same statement. The outer UPDATE must not repeat ``state = 'available'``: that
# lets the planner drive the update from the partial fetch index instead of the ids, which halved
# throughput here (3,600 against 6,300 jobs/s), and with a CTE joined back the same flip took one
# fetch of 50 to 90 ms once statistics lagged (docs/performance.md). This is the claim of one queue,
# compared as a plain value, so the fetch index delivers its rows in order; several queues take
# _SQL_FETCH_MANY.
_SQL_FETCH = """
UPDATE {s}.jobs AS j
SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(), worker_id = %(worker)s
WHERE j.id = ANY(ARRAY(
    SELECT id FROM {s}.jobs
    WHERE state = 'available' AND limit_key IS NULL AND __QUEUES__ __TASKS__
    ORDER BY priority DESC, scheduled_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING __J_COLUMNS__
""".replace("__J_COLUMNS__", _J_COLUMNS)

# A worker of several queues: each queue's jobs come from their own ordered scan of the fetch index
# (LATERAL), and the best of them across queues are claimed. One scan of ``queue = ANY(...)`` cannot
# deliver rows in priority order, so it sorted every available job of those queues on every claim
# (docs/performance.md, fourth round: 90 ms against 3.5 ms a claim with 200,000 jobs waiting). Rows a
# queue's scan locks beyond those claimed are unlocked when the (autocommit) statement ends.
_SQL_FETCH_MANY = """
UPDATE {s}.jobs AS j
SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(), worker_id = %(worker)s
WHERE j.id = ANY(ARRAY(
    SELECT c.id
    FROM unnest(__QUEUES__) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority, scheduled_at FROM {s}.jobs
        WHERE state = 'available' AND limit_key IS NULL AND queue = q.name __TASKS__
        ORDER BY priority DESC, scheduled_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.priority DESC, c.scheduled_at, c.id
    LIMIT %(limit)s
))
RETURNING __J_COLUMNS__
""".replace("__J_COLUMNS__", _J_COLUMNS)

# A paused queue is dropped from the worker's list before the scan (the paused check runs once per
# statement, as an InitPlan), so the claim keeps its index plan. A pause is committed before it
# returns; a fetch that started earlier may still claim that queue's jobs once.
_NOT_TASKS = "AND task <> ALL(%(limited)s::text[])"
# A queue with limits is claimed by the limited claim only (nw_claim_limited, migration 6).
_HELD = "(paused OR max_concurrency IS NOT NULL OR rate_limit IS NOT NULL)"
_FETCH_QUEUES = "ARRAY(SELECT unnest(%(queues)s::text[]) EXCEPT SELECT name FROM {s}.queues WHERE __HELD__)".replace(
    "__HELD__", _HELD
)
_FETCH_ONE_QUEUE = (
    "queue = %(queue)s AND NOT EXISTS (SELECT 1 FROM {s}.queues WHERE name = %(queue)s AND __HELD__)"
).replace("__HELD__", _HELD)

# Pause or resume; returns whether the flag changed. Resuming nudges the workers of that queue.
_SQL_SET_PAUSED = """
WITH prev AS (SELECT paused FROM {s}.queues WHERE name = %(name)s),
upsert AS (
    INSERT INTO {s}.queues AS q (name, paused, paused_at, updated_at)
    VALUES (%(name)s, %(paused)s, CASE WHEN %(paused)s THEN now() END, now())
    ON CONFLICT (name) DO UPDATE
    SET paused = excluded.paused,
        paused_at = CASE WHEN excluded.paused THEN coalesce(q.paused_at, now()) END,
        updated_at = now()
    RETURNING name
)
SELECT coalesce((SELECT paused FROM prev), false) IS DISTINCT FROM %(paused)s,
       (SELECT count(*) FROM upsert),
       CASE WHEN NOT %(paused)s THEN pg_notify(%(channel)s, 'available:' || %(name)s) END
"""
# Every queue that has jobs or a pause row: counts by state, the oldest available job (database clock).
_SQL_LIST_QUEUES = """
SELECT n.name, coalesce(p.paused, false), p.paused_at, coalesce(c.counts, '{{}}'::jsonb), c.oldest, now(),
       p.max_concurrency, p.rate_limit, p.rate_period
FROM (SELECT name FROM {s}.queues UNION SELECT DISTINCT queue FROM {s}.jobs) AS n(name)
LEFT JOIN {s}.queues AS p ON p.name = n.name
LEFT JOIN (
    SELECT g.queue, jsonb_object_agg(g.state, g.n) AS counts, min(g.oldest) AS oldest
    FROM (
        SELECT queue, state, count(*) AS n, min(scheduled_at) FILTER (WHERE state = 'available') AS oldest
        FROM {s}.jobs GROUP BY queue, state
    ) AS g
    GROUP BY g.queue
) AS c ON c.queue = n.name
WHERE %(name)s::text IS NULL OR n.name = %(name)s::text
ORDER BY n.name
"""

# An error entry appended to j.errors, keeping at most %(cap)s entries (the oldest one dropped).
_APPEND_ERROR = """
(CASE WHEN jsonb_array_length(j.errors) >= %(cap)s THEN j.errors - 0 ELSE j.errors END)
    || jsonb_build_array({entry} || jsonb_build_object('at', now(), 'attempt', j.attempt))
"""

# finish_guarded: only the attempt this worker is executing may be finished. A job whose cancel was
# requested during the attempt never runs again: where it would (released, retryable, snoozed) it
# becomes cancelled.
_OVERRIDE = "(j.cancel_requested_at IS NOT NULL AND u.state IN ('available', 'retryable', 'scheduled'))"
_FINAL_STATE = "(CASE WHEN " + _OVERRIDE + " THEN 'cancelled' ELSE u.state END)"
_SQL_FINISH = (
    """
WITH upd AS (
    UPDATE {s}.jobs AS j
    SET state = """
    + _FINAL_STATE
    + """,
        attempt = j.attempt - (CASE WHEN __OVERRIDE__ THEN 0 ELSE u.give_back END),
        scheduled_at = CASE WHEN u.delay IS NULL THEN j.scheduled_at
                            ELSE now() + u.delay * interval '1 second' END,
        finished_at = CASE WHEN """
    + _FINAL_STATE
    + """ IN """
    + _TERMINAL
    + """ THEN now() END,
        worker_id = NULL,
        result = CASE WHEN u.result IS NULL THEN j.result ELSE u.result::jsonb END,
        errors = CASE WHEN u.error IS NOT NULL THEN %(append_error)s
                      WHEN __OVERRIDE__ THEN %(append_cancel)s
                      ELSE j.errors END
    FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(leases)s::timestamptz[], %(states)s::text[],
                %(delays)s::float8[], %(errors)s::text[], %(give_back)s::int[], %(results)s::text[])
         AS u(id, attempt, lease, state, delay, error, give_back, result)
    WHERE j.id = u.id AND j.state = 'executing' AND j.attempt = u.attempt AND j.worker_id = %(worker)s
      AND j.attempted_at IS NOT DISTINCT FROM u.lease
    RETURNING j.id, j.queue, j.state
), available AS ("""
    + _NOTIFY_AVAILABLE.format(source="upd")
    + """
), finished AS ("""
    + _NOTIFY_FINISHED.format(source="upd")
    + """)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM available), (SELECT count(*) FROM finished)
"""
)

# promote_guarded: due scheduled/retryable -> available.
_SQL_PROMOTE = """
WITH due AS (
    SELECT id FROM {s}.jobs
    WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.jobs AS j SET state = 'available'
FROM due
WHERE j.id = due.id AND j.state IN ('scheduled', 'retryable')
RETURNING j.queue, j.state
"""
_SQL_PROMOTE = (
    "WITH promoted AS ("
    + _SQL_PROMOTE
    + "), notified AS ("
    + _NOTIFY_AVAILABLE.format(source="promoted")
    + ") SELECT (SELECT count(*) FROM promoted), (SELECT count(*) FROM notified)"
)

# rescue_guarded: executing on a worker with no recent heartbeat (or no row at all).
_SQL_RESCUE = """
WITH orphans AS (
    SELECT j.id FROM {s}.jobs AS j
    WHERE j.state = 'executing'
      AND NOT EXISTS (
          SELECT 1 FROM {s}.workers AS w
          WHERE w.id = j.worker_id AND w.heartbeat_at > now() - %(after)s * interval '1 second'
      )
    ORDER BY j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {s}.jobs AS j
SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                 WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'retryable' END,
    scheduled_at = now(),
    finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempt >= j.max_attempts THEN now() END,
    worker_id = NULL,
    errors = %(append_error)s
FROM orphans
WHERE j.id = orphans.id AND j.state = 'executing'
RETURNING j.state
"""

_SQL_DELETE_DEAD_WORKERS = """
DELETE FROM {s}.workers WHERE heartbeat_at <= now() - %(after)s * interval '1 second'
"""

_SQL_REGISTER = """
INSERT INTO {s}.workers (id, hostname, pid, queues, concurrency, state, supervisor_id, child_index, restarts)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s::text[], %(concurrency)s, 'starting',
        %(supervisor_id)s, %(child_index)s, %(restarts)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
"""

_SQL_HEARTBEAT = "UPDATE {s}.workers SET heartbeat_at = now() WHERE id = %(id)s"
# The heartbeat with the worker's counters, for `nursery-worker status`.
_SQL_HEARTBEAT_LOAD = """
UPDATE {s}.workers
SET heartbeat_at = now(), state = %(state)s, processed = %(processed)s, failed = %(failed)s, running = %(running)s
WHERE id = %(id)s
"""
_SQL_LIST_WORKERS = """
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, state, processed, failed, running,
       supervisor_id, child_index, restarts, now()
FROM {s}.workers
ORDER BY supervisor_id NULLS LAST, child_index NULLS LAST, hostname, pid, id
"""
_SQL_DEREGISTER = "DELETE FROM {s}.workers WHERE id = %(id)s"
_SQL_GET = "SELECT " + _JOB_COLUMNS + " FROM {s}.jobs WHERE id = %(id)s"
_SQL_EXECUTING = """
SELECT id, attempt, attempted_at FROM {s}.jobs
WHERE state = 'executing' AND worker_id = %(worker)s
  AND attempted_at < now() - %(older)s * interval '1 second'
"""
_SQL_VERSION = "SELECT max(version) FROM {s}.migrations"
# Queue depth for the metrics: waiting and running jobs only, so the cost does not grow with the
# finished rows that retention keeps. One arm per partial index (fetch, due, executing): with
# ``state IN (...)`` the planner scans the whole table (45 ms with 300k finished rows, 0.15 ms so).
_SQL_QUEUE_DEPTH = """
SELECT queue, state, count(*) FROM (
    SELECT queue, state FROM {s}.jobs WHERE state = 'available'
    UNION ALL SELECT queue, state FROM {s}.jobs WHERE state IN ('scheduled', 'retryable')
    UNION ALL SELECT queue, state FROM {s}.jobs WHERE state = 'executing'
    UNION ALL SELECT queue, state FROM {s}.jobs WHERE state = 'pending'
) AS active
GROUP BY queue, state ORDER BY 1, 2
"""

# cancel_guarded, in two steps: a waiting job is cancelled at once ...
_SQL_CANCEL_WAITING = (
    """
UPDATE {s}.jobs AS j
SET state = 'cancelled', finished_at = now(), errors = %(append_error)s
WHERE j.id = %(id)s AND j.state IN ('pending', 'scheduled', 'available', 'retryable')
RETURNING """
    + _J_COLUMNS
    + """, pg_notify(%(channel)s, 'finished:' || j.id)
"""
)
# ... an executing one gets a durable request, and its worker a nudge.
_SQL_CANCEL_EXECUTING = (
    """
UPDATE {s}.jobs AS j
SET cancel_requested_at = coalesce(j.cancel_requested_at, now())
WHERE j.id = %(id)s AND j.state = 'executing'
RETURNING """
    + _J_COLUMNS
    + """, pg_notify(%(channel)s, 'cancel:' || j.id)
"""
)
_SQL_CANCEL_REQUESTED = """
SELECT id, attempt FROM {s}.jobs
WHERE state = 'executing' AND worker_id = %(worker)s AND cancel_requested_at IS NOT NULL
"""
# retry_guarded: the dead-letter path back to the queue, with one more attempt allowed.
# A job with dependencies waits again for those not completed; the locks on them make a
# dependency that completes meanwhile release it (its trigger runs after this commits).
_SQL_RETRY = (
    """
WITH parents AS (
    SELECT p.id, p.state FROM {s}.jobs AS p
    WHERE p.id = ANY(coalesce((SELECT depends_on FROM {s}.jobs WHERE id = %(id)s), '{{}}'::bigint[]))
    FOR SHARE
), d AS (
    SELECT count(*) FILTER (WHERE state <> 'completed') AS waiting,
           count(*) FILTER (WHERE state IN ('discarded', 'cancelled')) AS failed
    FROM parents
)
UPDATE {s}.jobs AS j
SET state = CASE WHEN d.waiting > 0 THEN 'pending' ELSE 'available' END, pending_deps = d.waiting,
    scheduled_at = now(), finished_at = NULL, cancel_requested_at = NULL, result = NULL,
    max_attempts = greatest(j.max_attempts, j.attempt + 1)
FROM d
WHERE j.id = %(id)s AND j.state IN ('discarded', 'cancelled') AND d.failed = 0
RETURNING """
    + _J_COLUMNS
    + """, CASE WHEN d.waiting = 0 THEN pg_notify(%(channel)s, 'available:' || j.queue) END
"""
)
# The dependencies of a job that retry_job refused, to word the error.
_SQL_FAILED_PARENTS = """
SELECT p.id, p.task, p.state FROM {s}.jobs AS p
WHERE p.id = ANY(coalesce((SELECT depends_on FROM {s}.jobs WHERE id = %(id)s), '{{}}'::bigint[]))
  AND p.state IN ('discarded', 'cancelled')
ORDER BY p.id
"""
# Pruning, one final state and one bounded batch at a time.
# --- flow control (migration 6) -------------------------------------------------------------
# One job with dependencies. Locking the dependencies (has_dependents = true) orders this insert
# with their completion: a dependency that completes first is seen completed here (the UPDATE reads
# its newest version); one that completes later waits for this commit, and its trigger then sees
# this job pending. A dependency already discarded or cancelled cancels the job at once.
_SQL_INSERT_DEP = """
WITH parents AS (
    UPDATE {s}.jobs SET has_dependents = true
    WHERE id = ANY(%(deps)s::bigint[])
    RETURNING id, task, state
), failed AS (
    SELECT id, task, state FROM parents WHERE state IN ('discarded', 'cancelled') ORDER BY id LIMIT 1
), ins AS (
    INSERT INTO {s}.jobs (task, queue, args, priority, max_attempts, scheduled_at, state, retry_policy,
                          trace_context, limit_key, unique_key, unique_states, depends_on, pending_deps,
                          finished_at, errors)
    SELECT %(task)s, %(queue)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s, w.at,
           CASE WHEN EXISTS (SELECT 1 FROM failed) THEN 'cancelled'
                WHEN w.waiting > 0 THEN 'pending'
                WHEN w.at > now() THEN 'scheduled' ELSE 'available' END,
           %(retry_policy)s::jsonb, %(trace_context)s::jsonb, %(limit_key)s, %(unique_key)s,
           string_to_array(%(unique_states)s, ','), %(deps)s::bigint[], w.waiting,
           CASE WHEN EXISTS (SELECT 1 FROM failed) THEN now() END,
           coalesce((SELECT jsonb_build_array(jsonb_build_object(
                        'type', 'DependencyFailed',
                        'message', format('dependency %%s (%%s) was %%s, so this job will not run',
                                          f.id, f.task, f.state),
                        'traceback', '', 'at', now(), 'attempt', 0)) FROM failed AS f), '[]'::jsonb)
    FROM (SELECT coalesce(%(scheduled)s::timestamptz,
                          now() + coalesce(%(delay)s::float8, 0) * interval '1 second') AS at,
                 (SELECT count(*) FROM parents WHERE state <> 'completed') AS waiting) AS w
    __ON_CONFLICT__
    RETURNING id, state, queue, scheduled_at, inserted_at
)
SELECT ins.id, ins.state, ins.scheduled_at, ins.inserted_at, (SELECT array_agg(id) FROM parents),
       CASE WHEN ins.state = 'available' THEN pg_notify(%(channel)s, 'available:' || ins.queue) END
FROM (SELECT 1) AS one LEFT JOIN ins ON true
"""
_SQL_CLAIM_LIMITED = (
    "SELECT * FROM {s}.nw_claim_limited(%(worker)s, %(queues)s::text[], %(limit)s, %(cfg)s::jsonb, %(adopt)s)"
)
_SQL_SET_LIMITS = """
INSERT INTO {s}.queues AS q (name, max_concurrency, rate_limit, rate_period, updated_at)
VALUES (%(name)s, %(concurrency)s, %(rate)s, %(period)s, now())
ON CONFLICT (name) DO UPDATE
SET max_concurrency = excluded.max_concurrency, rate_limit = excluded.rate_limit, rate_period = excluded.rate_period,
    updated_at = now()
RETURNING pg_notify(%(channel)s, 'available:' || q.name)
"""
_SQL_REGISTER_BREAKERS = """
INSERT INTO {s}.breakers AS b (task, threshold, cooldown)
SELECT * FROM unnest(%(tasks)s::text[], %(thresholds)s::int[], %(cooldowns)s::float8[])
ON CONFLICT (task) DO UPDATE SET threshold = excluded.threshold, cooldown = excluded.cooldown, updated_at = now()
WHERE (b.threshold, b.cooldown) IS DISTINCT FROM (excluded.threshold, excluded.cooldown)
"""
_SQL_LIST_BREAKERS = """
SELECT task, state, failures, threshold, cooldown, opened_at, probe_job_id, now() FROM {s}.breakers ORDER BY task
"""

_SQL_PRUNE = """
WITH doomed AS (
    SELECT id FROM {s}.jobs
    WHERE state = %(state)s AND finished_at < now() - %(age)s * interval '1 second'
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {s}.jobs AS j USING doomed WHERE j.id = doomed.id AND j.state = %(state)s
"""


def _conninfo(dsn: str, connect_timeout: float) -> str:
    """Add our connection defaults to *dsn* without overriding anything the user set."""
    problem = None
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        problem = _hide_dsn_fragments(_one_line(str(exc)), dsn)
    if problem is not None:
        # Raised outside the except block: psycopg's message may quote the DSN, password and all,
        # and must not ride along as __context__.
        raise ConfigurationError(
            f"invalid DSN {redact(dsn)!r}: {problem}; use 'postgresql://user:password@host:5432/db'"
        )
    defaults = {
        "connect_timeout": str(max(2, round(connect_timeout))),
        "application_name": "nursery-worker",
        # A silently dropped TCP path must surface as an error, not a hang.
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    return make_conninfo(dsn, **{k: v for k, v in defaults.items() if k not in params})


#: SQLSTATE classes of a statement refused for what it holds: trying it again cannot succeed.
#: Cardinality (21), data (22: a bad value, a timestamp out of range), integrity (23), a trigger's
#: refusal (27, P0), routines (2F, 38, 39), syntax and access (42), check options (44), and
#: program limits (54: a string over jsonb's 256 MB). psycopg files class 54 under
#: OperationalError, next to a dropped connection: its class is what tells them apart.
_REFUSED_CLASSES = frozenset({"21", "22", "23", "27", "2F", "38", "39", "42", "44", "54", "P0"})


def _transient(exc: BaseException) -> bool:
    """Whether the same statement may succeed later (a connection, an outage, a lock, a shutdown)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if not sqlstate:  # raised by psycopg itself: a lost connection, or a parameter it cannot send
        return not isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError))
    # A missing privilege may be granted while the worker retries.
    return sqlstate[:2] not in _REFUSED_CLASSES or sqlstate == "42501"


#: libpq's connection options: a name libpq quotes in a message is never a secret.
_OPTION_NAMES = frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())


def _hide_dsn_fragments(message: str, dsn: str) -> str:
    """libpq quotes the piece of a DSN it could not read (``missing "=" after "..."``, ``invalid
    percent-encoded token: "..."``), which may be a piece of the password: hide each quoted piece
    of *dsn* that its redaction hides, keep the others (a host, an option's name)."""
    redacted = redact(dsn)
    parts = message.split('"')
    for n in range(1, len(parts), 2):
        piece = parts[n]
        if piece and piece not in _OPTION_NAMES and piece in dsn and piece not in redacted:
            parts[n] = "***"
    return '"'.join(parts)


def _one_line(message: str) -> str:
    """libpq's messages span lines (a hint on the second); errors here are one redacted line."""
    return " ".join(redact(message).split())


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


#: A state as stored, to its enum member: a dict lookup, several times cheaper than ``JobState(value)``.
_STATE_OF: dict[str, JobState] = {state.value: state for state in JobState}


def _job_from_row(row: Sequence[Any], *, duplicate: bool = False) -> Job:
    errors = tuple(
        JobError(
            attempt=int(e.get("attempt", 0)),
            at=_parse_time(e.get("at")),
            type=str(e.get("type", "")),
            message=str(e.get("message", "")),
            traceback=str(e.get("traceback", "")),
        )
        for e in (row[12] or ())
    )
    extra = len(row) > 14
    return Job(
        id=row[0],
        task=row[1],
        queue=row[2],
        args=row[3],
        state=_STATE_OF[row[4]],
        attempt=row[5],
        max_attempts=row[6],
        priority=row[7],
        scheduled_at=row[8],
        inserted_at=row[9],
        attempted_at=row[10],
        finished_at=row[11],
        errors=errors,
        worker_id=row[13],
        result=row[14] if extra else None,
        cancel_requested_at=row[15] if extra else None,
        unique_key=row[16] if extra else None,
        retry_policy=row[17] if extra else None,
        trace_context=row[18] if len(row) > 18 else None,
        depends_on=tuple(row[19] or ()) if len(row) > 19 else (),
        duplicate=duplicate,
    )


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK
#: How long the event loop may wait for a pooled connection that was idle a moment before.
_DIRECT_TAKE_TIMEOUT = 0.005
#: psycopg's execution generator, which its own sync and async cursors drive (absent: thread hops).
_HAS_EXECUTE_GEN = hasattr(psycopg.Cursor, "_execute_gen")


async def _drive(gen: Any, fileno: int) -> Any:
    """Run a psycopg execution generator to its end, waiting for the socket on the event loop."""
    try:
        state = next(gen)
        while True:
            if state == Wait.R:
                await anyio.wait_readable(fileno)
                ready = Ready.R
            else:
                await anyio.wait_writable(fileno)
                ready = Ready.W
                if state == Wait.RW:
                    readable, _, _ = select.select([fileno], [], [], 0)
                    if readable:
                        ready = Ready.RW
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value


class PostgresDriver:
    """The PostgreSQL implementation of the driver interface (see ``_driver/__init__.py``)."""

    schema_version = SCHEMA_VERSION
    #: Whether the hot statements run from the event loop (see :meth:`_direct`); off: thread hops.
    direct: bool = _HAS_EXECUTE_GEN

    def __init__(
        self, dsn: str, *, schema: str, pool_min_size: int, pool_max_size: int, connect_timeout: float
    ) -> None:
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"schema={schema!r} is not a valid schema name: use 1-41 lowercase letters, digits and "
                "underscores, starting with a letter or underscore (for example 'nursery_worker')"
            )
        self.schema = schema
        self.channel = f"{schema}_events"
        self._dsn_redacted = redact(dsn)
        self._conninfo = _conninfo(dsn, connect_timeout)
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._connect_timeout = connect_timeout
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        ident = sql.Identifier(schema)

        def q(text: str) -> bytes:
            # Composed once per driver: the schema is the only identifier, everything else is bound.
            return sql.SQL(text).format(s=ident).as_bytes(None)

        append_error = _APPEND_ERROR.format(entry="u.error::jsonb")
        rescue_entry = (
            "jsonb_build_object('type', 'WorkerLost', 'message', 'worker ' || coalesce(j.worker_id, '?') "
            "|| ' stopped heartbeating; job rescued by ' || %(rescuer)s, 'traceback', '')"
        )
        self._sql_insert = q(_SQL_INSERT.replace("{on_conflict}", ""))
        self._sql_insert_unique = q(_SQL_INSERT.replace("{on_conflict}", _ON_CONFLICT))
        self._sql_insert_one = q(_SQL_INSERT_ONE)
        self._sql_copy_prepare = _SQL_COPY_PREPARE.encode()
        self._sql_copy = q(_SQL_COPY)
        self._sql_notify_queues = _SQL_NOTIFY_QUEUES.encode()
        self._sql_unique_holders = q(_SQL_UNIQUE_HOLDERS)
        cancel_entry = "jsonb_build_object('type', 'Cancelled', 'message', 'cancelled before it ran', 'traceback', '')"
        self._sql_cancel_waiting = q(
            _SQL_CANCEL_WAITING.replace("%(append_error)s", _APPEND_ERROR.format(entry=cancel_entry))
        )
        self._sql_cancel_executing = q(_SQL_CANCEL_EXECUTING)
        self._sql_cancel_requested = q(_SQL_CANCEL_REQUESTED)
        self._sql_retry = q(_SQL_RETRY)
        self._sql_failed_parents = q(_SQL_FAILED_PARENTS)
        self._sql_insert_dep = q(_SQL_INSERT_DEP.replace("__ON_CONFLICT__", ""))
        self._sql_insert_dep_unique = q(_SQL_INSERT_DEP.replace("__ON_CONFLICT__", _ON_CONFLICT))
        self._sql_claim_limited = q(_SQL_CLAIM_LIMITED)
        self._sql_set_limits = q(_SQL_SET_LIMITS)
        self._sql_register_breakers = q(_SQL_REGISTER_BREAKERS)
        self._sql_list_breakers = q(_SQL_LIST_BREAKERS)
        self._sql_prune = q(_SQL_PRUNE)
        self._q = q
        self._sql_fetch = q(_SQL_FETCH_MANY.replace("__QUEUES__", _FETCH_QUEUES).replace("__TASKS__", ""))
        self._sql_fetch_one = q(_SQL_FETCH.replace("__QUEUES__", _FETCH_ONE_QUEUE).replace("__TASKS__", ""))
        # A worker with limited tasks leaves their jobs to the limited claim, whoever deferred them.
        self._sql_fetch_not = q(_SQL_FETCH_MANY.replace("__QUEUES__", _FETCH_QUEUES).replace("__TASKS__", _NOT_TASKS))
        self._sql_fetch_one_not = q(_SQL_FETCH.replace("__QUEUES__", _FETCH_ONE_QUEUE).replace("__TASKS__", _NOT_TASKS))
        self._sql_set_paused = q(_SQL_SET_PAUSED)
        self._sql_list_queues = q(_SQL_LIST_QUEUES)
        override_entry = (
            "jsonb_build_object('type', 'Cancelled', 'message', 'cancelled by request; the attempt ended by a shutdown "
            "or a snooze', 'traceback', '')"
        )
        self._sql_finish = q(
            _SQL_FINISH.replace("__OVERRIDE__", _OVERRIDE)
            .replace("%(append_error)s", append_error)
            .replace("%(append_cancel)s", _APPEND_ERROR.format(entry=override_entry))
        )
        self._sql_promote = q(_SQL_PROMOTE)
        self._sql_rescue = q(_SQL_RESCUE.replace("%(append_error)s", _APPEND_ERROR.format(entry=rescue_entry)))
        self._sql_delete_dead = q(_SQL_DELETE_DEAD_WORKERS)
        self._sql_register = q(_SQL_REGISTER)
        self._sql_heartbeat = q(_SQL_HEARTBEAT)
        self._sql_heartbeat_load = q(_SQL_HEARTBEAT_LOAD)
        self._sql_list_workers = q(_SQL_LIST_WORKERS)
        self._sql_deregister = q(_SQL_DEREGISTER)
        self._sql_get = q(_SQL_GET)
        self._sql_executing = q(_SQL_EXECUTING)
        self._sql_version = q(_SQL_VERSION)
        self._sql_queue_depth = q(_SQL_QUEUE_DEPTH)
        #: Called after each database call made through the pool: None on success, else the error.
        self._observers: list[Callable[[Exception | None], None]] = []
        self._ident = ident

    def __repr__(self) -> str:
        return f"<PostgresDriver {self._dsn_redacted!r} schema={self.schema!r}>"

    # --- connections --------------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> Exception:
        """Turn a psycopg error into ours, once, at the boundary; never leak a password."""
        message = _one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
            return SchemaNotReady(
                f"the nursery-worker tables are missing in schema {self.schema!r} of {self._dsn_redacted}: "
                "run `nursery-worker migrate` (or `await app.migrate()`) first"
            )
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return DatabaseError(f"no database connection to {self._dsn_redacted} became free in time: {message}")
        error = DatabaseError(f"database error on {self._dsn_redacted}: {message}")
        error.transient = _transient(exc)
        return error

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            problem = _hide_dsn_fragments(_one_line(str(exc)), self._conninfo)
        raise DatabaseError(f"cannot connect to {self._dsn_redacted}: {problem}")

    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        pool = self._pool
        if pool is not None:
            return pool
        with self._pool_lock:
            if self._pool is None:
                # One direct connection first: it fails within connect_timeout with libpq's own
                # reason (refused, unknown database, bad password), where a pool would only time out.
                self._connect().close()
                pool = psycopg_pool.ConnectionPool(
                    self._conninfo,
                    min_size=self._pool_min_size,
                    max_size=self._pool_max_size,
                    kwargs={"autocommit": True},
                    open=False,
                    name=f"nursery-worker:{self.schema}",
                    timeout=max(self._connect_timeout, 1.0),
                    reconnect_timeout=float("inf"),
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run *fn* on a pooled connection in this (worker) thread; translate errors."""
        try:
            with self._get_pool().connection() as conn:
                return fn(conn)
        except psycopg.OperationalError as exc:
            # A server restart leaves every idle pooled connection dead; drop them now rather than
            # failing once per connection. check() tests idle connections only.
            pool = self._pool
            if pool is not None and not isinstance(exc, psycopg_pool.PoolTimeout):
                with contextlib.suppress(psycopg.Error):
                    pool.check()
            raise self._translate(exc) from None
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def _hop(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        if not self._observers:
            return await anyio.to_thread.run_sync(self._run, fn)
        try:
            result = await anyio.to_thread.run_sync(self._run, fn)
        except (DatabaseError, SchemaNotReady) as exc:
            self._notify_observers(exc)
            raise
        self._notify_observers(None)
        return result

    async def _direct(self, query: bytes, params: Mapping[str, Any]) -> list[Any]:
        """Run one small autocommit statement from the event loop, with no thread hop; its rows.

        The hot statements (a one-job insert, the claim, the batched completion) take a pooled
        connection that is idle right now and drive psycopg's own execution generator on it, waiting
        for the socket with ``anyio.wait_readable``/``wait_writable``: trio and asyncio alike. The
        statement is shielded, as a thread hop is (a cancelled caller learns of it when the
        statement is over, so its outcome is never in doubt). When no pooled connection is idle, or
        this psycopg lacks the generator, it falls back to :meth:`_hop`.
        """
        pool = self._pool
        conn: psycopg.Connection[Any] | None = None
        if self.direct and pool is not None and pool.get_stats().get("pool_available", 0) > 0:
            with contextlib.suppress(psycopg_pool.PoolTimeout):
                # Idle a moment ago: getconn() takes it at once. Only a race with another thread
                # can make it wait, and then for at most these few milliseconds.
                conn = pool.getconn(timeout=_DIRECT_TAKE_TIMEOUT)
        if conn is None:
            return await self._hop(lambda c: c.execute(query, params).fetchall())
        assert pool is not None
        error: Exception | None = None
        lost = False
        rows: list[Any] = []
        try:
            cur = conn.cursor()
            with anyio.CancelScope(shield=True):
                await _drive(cur._execute_gen(query, params), conn.pgconn.socket)
            result = cur.pgresult
            rows = cur.fetchall() if result is not None and result.status == _TUPLES_OK else []
        except psycopg.Error as exc:
            error = self._translate(exc)
            # A refused statement (a program limit is an OperationalError too) leaves the
            # connection fine; only a broken one means the others may be dead as well.
            lost = conn.broken
            if not lost:
                error.__cause__ = exc
        finally:
            if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                # Only an exception out of the shielded wait (KeyboardInterrupt) leaves a statement
                # in flight: the connection cannot be reused, so the pool gets it back closed.
                conn.close()
            pool.putconn(conn)
        if lost:
            # A server restart leaves every idle pooled connection dead: drop them now, as _run does.
            with contextlib.suppress(psycopg.Error):
                await anyio.to_thread.run_sync(pool.check)
        if self._observers:
            self._notify_observers(error)
        if error is not None:
            raise error
        return rows

    def _notify_observers(self, error: Exception | None) -> None:
        for observer in list(self._observers):
            try:
                observer(error)
            except Exception:  # an observer (metrics) must never break a database call
                logger.exception("database observer %r failed", observer)

    def observe(self, callback: Callable[[Exception | None], None]) -> Callable[[], None]:
        self._observers.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._observers.remove(callback)

        return remove

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._get_pool)

    def close_sync(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close_sync)

    # --- schema -------------------------------------------------------------------------------

    def migrate_sync(self) -> list[int]:
        applied_now: list[int] = []
        with self._connect() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"nursery_worker:{self.schema}"])
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._ident))
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {}.migrations (version integer PRIMARY KEY, "
                            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                        ).format(self._ident)
                    )
                    rows = conn.execute(sql.SQL("SELECT version FROM {}.migrations").format(self._ident)).fetchall()
                    applied = {int(r[0]) for r in rows}
                    if applied and max(applied) > SCHEMA_VERSION:
                        raise self._too_new(max(applied))
                    folder = resources.files(__package__).joinpath("migrations")
                    for version, filename in MIGRATIONS:
                        if version in applied:
                            continue
                        text = folder.joinpath(filename).read_text(encoding="utf-8")
                        conn.execute(sql.SQL(text).format(schema=self._ident))
                        conn.execute(
                            sql.SQL("INSERT INTO {}.migrations (version, name) VALUES (%s, %s)").format(self._ident),
                            [version, filename],
                        )
                        applied_now.append(version)
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
        if applied_now:
            logger.info("migrated schema %r to version %d (applied %s)", self.schema, SCHEMA_VERSION, applied_now)
        return applied_now

    async def migrate(self) -> list[int]:
        return await anyio.to_thread.run_sync(self.migrate_sync)

    async def drop_schema(self) -> None:
        query = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self._ident)
        await self._hop(lambda c: c.execute(query))

    def _too_new(self, version: int) -> SchemaNotReady:
        return SchemaNotReady(
            f"schema {self.schema!r} of {self._dsn_redacted} is at version {version}, newer than this "
            f"nursery-worker understands ({SCHEMA_VERSION}): upgrade nursery-worker"
        )

    async def check_schema(self) -> None:
        row = await self._hop(lambda c: c.execute(self._sql_version).fetchone())
        version = row[0] if row else None
        if version is None or version < SCHEMA_VERSION:
            raise SchemaNotReady(
                f"schema {self.schema!r} of {self._dsn_redacted} is at version {version or 0}, this "
                f"nursery-worker needs {SCHEMA_VERSION}: run `nursery-worker migrate` (or `await app.migrate()`)"
            )
        if version > SCHEMA_VERSION:
            raise self._too_new(version)

    # --- jobs ---------------------------------------------------------------------------------

    def _insert_params(self, specs: Sequence[JobSpec]) -> dict[str, Any]:
        return {
            "tasks": [s.task for s in specs],
            "queues": [s.queue for s in specs],
            "args": [s.args_json for s in specs],
            "priorities": [s.priority for s in specs],
            "max_attempts": [s.max_attempts for s in specs],
            "scheduled": [s.scheduled_at for s in specs],
            "delays": [s.delay for s in specs],
            "unique_keys": [s.unique_key for s in specs],
            "unique_states": [None if s.unique_states is None else ",".join(s.unique_states) for s in specs],
            "retry_policies": [None if s.retry_policy is None else json.dumps(s.retry_policy) for s in specs],
            "trace_contexts": [None if s.trace_context is None else json.dumps(s.trace_context) for s in specs],
            "limit_keys": [s.limit_key for s in specs],
            "channel": self.channel,
        }

    @staticmethod
    def _new_job(spec: JobSpec, row: Sequence[Any], *, duplicate: bool = False) -> Job:
        return Job(
            id=row[0],
            task=spec.task,
            queue=spec.queue,
            args=spec.args,
            state=_STATE_OF[row[1]],
            attempt=0,
            max_attempts=spec.max_attempts,
            priority=spec.priority,
            scheduled_at=row[2],
            inserted_at=row[3],
            unique_key=spec.unique_key,
            retry_policy=spec.retry_policy,
            trace_context=spec.trace_context,
            duplicate=duplicate,
        )

    def _match(self, specs: Sequence[JobSpec], rows: Sequence[Sequence[Any]]) -> list[Job | None]:
        """Pair the inserted rows (in id order, that is the order given) with their specs.

        A unique spec whose key was taken gets None; one whose key an earlier spec of the same call
        took gets that job, marked as a duplicate.
        """
        out: list[Job | None] = []
        keys_inserted = {(r[5], r[4]) for r in rows if r[4] is not None}
        by_key: dict[tuple[str, str], Job] = {}
        it = iter(rows)
        for spec in specs:
            if spec.unique_key is None:
                out.append(self._new_job(spec, next(it)))
                continue
            key = (spec.task, spec.unique_key)
            if key in by_key:
                out.append(attrs.evolve(by_key[key], duplicate=True))
                continue
            if key not in keys_inserted:
                out.append(None)
                continue
            row = next(it)
            job = self._new_job(spec, row)
            by_key[key] = job
            out.append(job)
        return out

    def _one_params(self, spec: JobSpec) -> dict[str, Any]:
        """The parameters of a one-job insert (plain, or with dependencies)."""
        return {**spec_columns(spec), "scheduled": spec.scheduled_at, "delay": spec.delay, "channel": self.channel}

    def _plain_insert(self, specs: Sequence[JobSpec]) -> tuple[bytes, dict[str, Any]] | None:
        """The one statement that inserts *specs*, when one does: no dependencies, no unique keys,
        fewer than the COPY threshold. None: the caller takes the multi-statement paths."""
        if len(specs) >= _COPY_MIN or any(s.depends_on or s.unique_key is not None for s in specs):
            return None
        if len(specs) == 1:
            return self._sql_insert_one, self._one_params(specs[0])
        return self._sql_insert, self._insert_params(specs)

    def _insert_on(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        plain = self._plain_insert(specs)
        if plain is not None:
            rows = conn.execute(*plain).fetchall()
            return [self._new_job(spec, row) for spec, row in zip(specs, rows, strict=True)]
        if any(s.depends_on for s in specs):
            return self._insert_graph(conn, specs)
        if any(s.unique_key is not None for s in specs):
            return self._insert_unique(conn, specs)
        return self._insert_copy(conn, specs)

    def _insert_copy(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        """Many jobs in one transaction (the caller's, if it has one): ids, COPY, one NOTIFY per queue."""
        with conn.transaction():
            row = conn.execute(self._sql_copy_prepare, {"table": f"{self.schema}.jobs", "n": len(specs)}).fetchone()
            assert row is not None
            now: dt.datetime = row[0]
            ids: list[int] = row[1]
            jobs: list[Job] = []
            queues: set[str] = set()
            # The COPY text is formatted here, a chunk at a time: several times cheaper than
            # psycopg's write_row, which looks up a dumper for every field of every row.
            now_text = now.isoformat()
            lines: list[str] = []
            with conn.cursor().copy(self._sql_copy) as copy:
                for job_id, spec in zip(ids, specs, strict=True):
                    if spec.scheduled_at is not None:
                        at = spec.scheduled_at
                    elif spec.delay:
                        at = now + dt.timedelta(seconds=spec.delay)
                    else:
                        at = now
                    if at > now:
                        state = "scheduled"
                    else:
                        state = "available"
                        queues.add(spec.queue)
                    policy = None if spec.retry_policy is None else json.dumps(spec.retry_policy)
                    trace = None if spec.trace_context is None else json.dumps(spec.trace_context)
                    lines.append(
                        f"{job_id}\t{_copy_text(spec.task)}\t{_copy_text(spec.queue)}\t{_copy_text(spec.args_json)}\t"
                        f"{int(spec.priority)}\t{int(spec.max_attempts)}\t"
                        f"{now_text if at is now else at.isoformat()}\t{state}\t"
                        f"{_copy_text(policy)}\t{_copy_text(trace)}\t{_copy_text(spec.limit_key)}\n"
                    )
                    # Made while the server takes in the rows already sent (it runs on its own core).
                    jobs.append(self._new_job(spec, (job_id, state, at, now)))
                    if len(lines) >= _COPY_CHUNK:
                        copy.write("".join(lines))
                        lines.clear()
                if lines:
                    copy.write("".join(lines))
            if queues:
                conn.execute(self._sql_notify_queues, {"channel": self.channel, "queues": sorted(queues)})
        return jobs

    def _holders(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job | None]:
        """For each unique spec, the job holding its key in the spec's scope of states, or None."""
        params = {
            "tasks": [s.task for s in specs],
            "keys": [s.unique_key for s in specs],
            "states": [",".join(s.unique_states or ()) for s in specs],
        }
        found: list[Job | None] = [None] * len(specs)
        for row in conn.execute(self._sql_unique_holders, params).fetchall():
            found[int(row[0]) - 1] = _job_from_row(row[1:], duplicate=True)
        return found

    def _insert_unique(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        """Insert with unique keys: a refused spec returns the job that holds its key."""
        result: list[Job | None] = [None] * len(specs)
        todo = list(range(len(specs)))
        # A scope beyond the queued and running states (the index's) also refuses finished twins:
        # look those up first. A row only finishes after being queued or running, so a finished
        # twin that is not there now can only appear after the index itself refused us.
        wide = [i for i in todo if set(specs[i].unique_states or ()) - _ACTIVE_SET]
        if wide:
            for i, holder in zip(wide, self._holders(conn, [specs[i] for i in wide]), strict=True):
                result[i] = holder
            todo = [i for i in todo if result[i] is None]
        for _ in range(5):
            if not todo:
                break
            batch = [specs[i] for i in todo]
            rows = conn.execute(self._sql_insert_unique, self._insert_params(batch)).fetchall()
            matched = self._match(batch, rows)
            missing = [i for i, job in zip(todo, matched, strict=True) if job is None]
            for i, job in zip(todo, matched, strict=True):
                result[i] = job
            if not missing:
                break
            todo = []
            for i, holder in zip(missing, self._holders(conn, [specs[i] for i in missing]), strict=True):
                if holder is None:
                    todo.append(i)  # the holder left the scope meanwhile: insert again
                else:
                    result[i] = holder
        if any(job is None for job in result):
            raise DatabaseError("could not insert or find the holders of some unique jobs after 5 tries; retry")
        return [job for job in result if job is not None]

    def _insert_graph(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        """Jobs with dependencies: the independent ones in one statement, then the others one by
        one, each after the jobs it depends on, all in one transaction."""
        order = order_graph(specs)
        result: list[Job | None] = [None] * len(specs)
        by_spec: dict[int, Job] = {}
        with conn.transaction():
            roots = [i for i in range(len(specs)) if not specs[i].depends_on]
            if roots:
                for i, job in zip(roots, self._insert_on(conn, [specs[i] for i in roots]), strict=True):
                    result[i] = job
                    by_spec.setdefault(id(specs[i]), job)
            for i in order:
                spec = specs[i]
                if not spec.depends_on:
                    continue
                job = self._insert_dependent(conn, spec, dependency_ids(spec, by_spec))
                result[i] = job
                by_spec.setdefault(id(spec), job)
        return [job for job in result if job is not None]

    def _insert_dependent(self, conn: psycopg.Connection[Any], spec: JobSpec, deps: list[int]) -> Job:
        params = {
            **self._one_params(spec),
            "unique_key": spec.unique_key,
            "unique_states": None if spec.unique_states is None else ",".join(spec.unique_states),
            "deps": deps,
        }
        query = self._sql_insert_dep if spec.unique_key is None else self._sql_insert_dep_unique
        row = conn.execute(query, params).fetchone()
        assert row is not None
        found = set(row[4] or ())
        missing = [d for d in deps if d not in found]
        if missing:
            raise ConfigurationError(
                f"{spec.task}: depends_on names job(s) {missing} that do not exist (never deferred, or pruned); "
                "nothing was enqueued"
            )
        if row[0] is None:
            holder = self._holders(conn, [spec])[0]
            if holder is None:
                raise DatabaseError(f"{spec.task}: the unique job holding key {spec.unique_key!r} vanished; retry")
            return holder
        if row[1] == "cancelled":
            fresh = conn.execute(self._sql_get, {"id": row[0]}).fetchone()
            assert fresh is not None
            return _job_from_row(fresh)
        return attrs.evolve(self._new_job(spec, row), depends_on=tuple(deps))

    @staticmethod
    def _check_connection(connection: Any, *, allow_async: bool) -> None:
        allowed: tuple[type, ...] = (
            (psycopg.Connection, psycopg.AsyncConnection) if allow_async else (psycopg.Connection,)
        )
        if not isinstance(connection, allowed):
            kinds = "a psycopg.Connection or psycopg.AsyncConnection" if allow_async else "a psycopg.Connection"
            raise TypeError(f"connection= must be {kinds} with an open transaction, got {type(connection).__name__}")

    def insert_jobs_sync(self, specs: Sequence[JobSpec], *, connection: Any = None) -> list[Job]:
        if not specs:
            return []
        if connection is None:
            return self._run(lambda c: self._insert_on(c, specs))
        self._check_connection(connection, allow_async=False)
        try:
            return self._insert_on(connection, specs)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def insert_jobs(self, specs: Sequence[JobSpec], *, connection: Any = None) -> list[Job]:
        if not specs:
            return []
        if connection is None:
            plain = self._plain_insert(specs)
            if plain is not None:  # one statement: straight from the event loop
                rows = await self._direct(*plain)
                return [self._new_job(spec, row) for spec, row in zip(specs, rows, strict=True)]
            return await self._hop(lambda c: self._insert_on(c, specs))
        self._check_connection(connection, allow_async=True)
        if isinstance(connection, psycopg.AsyncConnection):
            if any(s.depends_on for s in specs):
                raise ConfigurationError(
                    "jobs with depends_on= cannot be enqueued on a psycopg.AsyncConnection yet; use a sync "
                    "psycopg.Connection or no connection="
                )
            if any(s.unique_key is not None for s in specs):
                raise ConfigurationError(
                    "unique jobs cannot be enqueued on a psycopg.AsyncConnection yet; use a sync psycopg.Connection "
                    "or no connection="
                )
            try:
                cur = await connection.execute(self._sql_insert, self._insert_params(specs))
                rows = await cur.fetchall()
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
            return [self._new_job(spec, row) for spec, row in zip(specs, rows, strict=True)]
        return await anyio.to_thread.run_sync(lambda: self.insert_jobs_sync(specs, connection=connection))

    async def get_job(self, job_id: int) -> Job | None:
        rows = await self._direct(self._sql_get, {"id": job_id})
        return _job_from_row(rows[0]) if rows else None

    async def fetch_jobs(
        self, *, worker_id: str, queues: Sequence[str], limit: int, exclude_tasks: Sequence[str] = ()
    ) -> list[Job]:
        params: dict[str, Any] = {"limit": limit, "worker": worker_id}
        if len(queues) == 1:
            query = self._sql_fetch_one_not if exclude_tasks else self._sql_fetch_one
            params["queue"] = queues[0]
        else:
            query = self._sql_fetch_not if exclude_tasks else self._sql_fetch
            params["queues"] = list(queues)
        if exclude_tasks:
            params["limited"] = list(exclude_tasks)
        rows = await self._direct(query, params)
        # Claimed in priority order; the UPDATE's RETURNING does not keep it.
        jobs = [_job_from_row(r) for r in rows]
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return jobs

    async def fetch_limited(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        config: Mapping[str, Any],
        adopt: bool = False,
    ) -> LimitedClaim:
        params = {
            "worker": worker_id,
            "queues": list(queues),
            "limit": limit,
            "cfg": json.dumps(config),
            "adopt": adopt,
        }
        rows = await self._direct(self._sql_claim_limited, params)
        jobs = [_job_from_row(r[:19]) for r in rows if r[0] is not None]
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        wakes = [float(r[19]) for r in rows if r[0] is None and r[19] is not None]
        held = tuple(sorted({r[20].split(":", 1)[1] for r in rows if r[0] is None and r[20]}))
        return LimitedClaim(jobs=tuple(jobs), wake=min(wakes) if wakes else None, breakers_open=held)

    async def set_queue_limits(self, name: str, *, max_concurrency: int | None, rate: RateLimit | None) -> None:
        params = {
            "name": name,
            "concurrency": max_concurrency,
            "rate": None if rate is None else rate.count,
            "period": None if rate is None else rate.period,
            "channel": self.channel,
        }
        await self._hop(lambda c: c.execute(self._sql_set_limits, params).fetchall())

    async def register_breakers(self, breakers: Sequence[tuple[str, int, float]]) -> None:
        if not breakers:
            return
        params = {
            "tasks": [b[0] for b in breakers],
            "thresholds": [b[1] for b in breakers],
            "cooldowns": [b[2] for b in breakers],
        }
        await self._hop(lambda c: c.execute(self._sql_register_breakers, params))

    async def list_breakers(self) -> list[BreakerInfo]:
        rows = await self._hop(lambda c: c.execute(self._sql_list_breakers).fetchall())
        return [
            BreakerInfo(
                task=r[0],
                state=r[1],
                failures=r[2],
                threshold=r[3],
                cooldown=r[4],
                opened_at=r[5],
                probe_job_id=r[6],
                now=r[7],
            )
            for r in rows
        ]

    async def finish_jobs(self, *, worker_id: str, completions: Sequence[Completion], error_cap: int) -> int:
        if not completions:
            return 0
        params = {
            "ids": [c.job_id for c in completions],
            "attempts": [c.attempt for c in completions],
            "leases": [c.attempted_at for c in completions],
            "states": [c.transition.state.value for c in completions],
            "delays": [c.transition.delay for c in completions],
            "errors": [None if c.transition.error is None else error_entry(c.transition.error) for c in completions],
            "give_back": [int(c.transition.give_back_attempt) for c in completions],
            "results": [c.result_json for c in completions],
            "worker": worker_id,
            "cap": error_cap,
            "channel": self.channel,
        }
        rows = await self._direct(self._sql_finish, params)
        return int(rows[0][0]) if rows else 0

    # --- workers and maintenance --------------------------------------------------------------

    @staticmethod
    def _worker_params(info: WorkerInfo) -> dict[str, Any]:
        return {
            "id": info.id,
            "hostname": info.hostname,
            "pid": info.pid,
            "queues": list(info.queues),
            "concurrency": info.concurrency,
            "supervisor_id": info.supervisor_id,
            "child_index": info.child_index,
            "restarts": info.restarts,
        }

    async def register_worker(self, info: WorkerInfo) -> None:
        params = self._worker_params(info)
        await self._hop(lambda c: c.execute(self._sql_register, params))

    async def heartbeat(self, info: WorkerInfo, load: WorkerLoad | None = None) -> bool:
        def beat(c: psycopg.Connection[Any]) -> bool:
            if load is None:
                updated = c.execute(self._sql_heartbeat, {"id": info.id}).rowcount
            else:
                params = {"id": info.id, **attrs.asdict(load)}
                updated = c.execute(self._sql_heartbeat_load, params).rowcount
            if updated:
                return True
            c.execute(self._sql_register, self._worker_params(info))
            if load is not None:
                c.execute(self._sql_heartbeat_load, {"id": info.id, **attrs.asdict(load)})
            return False

        return await self._hop(beat)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._hop(lambda c: c.execute(self._sql_deregister, {"id": worker_id}))

    async def promote_due(self, *, limit: int) -> int:
        params = {"limit": limit, "channel": self.channel}
        row = await self._hop(lambda c: c.execute(self._sql_promote, params).fetchone())
        return int(row[0]) if row else 0

    async def rescue_orphans(self, *, rescuer_id: str, rescue_after: float, limit: int, error_cap: int) -> RescueResult:
        params = {"after": rescue_after, "limit": limit, "rescuer": rescuer_id, "cap": error_cap}

        def rescue(c: psycopg.Connection[Any]) -> RescueResult:
            states = [r[0] for r in c.execute(self._sql_rescue, params).fetchall()]
            removed = c.execute(self._sql_delete_dead, {"after": rescue_after}).rowcount
            return RescueResult(
                retryable=states.count("retryable"),
                discarded=states.count("discarded"),
                cancelled=states.count("cancelled"),
                workers_removed=removed,
            )

        return await self._hop(rescue)

    async def executing_ids(self, *, worker_id: str, older_than: float) -> list[tuple[int, int, dt.datetime | None]]:
        params = {"worker": worker_id, "older": older_than}
        rows = await self._hop(lambda c: c.execute(self._sql_executing, params).fetchall())
        return [(int(r[0]), int(r[1]), r[2]) for r in rows]

    # --- job control --------------------------------------------------------------------------

    async def cancel_job(self, job_id: int, *, error_cap: int) -> tuple[Job, str] | None:
        params = {"id": job_id, "channel": self.channel, "cap": error_cap}

        def cancel(c: psycopg.Connection[Any]) -> tuple[Job, str] | None:
            # Three single-statement steps; a job that moves between them is simply tried again.
            for _ in range(5):
                row = c.execute(self._sql_cancel_waiting, params).fetchone()
                if row is not None:
                    return _job_from_row(row), "cancelled"
                row = c.execute(self._sql_cancel_executing, params).fetchone()
                if row is not None:
                    return _job_from_row(row), "requested"
                row = c.execute(self._sql_get, params).fetchone()
                if row is None:
                    return None
                job = _job_from_row(row)
                if job.state.is_terminal:
                    return job, "already_finished"
            raise DatabaseError(f"job {job_id} kept changing state while being cancelled; try again")

        return await self._hop(cancel)

    async def cancel_requested(self, *, worker_id: str) -> list[tuple[int, int]]:
        params = {"worker": worker_id}
        rows = await self._hop(lambda c: c.execute(self._sql_cancel_requested, params).fetchall())
        return [(int(r[0]), int(r[1])) for r in rows]

    async def retry_job(self, job_id: int) -> Job | None:
        params = {"id": job_id, "channel": self.channel}

        def retry(c: psycopg.Connection[Any]) -> Job | None:
            try:
                row = c.execute(self._sql_retry, params).fetchone()
            except psycopg.errors.UniqueViolation:
                raise JobStateError(
                    f"job {job_id} cannot be retried: another job of its task with the same unique key is queued or "
                    "running; cancel that one first, or wait for it to finish"
                ) from None
            if row is None:
                failed = c.execute(self._sql_failed_parents, params).fetchall()
                if failed:
                    names = ", ".join(f"{r[0]} ({r[1]}, {r[2]})" for r in failed)
                    raise JobStateError(
                        f"job {job_id} cannot be retried: it depends on job(s) that did not complete: {names}; "
                        "retry those first"
                    )
            return None if row is None else _job_from_row(row)

        return await self._hop(retry)

    async def list_jobs(
        self,
        *,
        states: Sequence[str] | None,
        queue: str | None,
        task: str | None,
        limit: int,
        before_id: int | None = None,
    ) -> list[Job]:
        where: list[sql.Composable] = []
        params: dict[str, Any] = {"limit": limit}
        if states is not None:
            where.append(sql.SQL("state = ANY(%(states)s::text[])"))
            params["states"] = list(states)
        if queue is not None:
            where.append(sql.SQL("queue = %(queue)s"))
            params["queue"] = queue
        if task is not None:
            where.append(sql.SQL("task = %(task)s"))
            params["task"] = task
        if before_id is not None:
            where.append(sql.SQL("id < %(before)s"))
            params["before"] = before_id
        query = sql.SQL("SELECT {cols} FROM {s}.jobs {where} ORDER BY id DESC LIMIT %(limit)s").format(
            cols=sql.SQL(_JOB_COLUMNS),
            s=self._ident,
            where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        )
        rows = await self._hop(lambda c: c.execute(query, params).fetchall())
        return [_job_from_row(r) for r in rows]

    async def prune_jobs(self, *, state: str, older_than: float, limit: int) -> int:
        params = {"state": state, "age": older_than, "limit": limit}
        return await self._hop(lambda c: c.execute(self._sql_prune, params).rowcount)

    async def queue_depth(self) -> list[tuple[str, str, int]]:
        rows = await self._hop(lambda c: c.execute(self._sql_queue_depth).fetchall())
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def list_workers(self) -> list[WorkerRow]:
        rows = await self._hop(lambda c: c.execute(self._sql_list_workers).fetchall())
        return [
            WorkerRow(
                id=r[0],
                hostname=r[1],
                pid=r[2],
                queues=tuple(r[3]),
                concurrency=r[4],
                started_at=r[5],
                heartbeat_at=r[6],
                state=r[7],
                processed=r[8],
                failed=r[9],
                running=r[10],
                supervisor_id=r[11],
                child_index=r[12],
                restarts=r[13],
                now=r[14],
            )
            for r in rows
        ]

    async def set_queue_paused(self, name: str, *, paused: bool) -> bool:
        params = {"name": name, "paused": paused, "channel": self.channel}
        row = await self._hop(lambda c: c.execute(self._sql_set_paused, params).fetchone())
        return bool(row is not None and row[0])

    async def list_queues(self, name: str | None = None) -> list[QueueInfo]:
        rows = await self._hop(lambda c: c.execute(self._sql_list_queues, {"name": name}).fetchall())
        return [
            QueueInfo(
                name=r[0],
                paused=bool(r[1]),
                paused_at=r[2],
                counts={state: int(n) for state, n in sorted(r[3].items())},
                oldest_available_at=r[4],
                now=r[5],
                max_concurrency=r[6],
                rate_limit=None if r[7] is None else str(RateLimit(count=r[7], period=r[8])),
            )
            for r in rows
        ]

    def listener(self) -> PostgresListener:
        return PostgresListener(self)

    # --- periodic jobs (_periodic.py); the statements are below the class ---------------------

    @functools.cached_property
    def _periodic_sql(self) -> dict[str, bytes]:
        return {
            "register": self._q(_SQL_PERIODIC_REGISTER),
            "state": self._q(_SQL_PERIODIC_STATE),
            "enqueue": self._q(_SQL_PERIODIC_ENQUEUE),
            "list": self._q(_SQL_PERIODIC_LIST),
        }

    async def register_periodic(self, entries: Sequence[PeriodicEntry]) -> None:
        if not entries:
            return
        params = {
            "names": [e.name for e in entries],
            "crons": [e.cron for e in entries],
            "zones": [e.timezone for e in entries],
            "tasks": [e.task for e in entries],
            "queues": [e.queue for e in entries],
            "args": [e.args_json for e in entries],
        }
        query = self._periodic_sql["register"]
        await self._hop(lambda c: c.execute(query, params))

    async def periodic_state(self, names: Sequence[str]) -> tuple[dt.datetime, dict[str, PeriodicState]]:
        query = self._periodic_sql["state"]
        rows = await self._hop(lambda c: c.execute(query, {"names": list(names)}).fetchall())
        states = {r[1]: PeriodicState(last_tick=r[2], active_since=r[3]) for r in rows if r[1] is not None}
        return rows[0][0], states

    async def enqueue_periodic(
        self, *, name: str, tick: dt.datetime, catch_up: float, spec: JobSpec
    ) -> PeriodicEnqueued | None:
        params = {
            "name": name,
            "tick": tick,
            "catch_up": catch_up,
            "table": f"{self.schema}.jobs",
            "task": spec.task,
            "queue": spec.queue,
            "args": spec.args_json,
            "priority": spec.priority,
            "max_attempts": spec.max_attempts,
            "unique_key": spec.unique_key,
            "unique_states": None if spec.unique_states is None else ",".join(spec.unique_states),
            "retry_policy": None if spec.retry_policy is None else json.dumps(spec.retry_policy),
            "limit_key": spec.limit_key,
            "channel": self.channel,
        }
        query = self._periodic_sql["enqueue"]

        def enqueue(c: psycopg.Connection[Any]) -> PeriodicEnqueued | None:
            for _ in range(3):
                try:
                    row = c.execute(query, params).fetchone()
                except psycopg.errors.UniqueViolation:
                    # A twin with the same unique key was inserted after this statement's snapshot
                    # and before its insert: nothing was written; the next try sees the twin.
                    continue
                return None if row is None else PeriodicEnqueued(job_id=int(row[0]), held=bool(row[1]))
            raise DatabaseError(f"periodic {name!r}: the unique key of its job kept changing hands; retrying later")

        return await self._hop(enqueue)

    async def list_periodic(self) -> tuple[dt.datetime, list[PeriodicRow]]:
        query = self._periodic_sql["list"]

        def read(c: psycopg.Connection[Any]) -> tuple[dt.datetime, list[PeriodicRow]]:
            rows = c.execute(query).fetchall()
            now = c.execute("SELECT now()").fetchone()
            assert now is not None
            return now[0], [
                PeriodicRow(
                    name=r[0],
                    cron=r[1],
                    timezone=r[2],
                    task=r[3],
                    queue=r[4],
                    args=r[5],
                    active_since=r[6],
                    last_tick=r[7],
                    last_job_id=r[8],
                    last_job_state=r[9],
                    updated_at=r[10],
                )
                for r in rows
            ]

        return await self._hop(read)


# --- SQL of periodic jobs (see _periodic.py for the design) -------------------------------------

# A new row, or one whose expression or time zone changed, is active from now: its earlier ticks
# are never enqueued (a schedule deployed at 10:31 does not run its 10:30 tick).
_SQL_PERIODIC_REGISTER = """
INSERT INTO {s}.periodic AS p (name, cron, timezone, task, queue, args, active_since, updated_at)
SELECT u.name, u.cron, u.timezone, u.task, u.queue, u.args::jsonb, now(), now()
FROM unnest(%(names)s::text[], %(crons)s::text[], %(zones)s::text[], %(tasks)s::text[], %(queues)s::text[],
            %(args)s::text[]) AS u(name, cron, timezone, task, queue, args)
ON CONFLICT (name) DO UPDATE
SET active_since = CASE WHEN (p.cron, p.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone) THEN now()
                        ELSE p.active_since END,
    cron = excluded.cron, timezone = excluded.timezone, task = excluded.task, queue = excluded.queue,
    args = excluded.args, updated_at = now()
"""
# One row at least (now() with NULLs when none of the names has a row).
_SQL_PERIODIC_STATE = """
SELECT now(), p.name, p.last_tick, p.active_since
FROM (SELECT 1) AS one LEFT JOIN {s}.periodic AS p ON p.name = ANY(%(names)s::text[])
"""
# Exactly once per tick. The guarded UPDATE claims the tick on the schedule's row; under READ
# COMMITTED a concurrent scheduler waits for the row lock and then re-checks last_tick < tick on
# the committed row, so only one claim succeeds. The job is inserted by the same statement, only
# for a claimed tick, with the id the claim recorded: the row and the job commit together or not
# at all. A unique key held by a queued or running twin consumes the tick without a job (the
# twin's id is recorded); a twin inserted concurrently makes the insert fail, and it is retried.
_SQL_PERIODIC_ENQUEUE = """
WITH holder AS (
    SELECT j.id FROM {s}.jobs AS j
    WHERE %(unique_key)s::text IS NOT NULL AND j.task = %(task)s::text AND j.unique_key = %(unique_key)s::text
      AND j.state = ANY(string_to_array(%(unique_states)s::text, ','))
    ORDER BY j.id DESC
    LIMIT 1
), claimed AS (
    UPDATE {s}.periodic AS p
    SET last_tick = %(tick)s::timestamptz,
        last_job_id = coalesce((SELECT id FROM holder), nextval(pg_get_serial_sequence(%(table)s::text, 'id')))
    WHERE p.name = %(name)s::text
      AND (p.last_tick IS NULL OR p.last_tick < %(tick)s::timestamptz)
      AND p.active_since <= %(tick)s::timestamptz
      AND %(tick)s::timestamptz <= now()
      AND %(tick)s::timestamptz >= now() - %(catch_up)s::float8 * interval '1 second'
    RETURNING p.last_job_id, EXISTS (SELECT 1 FROM holder) AS held
), ins AS (
    INSERT INTO {s}.jobs (id, task, queue, args, priority, max_attempts, scheduled_at, state, unique_key,
                          unique_states, retry_policy, limit_key)
    SELECT c.last_job_id, %(task)s::text, %(queue)s::text, %(args)s::jsonb, %(priority)s::int, %(max_attempts)s::int,
           %(tick)s::timestamptz, 'available', %(unique_key)s::text, string_to_array(%(unique_states)s::text, ','),
           %(retry_policy)s::jsonb, %(limit_key)s::text
    FROM claimed AS c
    WHERE NOT c.held
    RETURNING queue
), notified AS (
    SELECT pg_notify(%(channel)s, 'available:' || ins.queue) FROM ins
)
SELECT c.last_job_id, c.held, (SELECT count(*) FROM notified)
FROM claimed AS c
"""
_SQL_PERIODIC_LIST = """
SELECT p.name, p.cron, p.timezone, p.task, p.queue, p.args, p.active_since, p.last_tick, p.last_job_id, j.state,
       p.updated_at
FROM {s}.periodic AS p LEFT JOIN {s}.jobs AS j ON j.id = p.last_job_id
ORDER BY p.name
"""


class PostgresListener:
    """LISTEN on the schema's channel, waiting on the socket from the event loop (no thread)."""

    def __init__(self, driver: PostgresDriver) -> None:
        self._driver = driver
        self._conn: psycopg.Connection[Any] | None = None
        self._backlog: list[psycopg.Notify] = []

    async def connect(self) -> None:
        def connect() -> psycopg.Connection[Any]:
            conn = self._driver._connect()
            try:
                # Notifications that arrive while psycopg itself reads (during LISTEN or the
                # keepalive query) go to this handler; the rest we read off the socket in wait().
                conn.add_notify_handler(self._backlog.append)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._driver.channel)))
            except psycopg.Error as exc:
                conn.close()
                raise self._driver._translate(exc) from None
            return conn

        await self.aclose()
        self._conn = await anyio.to_thread.run_sync(connect)

    def _take(self) -> list[Notification]:
        notes, self._backlog[:] = list(self._backlog), []
        out = []
        for n in notes:
            kind, _, value = n.payload.partition(":")
            out.append(Notification(kind=kind, value=value))
        return out

    async def wait(self, keepalive: float) -> list[Notification]:
        conn = self._conn
        if conn is None:
            raise DatabaseError("the listener is not connected")
        if self._backlog:
            return self._take()
        with anyio.move_on_after(keepalive) as idle:
            await anyio.wait_readable(conn.fileno())
        try:
            if idle.cancelled_caught:
                # Quiet for a while: prove the link is alive (a dead TCP peer never turns readable).
                await anyio.to_thread.run_sync(conn.execute, "SELECT 1")
                return self._take()
            pgconn = conn.pgconn
            pgconn.consume_input()
            while (n := pgconn.notifies()) is not None:
                self._backlog.append(psycopg.Notify(n.relname.decode(), n.extra.decode(), n.be_pid))
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listener connection was closed")
        except psycopg.Error as exc:
            raise self._driver._translate(exc) from None
        return self._take()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a broken socket
                logger.debug("error closing the listener connection", exc_info=True)
