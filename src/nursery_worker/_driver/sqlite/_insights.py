"""The embedded engine's statements for the dashboard's data layer: metric rollups, the audit
table, recent failures and job graphs (schema version 3; PostgreSQL's ``postgres/_dashboard.py``).

Histograms are JSON arrays here: a rollup upsert reads the stored row and writes the sum, in the
``BEGIN IMMEDIATE`` transaction of the write (the write lock makes the read-then-write safe).
"""

from __future__ import annotations

from ..._models import HISTOGRAM_BUCKETS
from ._queries import JOB_COLUMNS

_ROLLUP_COLUMNS = "queue, task, error_type, completed, failed, discarded, cancelled, duration_sum, histogram"
_SQL_ROLLUP_GET = """
SELECT completed, failed, discarded, cancelled, duration_sum, histogram FROM {table}
WHERE bucket = :bucket AND queue = :queue AND task = :task AND error_type = :error_type
"""
_SQL_ROLLUP_PUT = (
    "INSERT OR REPLACE INTO {table} (bucket, "
    + _ROLLUP_COLUMNS
    + """)
VALUES (:bucket, :queue, :task, :error_type, :completed, :failed, :discarded, :cancelled, :duration_sum, :histogram)
"""
)
# Summed per step in the database, as on PostgreSQL: one row per (step, task, error type).
_SUM_HISTOGRAM = (
    "json_array(" + ", ".join(f"sum(json_extract(histogram, '$[{i}]'))" for i in range(HISTOGRAM_BUCKETS)) + ")"
)
_SQL_ROLLUP_READ = (
    """SELECT (bucket / :step) * :step AS at, '', task, error_type, sum(completed), sum(failed), sum(discarded),
       sum(cancelled), sum(duration_sum), """
    + _SUM_HISTOGRAM
    + """ FROM {table}
WHERE bucket >= :since AND (:task IS NULL OR task = :task)
GROUP BY 1, task, error_type
ORDER BY 1, task, error_type
"""
)
_SQL_ROLLUP_PRUNE = "DELETE FROM {table} WHERE bucket < :before"
_SQL_RECORD_AUDIT = """
INSERT INTO {audit} (at, actor, action, target, count) VALUES (:now, :actor, :action, :target, :count)
RETURNING id, at, actor, action, target, count
"""
_SQL_LIST_AUDIT = """
SELECT id, at, actor, action, target, count FROM {audit}
WHERE (:before IS NULL OR id < :before)
ORDER BY id DESC LIMIT :limit
"""
# Through jobs_finished_idx (state, finished_at) and jobs_due_idx: never a scan of the table.
_SQL_RECENT_DISCARDED = (
    "SELECT "
    + JOB_COLUMNS
    + """ FROM {jobs} WHERE state = 'discarded' AND finished_at >= :since ORDER BY finished_at DESC LIMIT :limit"""
)
_SQL_RECENT_RETRYABLE = (
    "SELECT " + JOB_COLUMNS + """ FROM {jobs} WHERE state = 'retryable' ORDER BY scheduled_at DESC LIMIT :limit"""
)
_SQL_GRAPH_NODES = (
    "SELECT id, task, queue, state, depends_on FROM {jobs} WHERE id IN (SELECT value FROM json_each(:ids))"
)
_SQL_GRAPH_CHILDREN = """
SELECT id, task, queue, state, depends_on FROM {jobs}
WHERE depends_on IS NOT NULL
  AND EXISTS (SELECT 1 FROM json_each(depends_on) AS d WHERE d.value IN (SELECT value FROM json_each(:ids)))
ORDER BY id LIMIT :limit
"""


def compose_dashboard(names: dict[str, str]) -> dict[str, str]:
    """The statements above with the table names of one schema (*names*, from ``compose``) put in."""
    minute, hour = names["rollup_minute"], names["rollup_hour"]
    return {
        "rollup_get_minute": _SQL_ROLLUP_GET.format(table=minute),
        "rollup_get_hour": _SQL_ROLLUP_GET.format(table=hour),
        "rollup_put_minute": _SQL_ROLLUP_PUT.format(table=minute),
        "rollup_put_hour": _SQL_ROLLUP_PUT.format(table=hour),
        "rollup_read_minute": _SQL_ROLLUP_READ.format(table=minute),
        "rollup_read_hour": _SQL_ROLLUP_READ.format(table=hour),
        "rollup_prune_minute": _SQL_ROLLUP_PRUNE.format(table=minute),
        "rollup_prune_hour": _SQL_ROLLUP_PRUNE.format(table=hour),
        "record_audit": _SQL_RECORD_AUDIT.format(audit=names["audit"]),
        "list_audit": _SQL_LIST_AUDIT.format(audit=names["audit"]),
        "recent_discarded": _SQL_RECENT_DISCARDED.format(jobs=names["jobs"]),
        "recent_retryable": _SQL_RECENT_RETRYABLE.format(jobs=names["jobs"]),
        "graph_nodes": _SQL_GRAPH_NODES.format(jobs=names["jobs"]),
        "graph_children": _SQL_GRAPH_CHILDREN.format(jobs=names["jobs"]),
    }
