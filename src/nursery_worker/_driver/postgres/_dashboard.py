"""The dashboard's reads on PostgreSQL: filtered job pages and the counts of the overview and queue
pages, each in a read-only transaction under ``SET LOCAL statement_timeout``.

No count here walks the jobs table: every count is ``count(*)`` over a subquery with ``LIMIT cap``
answered from an index (waiting states by queue, finished states by ``(state, finished_at)``),
exact below the cap; at the cap, the planner's estimate (``EXPLAIN``) is given instead, marked as
such.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..._models import DashboardCounts, JobSearch, QueueInfo, RateLimit, StateCount
from ._queries import ordered_page

#: The states a queue's jobs wait or run in (counted per queue, exactly up to the cap).
WAITING = ("pending", "scheduled", "available", "executing", "retryable")
#: The finished states (counted per window, and estimated in total).
FINISHED = ("completed", "discarded", "cancelled")
#: The windows of the finished counts, in seconds: the last hour and the last day.
WINDOWS = (3600, 86400)


def begin(conn: psycopg.Connection[Any], timeout: float) -> None:
    """Make the open transaction read-only with the dashboard's statement timeout."""
    conn.execute("SET TRANSACTION READ ONLY")
    conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{max(1, int(timeout * 1000))}ms")))


def _estimate(conn: psycopg.Connection[Any], query: sql.Composable, params: dict[str, Any]) -> int:
    """The planner's estimate of the rows *query* returns."""
    row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return int(plan[0]["Plan"]["Plan Rows"])


def capped_count(
    conn: psycopg.Connection[Any], query: sql.Composable, params: dict[str, Any], cap: int
) -> tuple[int, bool]:
    """How many rows *query* returns: exact up to *cap*, else the planner's estimate; and whether estimated."""
    counted = conn.execute(
        sql.SQL("SELECT count(*) FROM (") + query + sql.SQL(" LIMIT %(cap)s) AS capped"), {**params, "cap": cap + 1}
    ).fetchone()
    assert counted is not None
    if int(counted[0]) <= cap:
        return int(counted[0]), False
    return max(cap + 1, _estimate(conn, query, params)), True


