"""The dashboard's reads on the embedded engine: filtered job pages and the counts of the overview
and queue pages, on the reader connection, under a deadline (a progress handler interrupts a
statement that runs past it) and a row cap.

Every count is ``count(*)`` over a subquery with ``LIMIT cap``, answered from an index where one
exists; SQLite keeps no planner estimates, so a count at the cap is given as the cap and marked
estimated (a lower bound: "~cap"), totals of finished states included.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..._models import DashboardCounts, JobSearch, QueueInfo, RateLimit, StateCount
from ._time import from_us, moment, to_us

WAITING = ("pending", "scheduled", "available", "executing", "retryable")
FINISHED = ("completed", "discarded", "cancelled")
WINDOWS = (3600, 86400)
_US = 1_000_000


@contextmanager
def deadline(conn: sqlite3.Connection, timeout: float) -> Iterator[None]:
    """Interrupt any statement on *conn* that runs past *timeout* seconds from now."""
    limit = time.monotonic() + timeout

    def check() -> int:
        return 1 if time.monotonic() > limit else 0

    conn.set_progress_handler(check, 10_000)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)


def capped_count(conn: sqlite3.Connection, query: str, params: Mapping[str, Any], cap: int) -> tuple[int, bool]:
    """How many rows *query* returns, exact up to *cap*; at the cap, the cap marked as estimated."""
    row = conn.execute(f"SELECT count(*) FROM ({query} LIMIT :cap)", {**params, "cap": cap + 1}).fetchone()
    n = int(row[0])
    return (n, False) if n <= cap else (cap, True)


def search_query(names: Mapping[str, str], columns: str, search: JobSearch, limit: int) -> tuple[str, dict[str, Any]]:
    """The statement and parameters of one page of :class:`JobSearch` results, newest first."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if search.states is not None:
        where.append("state IN (SELECT value FROM json_each(:states))")
        params["states"] = json.dumps(list(search.states))
    for name in ("queue", "task", "priority"):
        value = getattr(search, name)
        if value is not None:
            where.append(f"{name} = :{name}")
            params[name] = value
    if search.job_id is not None:
        where.append("id = :job_id")
        params["job_id"] = search.job_id
    if search.args_text is not None:
        where.append("args LIKE :args_text ESCAPE '\\'")
        escaped = search.args_text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["args_text"] = f"%{escaped}%"
    if search.after is not None:
        where.append("inserted_at >= :after")
        params["after"] = to_us(search.after)
    if search.before is not None:
        where.append("inserted_at < :before")
        params["before"] = to_us(search.before)
    if search.before_id is not None:
        where.append("id < :before_id")
        params["before_id"] = min(search.before_id, 2**63 - 1)
    query = f"SELECT {columns} FROM {names['jobs']} " + ("WHERE " + " AND ".join(where) if where else "")
    return query + " ORDER BY id DESC LIMIT :limit", params


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
    SELECT (SELECT queue FROM {jobs} WHERE state = 'available' AND limit_key IS NULL ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {jobs} WHERE state = 'available' AND limit_key IS NULL AND queue > free.q
            ORDER BY queue LIMIT 1) FROM free WHERE free.q IS NOT NULL
),
keyed(q) AS (
    SELECT (SELECT queue FROM {jobs} WHERE state = 'available' AND limit_key IS NOT NULL ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {jobs} WHERE state = 'available' AND limit_key IS NOT NULL AND queue > keyed.q
            ORDER BY queue LIMIT 1) FROM keyed WHERE keyed.q IS NOT NULL
),
waiting(q) AS (
    SELECT (SELECT queue FROM {jobs} WHERE state = 'pending' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {jobs} WHERE state = 'pending' AND queue > waiting.q ORDER BY queue LIMIT 1)
    FROM waiting WHERE waiting.q IS NOT NULL
)
SELECT name FROM {queues}
UNION SELECT q FROM free WHERE q IS NOT NULL
UNION SELECT q FROM keyed WHERE q IS NOT NULL
UNION SELECT q FROM waiting WHERE q IS NOT NULL
UNION SELECT queue FROM (SELECT queue FROM {jobs} WHERE state IN ('scheduled', 'retryable') LIMIT :cap)
UNION SELECT queue FROM (SELECT queue FROM {jobs} WHERE state = 'executing' LIMIT :cap)
UNION SELECT queue FROM (SELECT queue FROM {jobs} WHERE state = 'completed' AND finished_at > :since LIMIT :cap)
UNION SELECT queue FROM (SELECT queue FROM {jobs} WHERE state = 'discarded' AND finished_at > :since LIMIT :cap)
UNION SELECT queue FROM (SELECT queue FROM {jobs} WHERE state = 'cancelled' AND finished_at > :since LIMIT :cap)
"""


def dashboard_counts(
    conn: sqlite3.Connection,
    names: Mapping[str, str],
    now_sql: str,
    *,
    queue: str | None,
    cap: int,
    finished: bool = True,
) -> DashboardCounts:
    """The counts of :class:`DashboardCounts`, on *conn* (one read transaction)."""
    jobs = names["jobs"]
    now = int(conn.execute(now_sql).fetchone()[0])
    if queue is None:
        found = conn.execute(
            _QUEUE_NAMES.format(jobs=jobs, queues=names["queues"]), {"cap": cap, "since": now - 3600 * _US}
        )
        queues = sorted(str(r[0]) for r in found)
    else:
        queues = [queue]
    waiting: list[StateCount] = []
    oldest: dict[str, dt.datetime] = {}
    for name in queues:
        for state in WAITING:
            total, estimated = 0, False
            for where in _WAITING_SOURCES[state]:
                n, guessed = capped_count(
                    conn, f"SELECT 1 FROM {jobs} WHERE queue = :queue AND {where}", {"queue": name}, cap
                )
                total, estimated = total + n, estimated or guessed
            waiting.append(StateCount(queue=name, state=state, count=total, estimated=estimated))
        first = conn.execute(
            f"SELECT min(at) FROM (SELECT * FROM (SELECT scheduled_at AS at FROM {jobs} WHERE queue = :queue "
            "AND state = 'available' AND limit_key IS NULL ORDER BY priority DESC, scheduled_at LIMIT 50) "
            f"UNION ALL SELECT * FROM (SELECT scheduled_at FROM {jobs} WHERE queue = :queue "
            "AND state = 'available' AND limit_key IS NOT NULL LIMIT :cap))",
            {"queue": name, "cap": cap},
        ).fetchone()[0]
        if first is not None:
            at = from_us(int(first))
            assert at is not None
            oldest[name] = at
    ended: list[StateCount] = []
    totals: list[StateCount] = []
    finished_cap = cap if queue is None else min(cap, 1000)
    by_queue = " AND queue = :queue" if queue is not None else ""
    for state in FINISHED if finished else ():
        for window in WINDOWS:
            n, estimated = capped_count(
                conn,
                f"SELECT 1 FROM {jobs} WHERE state = :state AND finished_at > :since{by_queue}",
                {"state": state, "since": now - window * _US, "queue": queue},
                finished_cap,
            )
            ended.append(StateCount(queue=queue, state=state, count=n, estimated=estimated, window=window))
        n, estimated = capped_count(
            conn, f"SELECT 1 FROM {jobs} WHERE state = :state{by_queue}", {"state": state, "queue": queue}, finished_cap
        )
        totals.append(StateCount(queue=queue, state=state, count=n, estimated=estimated))
    settings = {
        str(r[0]): r
        for r in conn.execute(
            f"SELECT name, paused, paused_at, max_concurrency, rate_limit, rate_period FROM {names['queues']}"
        )
    }
    infos = []
    for name in queues:
        r = settings.get(name, (name, 0, None, None, None, None))
        infos.append(
            QueueInfo(
                name=name,
                paused=bool(r[1]),
                paused_at=from_us(r[2]),
                counts={c.state: c.count for c in waiting if c.queue == name},
                oldest_available_at=oldest.get(name),
                now=moment(now),
                max_concurrency=r[3],
                rate_limit=None if r[4] is None else str(RateLimit(count=r[4], period=r[5])),
            )
        )
    return DashboardCounts(
        now=moment(now),
        queues=tuple(infos),
        waiting=tuple(waiting),
        finished=tuple(ended),
        totals=tuple(totals),
        oldest_available=oldest,
    )


def dependants_query(names: Mapping[str, str], columns: str) -> str:
    """Jobs naming ``:id`` in ``depends_on``: inserted after it, so the id range bounds the scan."""
    return (
        f"SELECT {columns} FROM {names['jobs']} WHERE id > :id "
        "AND EXISTS (SELECT 1 FROM json_each(depends_on) WHERE value = :id) ORDER BY id LIMIT :limit"
    )


def read(conn: sqlite3.Connection, timeout: float, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """Run *fn* in one read transaction on *conn* under the deadline."""
    with deadline(conn, timeout):
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")


def run_now_query(names: Mapping[str, str], columns: str) -> str:
    """Make ``:id`` available now if it is scheduled or retryable."""
    return (
        f"UPDATE {names['jobs']} SET state = 'available', scheduled_at = :now, wait_event = NULL, wait_step = NULL "
        f"WHERE id = :id AND state IN ('scheduled', 'retryable') RETURNING {columns}"
    )
