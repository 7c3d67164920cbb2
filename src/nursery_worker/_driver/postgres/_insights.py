"""The PostgreSQL statements the dashboard's data layer needs: metric rollups, the audit table,
recent failures and job graphs (schema version 8).

Kept apart from ``_queries.py``: none of them is on a worker's hot path except the rollup upsert,
which each worker runs once per ``rollup_interval``. The reads run under
:data:`READ_TIMEOUT` (``SET LOCAL statement_timeout``), so one heavy page cannot hold the database.
"""

from __future__ import annotations

from psycopg import sql

from ..._models import HISTOGRAM_BUCKETS
from ._queries import JOB_COLUMNS

#: The statement timeout of every dashboard read.
READ_TIMEOUT = "5s"

_ROLLUP_COLUMNS = "queue, task, error_type, completed, failed, discarded, cancelled, duration_sum, histogram"
_ROLLUP_UPSERT = (
    """
INSERT INTO {s}.__TABLE__ AS r (bucket, """
    + _ROLLUP_COLUMNS
    + """)
SELECT date_trunc('__UNIT__', now()), u.queue, u.task, u.error_type, u.completed, u.failed, u.discarded,
       u.cancelled, u.duration_sum, u.histogram::bigint[]
FROM unnest(%(queues)s::text[], %(tasks)s::text[], %(error_types)s::text[], %(completed)s::bigint[],
            %(failed)s::bigint[], %(discarded)s::bigint[], %(cancelled)s::bigint[], %(durations)s::float8[],
            %(histograms)s::text[])
     AS u(queue, task, error_type, completed, failed, discarded, cancelled, duration_sum, histogram)
ON CONFLICT (bucket, queue, task, error_type) DO UPDATE SET
    completed = r.completed + excluded.completed,
    failed = r.failed + excluded.failed,
    discarded = r.discarded + excluded.discarded,
    cancelled = r.cancelled + excluded.cancelled,
    duration_sum = r.duration_sum + excluded.duration_sum,
    histogram = ARRAY(SELECT h.a + h.b FROM unnest(r.histogram, excluded.histogram) WITH ORDINALITY AS h(a, b, i)
                      ORDER BY h.i)
"""
)
# Both grains in one statement: the minute rows and the hour rows move together.
_SQL_WRITE_ROLLUPS = (
    "WITH minute AS ("
    + _ROLLUP_UPSERT.replace("__TABLE__", "rollup_minute").replace("__UNIT__", "minute")
    + ") "
    + _ROLLUP_UPSERT.replace("__TABLE__", "rollup_hour").replace("__UNIT__", "hour")
)
# Summed per step in the database: one row per (step, task, error type) however many minutes and
# queues it covers, each histogram bucket by its own sum() (no array unnesting).
_SUM_HISTOGRAM = "ARRAY[" + ", ".join(f"sum(histogram[{i}])::bigint" for i in range(1, HISTOGRAM_BUCKETS + 1)) + "]"
_SQL_READ_ROLLUPS = (
    """
SELECT to_timestamp(floor(extract(epoch FROM bucket) / %(step)s) * %(step)s) AS at, '', task, error_type,
       sum(completed)::bigint, sum(failed)::bigint, sum(discarded)::bigint, sum(cancelled)::bigint,
       sum(duration_sum), """
    + _SUM_HISTOGRAM
    + """
FROM {s}.__TABLE__
WHERE bucket >= date_trunc('__UNIT__', now() - %(since)s * interval '1 second')
  AND (%(task)s::text IS NULL OR task = %(task)s)
GROUP BY 1, task, error_type
ORDER BY 1, task, error_type
"""
)
_SQL_PRUNE_ROLLUPS = """
WITH minute AS (
    DELETE FROM {s}.rollup_minute WHERE bucket < now() - %(minute_age)s * interval '1 second' RETURNING 1
), hour AS (
    DELETE FROM {s}.rollup_hour WHERE bucket < now() - %(hour_age)s * interval '1 second' RETURNING 1
)
SELECT (SELECT count(*) FROM minute) + (SELECT count(*) FROM hour)
"""
_SQL_RECORD_AUDIT = """
INSERT INTO {s}.audit (actor, action, target, count) VALUES (%(actor)s, %(action)s, %(target)s::jsonb, %(count)s)
RETURNING id, at, actor, action, target, count
"""
_SQL_LIST_AUDIT = """
SELECT id, at, actor, action, target, count FROM {s}.audit
WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC LIMIT %(limit)s
"""
# Through jobs_finished_idx (state, finished_at) and jobs_due_idx (scheduled_at): never a scan.
_SQL_RECENT_FAILURES = (
    "(SELECT "
    + JOB_COLUMNS
    + """ FROM {s}.jobs WHERE state = 'discarded' AND finished_at >= now() - %(since)s * interval '1 second'
 ORDER BY finished_at DESC LIMIT %(limit)s)
UNION ALL
(SELECT """
    + JOB_COLUMNS
    + """ FROM {s}.jobs WHERE state = 'retryable' ORDER BY scheduled_at DESC LIMIT %(limit)s)"""
)
_SQL_GRAPH_NODES = "SELECT id, task, queue, state, depends_on FROM {s}.jobs WHERE id = ANY(%(ids)s::bigint[])"
_SQL_GRAPH_CHILDREN = """
SELECT id, task, queue, state, depends_on FROM {s}.jobs
WHERE depends_on IS NOT NULL AND depends_on && %(ids)s::bigint[]
ORDER BY id LIMIT %(limit)s
"""


class DashboardQueries:
    """The statements above, composed for one schema."""

    def __init__(self, schema: str) -> None:
        ident = sql.Identifier(schema)

        def q(text: str) -> bytes:
            return sql.SQL(text).format(s=ident).as_bytes(None)

        self.write_rollups = q(_SQL_WRITE_ROLLUPS)
        self.read_minutes = q(_SQL_READ_ROLLUPS.replace("__TABLE__", "rollup_minute").replace("__UNIT__", "minute"))
        self.read_hours = q(_SQL_READ_ROLLUPS.replace("__TABLE__", "rollup_hour").replace("__UNIT__", "hour"))
        self.prune_rollups = q(_SQL_PRUNE_ROLLUPS)
        self.record_audit = q(_SQL_RECORD_AUDIT)
        self.list_audit = q(_SQL_LIST_AUDIT)
        self.recent_failures = q(_SQL_RECENT_FAILURES)
        self.graph_nodes = q(_SQL_GRAPH_NODES)
        self.graph_children = q(_SQL_GRAPH_CHILDREN)
        self.read_timeout = f"SET LOCAL statement_timeout = '{READ_TIMEOUT}'".encode()