def search_query(
    ident: sql.Composable, columns: str, search: JobSearch, limit: int
) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement and parameters of one page of :class:`JobSearch` results, newest first."""
    where: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": limit}
    if search.states is not None:
        where.append(sql.SQL("state = ANY(%(states)s::text[])"))
        params["states"] = list(search.states)
    for name in ("queue", "task", "priority"):
        value = getattr(search, name)
        if value is not None:
            where.append(sql.SQL("{} = %({})s").format(sql.Identifier(name), sql.SQL(name)))
            params[name] = value
    if search.job_id is not None:
        where.append(sql.SQL("id = %(job_id)s"))
        params["job_id"] = search.job_id
    if search.args_text is not None:
        where.append(sql.SQL("args::text ILIKE %(args_text)s"))
        escaped = search.args_text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["args_text"] = f"%{escaped}%"
    if search.after is not None:
        where.append(sql.SQL("inserted_at >= %(after)s"))
        params["after"] = search.after
    if search.before is not None:
        where.append(sql.SQL("inserted_at < %(before)s"))
        params["before"] = search.before
    if search.before_id is not None:
        where.append(sql.SQL("id < %(before_id)s"))
        params["before_id"] = search.before_id
    head = sql.SQL("SELECT {cols} FROM {s}.jobs").format(cols=sql.SQL(columns), s=ident)
    return ordered_page(head, where, order="id DESC", by_task=search.task is not None), params


#: Each waiting state's jobs of one queue, in the terms of a partial index that answers them
#: (available jobs sit in two: with and without a limit key).
_WAITING_SOURCES = {
    "pending": ("state = 'pending'",),
    "scheduled": ("state = 'scheduled'",),
    "available": ("state = 'available' AND limit_key IS NULL", "state = 'available' AND limit_key IS NOT NULL"),
    "executing": ("state = 'executing'",),
    "retryable": ("state = 'retryable'",),
}

# The queues with waiting jobs, each found by a loose index scan (one probe per queue) or a capped
# read of a small partial index, and the queues of jobs finished in the last hour (capped).
_QUEUE_NAMES = """
WITH RECURSIVE
free(q) AS (
    (SELECT queue FROM {s}.jobs WHERE state = 'available' AND limit_key IS NULL ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {s}.jobs WHERE state = 'available' AND limit_key IS NULL AND queue > free.q
            ORDER BY queue LIMIT 1) FROM free WHERE free.q IS NOT NULL
),
keyed(q) AS (
    (SELECT queue FROM {s}.jobs WHERE state = 'available' AND limit_key IS NOT NULL ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {s}.jobs WHERE state = 'available' AND limit_key IS NOT NULL AND queue > keyed.q
            ORDER BY queue LIMIT 1) FROM keyed WHERE keyed.q IS NOT NULL
),
waiting(q) AS (
    (SELECT queue FROM {s}.jobs WHERE state = 'pending' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {s}.jobs WHERE state = 'pending' AND queue > waiting.q ORDER BY queue LIMIT 1)
    FROM waiting WHERE waiting.q IS NOT NULL
)
SELECT name FROM {s}.queues
UNION SELECT q FROM free WHERE q IS NOT NULL
UNION SELECT q FROM keyed WHERE q IS NOT NULL
UNION SELECT q FROM waiting WHERE q IS NOT NULL
UNION SELECT queue FROM (SELECT queue FROM {s}.jobs WHERE state IN ('scheduled', 'retryable') LIMIT %(cap)s) AS d
UNION SELECT queue FROM (SELECT queue FROM {s}.jobs WHERE state = 'executing' LIMIT %(cap)s) AS e
UNION SELECT queue FROM (SELECT queue FROM {s}.jobs
                         WHERE state = 'completed' AND finished_at > now() - interval '1 hour' LIMIT %(cap)s) AS c
UNION SELECT queue FROM (SELECT queue FROM {s}.jobs
                         WHERE state = 'discarded' AND finished_at > now() - interval '1 hour' LIMIT %(cap)s) AS f
UNION SELECT queue FROM (SELECT queue FROM {s}.jobs
                         WHERE state = 'cancelled' AND finished_at > now() - interval '1 hour' LIMIT %(cap)s) AS x
