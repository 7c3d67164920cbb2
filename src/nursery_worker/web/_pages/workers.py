"""Page 5, workers and supervisors: every worker process and supervisor child, with its health."""

from __future__ import annotations

from ..._insights import STALE_AFTER, WorkerHealth
from .._page import Page, View
from .._request import PageRequest


async def workers(req: PageRequest) -> View:
    """Every worker (pid, host, state, uptime, heartbeat age, running, processed/failed, restarts,
    last exit), grouped by supervisor; stale heartbeats flagged."""
    rows = await req.read(req.admin.worker_health)
    supervisors: dict[str, list[WorkerHealth]] = {}
    standalone: list[WorkerHealth] = []
    for w in rows:
        if w.supervisor_id is None:
            standalone.append(w)
        else:
            supervisors.setdefault(w.supervisor_id, []).append(w)
    context = {
        "supervisors": supervisors,
        "standalone": standalone,
        "stale": sum(w.stale for w in rows),
        "stale_after": STALE_AFTER,
    }
    return View(template="workers.html", context=context, data={"workers": rows, "stale_after": STALE_AFTER})


PAGE = Page(name="workers", path="/workers", title="Workers", order=50, handler=workers)
