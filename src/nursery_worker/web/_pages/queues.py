"""Page 4, the queues: per queue its depth by state, lag, limits, pause flag and the workers that
serve it (each queue's own page, ``queue.py``, adds throughput, breakers and the actions)."""

from __future__ import annotations

from .._page import Page, View
from .._request import PageRequest
from ._common import WAITING, read_counts

#: A worker whose heartbeat is older than this is stale (the default ``rescue_after``).
STALE_AFTER = 15.0


async def queues(req: PageRequest) -> View:
    """Every queue with waiting jobs or stored settings."""
    counts = await read_counts(req)
    workers = await req.read(req.admin.list_workers)
    now = counts.now
    rows = []
    for q in counts.queues:
        serving = [w for w in workers if q.name in w.queues and (now - w.heartbeat_at).total_seconds() <= STALE_AFTER]
        at = counts.oldest_available.get(q.name)
        rows.append(
            {
                "queue": q,
                "counts": [c for c in counts.waiting if c.queue == q.name],
                "lag": (now - at).total_seconds() if at is not None else None,
                "workers": serving,
                "capacity": sum(w.concurrency for w in serving),
            }
        )
    return View(template="queues.html", context={"rows": rows, "states": WAITING})


PAGE = Page(name="queues", path="/queues", title="Queues", order=40, handler=queues)
