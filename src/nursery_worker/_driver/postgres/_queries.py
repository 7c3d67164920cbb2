"""The PostgreSQL engine's SQL: every statement's text, and :class:`Queries`, which composes them
for one schema.

``{s}`` is the schema identifier, put in once per driver with ``psycopg.sql``; ``%(name)s``
parameters are always bound, never formatted in. Every statement that moves an executing job
mirrors a ``*_guarded`` function of ``_state.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from psycopg import sql

#: The columns of a job row, in the order ``_job_from_row`` reads them.
JOB_COLUMNS = (
    "id, task, queue, args, state, attempt, max_attempts, priority, scheduled_at, inserted_at, "
    "attempted_at, finished_at, errors, worker_id, result, cancel_requested_at, unique_key, retry_policy, "
    "trace_context, depends_on, progress, wait_event, wait_step"
)
_J_COLUMNS = ", ".join("j." + c.strip() for c in JOB_COLUMNS.split(","))
_TERMINAL = "('completed', 'discarded', 'cancelled')"
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

# The sequence is looked up once (a materialized CTE), not once per id: per row, the catalog lookup
# of pg_get_serial_sequence cost 2.4 µs an id, against 0.4 µs for nextval alone.
_SQL_COPY_PREPARE = (
    "WITH s AS MATERIALIZED (SELECT pg_get_serial_sequence(%(table)s, 'id')::regclass AS seq) "
    "SELECT now(), array_agg(nextval(s.seq)) FROM s, generate_series(1, %(n)s)"
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
# Two arms, each answered by an index: queued and running holders by jobs_unique_idx, finished ones
# by jobs_task_idx (migration 10: every job but the executing ones).
_SQL_UNIQUE_HOLDERS = (
    """
SELECT DISTINCT ON (k.ord) k.ord, __J_COLUMNS__
FROM unnest(%(tasks)s::text[], %(keys)s::text[], %(states)s::text[]) WITH ORDINALITY AS k(task, unique_key, states, ord)
CROSS JOIN LATERAL (
    SELECT * FROM {s}.jobs AS a
    WHERE a.task = k.task AND a.unique_key = k.unique_key AND a.unique_key IS NOT NULL AND a.state IN __ACTIVE__
    UNION ALL
    SELECT * FROM {s}.jobs AS f
    WHERE f.task = k.task AND f.unique_key = k.unique_key AND f.state <> 'executing' AND f.state IN __TERMINAL__
) AS j
WHERE j.state = ANY (string_to_array(k.states, ','))
ORDER BY k.ord, (j.state IN __ACTIVE__) DESC, j.id DESC
""".replace("__J_COLUMNS__", _J_COLUMNS)
    .replace("__ACTIVE__", _ACTIVE)
    .replace("__TERMINAL__", _TERMINAL)
)

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
        scheduled_at = CASE WHEN u.at IS NOT NULL THEN u.at
                            WHEN u.delay IS NULL THEN j.scheduled_at
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
                %(delays)s::float8[], %(ats)s::timestamptz[], %(errors)s::text[], %(give_back)s::int[],
                %(results)s::text[])
         WITH ORDINALITY AS u(id, attempt, lease, state, delay, at, error, give_back, result, ord)
    -- The rows are found by the primary key, whatever the statistics say: the ids come as an
    -- InitPlan array (as in the claim), and the guards are written so that no index can serve them
    -- (IS NOT DISTINCT FROM is not indexable and does not match jobs_executing_idx's predicate).
    -- Under stale statistics (a table vacuumed while nearly empty, then growing; the statement's
    -- generic plan cached meanwhile) the join used to read every entry of this worker in
    -- jobs_executing_idx, dead ones included, or the whole table, on every write: a cost that grew
    -- with each job run. Both guard columns are never NULL on an executing row, so the guards mean
    -- what = means.
    WHERE j.id = ANY(ARRAY(SELECT unnest(%(ids)s::bigint[]))) AND j.id = u.id
      AND j.state IS NOT DISTINCT FROM 'executing' AND j.attempt = u.attempt
      AND j.worker_id IS NOT DISTINCT FROM %(worker)s::text
      AND j.attempted_at IS NOT DISTINCT FROM u.lease
    RETURNING j.id, j.queue, j.state, u.ord
), available AS ("""
    + _NOTIFY_AVAILABLE.format(source="upd")
    + """
), finished AS ("""
    + _NOTIFY_FINISHED.format(source="upd")
    + """)
"""
)
# Which completions took effect (their positions, from 1): the worker counts only those.
_FINISH_COUNTS = """SELECT (SELECT array_agg(ord ORDER BY ord) FROM upd), (SELECT count(*) FROM available),
       (SELECT count(*) FROM finished)"""
