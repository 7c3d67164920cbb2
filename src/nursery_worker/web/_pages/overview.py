"""Page 1, the overview: what every queue holds, how fast it moves, and what needs attention."""

from __future__ import annotations

from typing import Any

from ..._models import JobSearch
from ..._status import PROGRESS_ROWS, database_warnings, render_database
from .._page import Page, View
from .._request import PageRequest
from ._common import FINISHED, STATES, WAITING, read_counts

#: A worker whose heartbeat is older than this is stale (the default ``rescue_after``).
STALE_AFTER = 15.0


async def overview(req: PageRequest) -> View:
    """Counts by state per queue, throughput and failure rate, lag, recent failures, attention, the
    database's health line (the oldest transaction and dead tuples, or SQLite's WAL size), and the
    durable jobs: how many sleep or wait for an event, and the progress of executing ones."""
    counts = await read_counts(req)
    limit = req.options.statement_timeout
    failures = await req.read(
        lambda: req.admin.search_jobs(
            JobSearch(states=("discarded", "retryable")), limit=min(10, req.options.row_cap), time_limit=limit
        )
    )
    workers = await req.read(req.admin.list_workers)
    breakers = await req.read(req.admin.list_breakers)
    health = await req.read(req.admin.database_health)
    durable = await req.read(lambda: req.admin.durable_overview(limit=min(PROGRESS_ROWS, req.options.row_cap)))
    now = counts.now
    finished = {(c.state, c.window): c for c in counts.finished}
    rates: list[dict[str, Any]] = []
    for window, label in ((3600, "last hour"), (86400, "last day")):
        done = finished[("completed", window)]
        failed = finished[("discarded", window)]
        total = done.count + failed.count
        rates.append(
            {
                "label": label,
                "completed": done,
                "discarded": failed,
                "cancelled": finished[("cancelled", window)],
                "per_minute": round(done.count / (window / 60), 2),
                "failure_rate": round(100 * failed.count / total, 1) if total else None,
            }
        )
    stale = [w for w in workers if (now - w.heartbeat_at).total_seconds() > STALE_AFTER]
    stuck = await req.read(
        lambda: req.admin.search_jobs(JobSearch(states=("executing",)), limit=req.options.row_cap, time_limit=limit)
    )
    live_ids = {w.id for w in workers if w not in stale}
    stuck = [j for j in stuck if j.worker_id not in live_ids]
    day_discarded = finished[("discarded", 86400)].count
    hour_discarded = finished[("discarded", 3600)].count
    attention = {
        "paused": [q for q in counts.queues if q.paused],
        "breakers": [b for b in breakers if b.state != "closed"],
        "stale": stale,
        "stuck": stuck,
        # Discarded growth: the last hour's discards against the day's hourly average.
        "discard_growth": hour_discarded > 0 and hour_discarded > 2 * (day_discarded / 24),
        "hour_discarded": hour_discarded,
        # A long transaction holding back vacuum, or dead tuples piling up (as `status` warns).
        "database": database_warnings(health),
    }
    lag = {name: (now - at).total_seconds() for name, at in counts.oldest_available.items()}
    return View(
        template="overview.html",
        context={
            "counts": counts,
            "states": STATES,
            "waiting_states": WAITING,
            "finished_states": FINISHED,
            "rates": rates,
            "lag": lag,
            "failures": [req.show(j) for j in failures],
            "attention": attention,
            "workers": workers,
            "durable": durable,
            "database": render_database(health).splitlines()[0].removeprefix("WARNING "),
        },
    )


PAGE = Page(name="overview", path="/", title="Overview", order=10, handler=overview)