"""


def dashboard_counts(
    conn: psycopg.Connection[Any], ident: sql.Composable, *, queue: str | None, cap: int, finished: bool = True
) -> DashboardCounts:
    """The counts of :class:`DashboardCounts`, in the caller's transaction."""
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: dt.datetime = row[0]
    if queue is None:
        names_query = sql.SQL(_QUEUE_NAMES).format(s=ident)
        names = sorted(str(r[0]) for r in conn.execute(names_query, {"cap": cap}))
    else:
        names = [queue]
    waiting: list[StateCount] = []
    oldest: dict[str, dt.datetime] = {}
    first = sql.SQL(
        "SELECT min(at) FROM ("
        "(SELECT scheduled_at AS at FROM {s}.jobs WHERE queue = %(queue)s AND state = 'available' "
        "AND limit_key IS NULL ORDER BY priority DESC, scheduled_at LIMIT 50) UNION ALL "
        "(SELECT scheduled_at FROM {s}.jobs WHERE queue = %(queue)s AND state = 'available' "
        "AND limit_key IS NOT NULL LIMIT %(cap)s)) AS a"
    ).format(s=ident)
    for name in names:
        for state in WAITING:
            total, estimated = 0, False
            for where in _WAITING_SOURCES[state]:
                part = sql.SQL("SELECT 1 FROM {s}.jobs WHERE queue = %(queue)s AND " + where).format(s=ident)
                n, guessed = capped_count(conn, part, {"queue": name}, cap)
                total, estimated = total + n, estimated or guessed
            waiting.append(StateCount(queue=name, state=state, count=total, estimated=estimated))
        # The fetch index orders by priority first: the oldest of the first few is the oldest
        # available job unless priorities differ, which is the lag a worker actually sees.
        at = conn.execute(first, {"queue": name, "cap": cap}).fetchone()
        if at is not None and at[0] is not None:
            oldest[name] = at[0]
    ended: list[StateCount] = []
    totals: list[StateCount] = []
    # One queue's finished jobs are found through the (state, finished_at) index and filtered by
    # queue: a smaller cap bounds that walk.
    finished_cap = cap if queue is None else min(cap, 1000)
    window_query = sql.SQL(
        "SELECT 1 FROM {s}.jobs WHERE state = %(state)s AND finished_at > now() - %(window)s"
    ).format(s=ident)
    if queue is not None:
        window_query = window_query + sql.SQL(" AND queue = %(queue)s")
    for state in FINISHED if finished else ():
        for window in WINDOWS:
            params = {"state": state, "window": dt.timedelta(seconds=window), "queue": queue}
            n, estimated = capped_count(conn, window_query, params, finished_cap)
            ended.append(StateCount(queue=queue, state=state, count=n, estimated=estimated, window=window))
    total_query = sql.SQL("SELECT 1 FROM {s}.jobs WHERE state = %(state)s").format(s=ident)
    if queue is not None:
        total_query = total_query + sql.SQL(" AND queue = %(queue)s")
    for state in FINISHED if finished else ():
        n, estimated = capped_count(conn, total_query, {"state": state, "queue": queue}, finished_cap)
        totals.append(StateCount(queue=queue, state=state, count=n, estimated=estimated))
    settings = {
        str(r[0]): r
        for r in conn.execute(
            sql.SQL(
                "SELECT name, coalesce(paused, false), paused_at, max_concurrency, rate_limit, rate_period "
                "FROM {s}.queues"
            ).format(s=ident)
        )
    }
    infos = []
    for name in names:
        r = settings.get(name, (name, False, None, None, None, None))
        infos.append(
            QueueInfo(
                name=name,
                paused=bool(r[1]),
                paused_at=r[2],
                counts={c.state: c.count for c in waiting if c.queue == name},
                oldest_available_at=oldest.get(name),
                now=now,
                max_concurrency=r[3],
                rate_limit=None if r[4] is None else str(RateLimit(count=r[4], period=r[5])),
            )
        )
    return DashboardCounts(
        now=now,
        queues=tuple(infos),
        waiting=tuple(waiting),
        finished=tuple(ended),
        totals=tuple(totals),
        oldest_available=oldest,
    )


def dependants_query(ident: sql.Composable, columns: str) -> sql.Composed:
    """Jobs naming ``%(id)s`` in ``depends_on``, found through the GIN index of ``depends_on``."""
    return sql.SQL(
        "SELECT {cols} FROM {s}.jobs WHERE depends_on IS NOT NULL AND depends_on @> ARRAY[%(id)s]::bigint[] "
        "ORDER BY id LIMIT %(limit)s"
    ).format(cols=sql.SQL(columns), s=ident)


def rows(conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any]) -> Sequence[Any]:
    """All rows of *query*."""
    found: Sequence[Any] = conn.execute(query, params).fetchall()
    return found


def run_now_query(ident: sql.Composable, columns: str) -> sql.Composed:
    """Make ``%(id)s`` available now if it is scheduled or retryable, notifying its queue."""
    return sql.SQL(
        "UPDATE {s}.jobs SET state = 'available', scheduled_at = now(), wait_event = NULL, wait_step = NULL "
        "WHERE id = %(id)s AND state IN ('scheduled', 'retryable') "
        "RETURNING {cols}, pg_notify(%(channel)s, 'available:' || queue)"
    ).format(cols=sql.SQL(columns), s=ident)