# finish_and_fetch: the finish and a claim (_SQL_FETCH or _SQL_FETCH_MANY as the CTE ``claimed``) in
# one statement, so one round trip and one commit. The claim's snapshot is the statement's: it sees
# neither the rows the finish releases nor those its triggers make available, and the two never
# touch the same row (the finish's are executing, the claim's available). One row when nothing is
# claimed (the job columns NULL), else one per claimed job; the finish's columns repeat on each.
_FINISH_AND_CLAIM = (
    _SQL_FINISH.rstrip()[: -len(")")]
    + "), claimed AS (__CLAIM__)\n"
    + _FINISH_COUNTS
    + ", c.*\nFROM (SELECT 1) AS one LEFT JOIN claimed AS c ON true\n"
)
_SQL_FINISH = _SQL_FINISH + _FINISH_COUNTS + "\n"

# promote_guarded: due scheduled/retryable -> available.
_SQL_PROMOTE = """
WITH due AS (
    SELECT id FROM {s}.jobs
    WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.jobs AS j SET state = 'available', wait_event = NULL, wait_step = NULL
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
INSERT INTO {s}.workers (id, hostname, pid, queues, concurrency, state, supervisor_id, child_index, restarts,
                        last_exit)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s::text[], %(concurrency)s, 'starting',
        %(supervisor_id)s, %(child_index)s, %(restarts)s, %(last_exit)s)
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
       supervisor_id, child_index, restarts, now(), last_exit
FROM {s}.workers
ORDER BY supervisor_id NULLS LAST, child_index NULLS LAST, hostname, pid, id
"""
_SQL_DEREGISTER = "DELETE FROM {s}.workers WHERE id = %(id)s"
_SQL_GET = "SELECT " + JOB_COLUMNS + " FROM {s}.jobs WHERE id = %(id)s"
_SQL_EXECUTING = """
SELECT id, attempt, attempted_at FROM {s}.jobs
WHERE state = 'executing' AND worker_id = %(worker)s
  AND attempted_at < now() - %(older)s * interval '1 second'
"""
# The newest version and how many are applied: fewer rows than the code's versions means one
# merged later (a gap below the newest) is still to apply.
_SQL_VERSION = "SELECT max(version), count(*) FROM {s}.migrations"
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

# The oldest open transaction of any client on the server (it holds back vacuum everywhere) and the
# dead and live rows of the jobs table, summed over its partitions if it has any (pg_partition_tree()
# lists none of a plain table, hence the table itself too). Statistics views only: no table is read.
_SQL_DATABASE_HEALTH = """
SELECT a.age, a.pid, a.state, a.application_name, t.dead, t.live
FROM (
    SELECT coalesce(sum(st.n_dead_tup), 0)::bigint AS dead, coalesce(sum(st.n_live_tup), 0)::bigint AS live
    FROM pg_stat_user_tables AS st
    WHERE st.relid = %(jobs)s::regclass
       OR st.relid IN (SELECT relid FROM pg_partition_tree(%(jobs)s::regclass))
) AS t
LEFT JOIN LATERAL (
    SELECT extract(epoch FROM now() - xact_start)::float8 AS age, pid, state,
           coalesce(application_name, '') AS application_name
    FROM pg_stat_activity
    WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
    ORDER BY xact_start LIMIT 1
) AS a ON true
"""

# cancel_guarded, in two steps: a waiting job is cancelled at once ...
_SQL_CANCEL_WAITING = (
    """
UPDATE {s}.jobs AS j
SET state = 'cancelled', finished_at = now(), errors = %(append_error)s, wait_event = NULL, wait_step = NULL
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

# Pruning, one final state and one bounded batch at a time.
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

# --- periodic jobs (see _periodic.py for the design) ----------------------------------------------

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
SELECT now(), p.name, p.last_tick, p.active_since, p.paused_at IS NOT NULL
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
    SELECT h.id FROM (
        SELECT a.id, a.state FROM {s}.jobs AS a
        WHERE a.task = %(task)s::text AND a.unique_key = %(unique_key)s::text AND a.unique_key IS NOT NULL
          AND a.state IN __ACTIVE__
        UNION ALL
        SELECT f.id, f.state FROM {s}.jobs AS f
        WHERE f.task = %(task)s::text AND f.unique_key = %(unique_key)s::text AND f.state <> 'executing'
          AND f.state IN __TERMINAL__
    ) AS h
    WHERE %(unique_key)s::text IS NOT NULL AND h.state = ANY(string_to_array(%(unique_states)s::text, ','))
    ORDER BY h.id DESC
    LIMIT 1
), claimed AS (
    UPDATE {s}.periodic AS p
    SET last_tick = %(tick)s::timestamptz,
        last_job_id = coalesce((SELECT id FROM holder), nextval(pg_get_serial_sequence(%(table)s::text, 'id')))
    WHERE p.name = %(name)s::text
      AND p.paused_at IS NULL
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
""".replace("__ACTIVE__", _ACTIVE).replace("__TERMINAL__", _TERMINAL)
# Pause or resume a schedule (migration 9); the row's previous flag tells whether it changed.
_SQL_PERIODIC_PAUSE = """
WITH old AS (SELECT name, paused_at IS NOT NULL AS was FROM {s}.periodic WHERE name = %(name)s FOR UPDATE)
UPDATE {s}.periodic AS p
SET paused_at = CASE WHEN %(paused)s THEN coalesce(p.paused_at, now()) END
FROM old
WHERE p.name = old.name
RETURNING old.was
"""
_SQL_PERIODIC_LIST = """
SELECT p.name, p.cron, p.timezone, p.task, p.queue, p.args, p.active_since, p.last_tick, p.last_job_id, j.state,
       p.updated_at, p.paused_at
FROM {s}.periodic AS p LEFT JOIN {s}.jobs AS j ON j.id = p.last_job_id
ORDER BY p.name
"""


def ordered_page(head: sql.Composable, where: Sequence[sql.Composable], *, order: str, by_task: bool) -> sql.Composed:
    """``head WHERE where ORDER BY order LIMIT %(limit)s``; filtered by task, the union of two arms.

    jobs_task_idx holds every job but the executing ones (migration 10: a claim writes no entry in
    it), so a read filtered by task takes the jobs of that index, ordered and limited by it, and
    apart the task's executing ones (jobs_executing_idx); the two are merged in *order*.

    Args:
        head: ``SELECT <columns> FROM <schema>.jobs``; the columns include ``id``.
        where: the terms of the filter, joined by AND.
        order: ``id`` or ``id DESC``.
        by_task: whether *where* tests the task.

    Returns:
        The statement.
    """

    def arm(extra: Sequence[sql.Composable], *, page: bool = True) -> sql.Composed:
        terms = [*where, *extra]
        cond = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(terms) if terms else sql.SQL("")
        tail = sql.SQL(" ORDER BY {} LIMIT %(limit)s").format(sql.SQL(order)) if page else sql.SQL("")
        return sql.SQL("{}{}{}").format(head, cond, tail)

    if not by_task:
        return arm(())
    # The executing arm is not ordered by id: that could tempt the planner into walking the primary
    # key; the task's executing jobs are few (at most twice each worker's concurrency).
    return sql.SQL("SELECT * FROM (({}) UNION ALL ({})) AS j ORDER BY {} LIMIT %(limit)s").format(
        arm([sql.SQL("state <> 'executing'")]), arm([sql.SQL("state = 'executing'")], page=False), sql.SQL(order)
    )


def numbered(text: bytes) -> tuple[bytes, tuple[str, ...]]:
    """*text* with each ``%(name)s`` replaced by ``$1``, ``$2``... (a name used twice keeps its
    number), and the names in that order: a statement the driver prepares and sends itself."""
    names: list[str] = []

    def number(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode()
        if name not in names:
            names.append(name)
        return b"$%d" % (names.index(name) + 1)

    return re.sub(rb"%\(([a-z_]+)\)s", number, text), tuple(names)


class Queries:
    """Every statement of the driver, composed once for its schema (the only identifier; every
    value is bound), as the bytes psycopg sends."""

    def __init__(self, schema: str) -> None:
        ident = sql.Identifier(schema)

        def q(text: str) -> bytes:
            return sql.SQL(text).format(s=ident).as_bytes(None)

        append_error = _APPEND_ERROR.format(entry="u.error::jsonb")
        rescue_entry = (
            "jsonb_build_object('type', 'WorkerLost', 'message', 'worker ' || coalesce(j.worker_id, '?') "
            "|| ' stopped heartbeating; job rescued by ' || %(rescuer)s, 'traceback', '')"
        )
        cancel_entry = "jsonb_build_object('type', 'Cancelled', 'message', 'cancelled before it ran', 'traceback', '')"
        override_entry = (
            "jsonb_build_object('type', 'Cancelled', 'message', 'cancelled by request; the attempt ended by a shutdown "
            "or a snooze', 'traceback', '')"
        )
        self.ident = ident
        self.insert = q(_SQL_INSERT.replace("{on_conflict}", ""))
        self.insert_unique = q(_SQL_INSERT.replace("{on_conflict}", _ON_CONFLICT))
        self.insert_one = q(_SQL_INSERT_ONE)
        #: The same, numbered for the prepared statement of a single defer (``_insert_one_prepared``).
        self.insert_one_numbered, self.insert_one_names = numbered(self.insert_one)
        self.copy_prepare = _SQL_COPY_PREPARE.encode()
        self.copy = q(_SQL_COPY)
        self.notify_queues = _SQL_NOTIFY_QUEUES.encode()
        self.unique_holders = q(_SQL_UNIQUE_HOLDERS)
        self.cancel_waiting = q(
            _SQL_CANCEL_WAITING.replace("%(append_error)s", _APPEND_ERROR.format(entry=cancel_entry))
        )
        self.cancel_executing = q(_SQL_CANCEL_EXECUTING)
        self.cancel_requested = q(_SQL_CANCEL_REQUESTED)
        self.retry = q(_SQL_RETRY)
        self.failed_parents = q(_SQL_FAILED_PARENTS)
        self.insert_dep = q(_SQL_INSERT_DEP.replace("__ON_CONFLICT__", ""))
        self.insert_dep_unique = q(_SQL_INSERT_DEP.replace("__ON_CONFLICT__", _ON_CONFLICT))
        self.claim_limited = q(_SQL_CLAIM_LIMITED)
        self.set_limits = q(_SQL_SET_LIMITS)
        self.register_breakers = q(_SQL_REGISTER_BREAKERS)
        self.list_breakers = q(_SQL_LIST_BREAKERS)
        self.prune = q(_SQL_PRUNE)
        self.fetch = q(_SQL_FETCH_MANY.replace("__QUEUES__", _FETCH_QUEUES).replace("__TASKS__", ""))
        self.fetch_one = q(_SQL_FETCH.replace("__QUEUES__", _FETCH_ONE_QUEUE).replace("__TASKS__", ""))
        # A worker with limited tasks leaves their jobs to the limited claim, whoever deferred them.
        self.fetch_not = q(_SQL_FETCH_MANY.replace("__QUEUES__", _FETCH_QUEUES).replace("__TASKS__", _NOT_TASKS))
        self.fetch_one_not = q(_SQL_FETCH.replace("__QUEUES__", _FETCH_ONE_QUEUE).replace("__TASKS__", _NOT_TASKS))
        self.set_paused = q(_SQL_SET_PAUSED)
        self.list_queues = q(_SQL_LIST_QUEUES)
        self.finish = q(
            _SQL_FINISH.replace("__OVERRIDE__", _OVERRIDE)
            .replace("%(append_error)s", append_error)
            .replace("%(append_cancel)s", _APPEND_ERROR.format(entry=override_entry))
        )
        finish_and = (
            _FINISH_AND_CLAIM.replace("__OVERRIDE__", _OVERRIDE)
            .replace("%(append_error)s", append_error)
            .replace("%(append_cancel)s", _APPEND_ERROR.format(entry=override_entry))
        )
        many = _SQL_FETCH_MANY.replace("__QUEUES__", _FETCH_QUEUES)
        one = _SQL_FETCH.replace("__QUEUES__", _FETCH_ONE_QUEUE)
        self.finish_fetch = q(finish_and.replace("__CLAIM__", many.replace("__TASKS__", "")))
        self.finish_fetch_one = q(finish_and.replace("__CLAIM__", one.replace("__TASKS__", "")))
        self.finish_fetch_not = q(finish_and.replace("__CLAIM__", many.replace("__TASKS__", _NOT_TASKS)))
        self.finish_fetch_one_not = q(finish_and.replace("__CLAIM__", one.replace("__TASKS__", _NOT_TASKS)))
        self.promote = q(_SQL_PROMOTE)
        self.rescue = q(_SQL_RESCUE.replace("%(append_error)s", _APPEND_ERROR.format(entry=rescue_entry)))
        self.delete_dead = q(_SQL_DELETE_DEAD_WORKERS)
        self.register = q(_SQL_REGISTER)
        self.heartbeat = q(_SQL_HEARTBEAT)
        self.heartbeat_load = q(_SQL_HEARTBEAT_LOAD)
        self.list_workers = q(_SQL_LIST_WORKERS)
        self.deregister = q(_SQL_DEREGISTER)
        self.get = q(_SQL_GET)
        self.executing = q(_SQL_EXECUTING)
        self.version = q(_SQL_VERSION)
        self.queue_depth = q(_SQL_QUEUE_DEPTH)
        self.database_health = q(_SQL_DATABASE_HEALTH)
        self.periodic_register = q(_SQL_PERIODIC_REGISTER)
        self.periodic_state = q(_SQL_PERIODIC_STATE)
        self.periodic_enqueue = q(_SQL_PERIODIC_ENQUEUE)
        self.periodic_list = q(_SQL_PERIODIC_LIST)
        self.periodic_pause = q(_SQL_PERIODIC_PAUSE)
