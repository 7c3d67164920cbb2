"""Page 6, periodic jobs: every schedule, its next fire, and its last runs with their outcome.

Read-only: triggering a schedule now and pausing or resuming one need admin operations this
version does not have yet; the page says so.
"""

from __future__ import annotations

import attrs

from ..._insights import PeriodicOverview
from .._page import Page, View
from .._request import PageRequest


async def periodic(req: PageRequest) -> View:
    """Every periodic schedule (cron, zone, task, queue, next and last tick) with its recent runs."""
    schedules = await req.read(req.admin.periodic_overview)
    shown = [attrs.evolve(s, recent=tuple(req.show(j) for j in s.recent)) for s in schedules]
    data = {"schedules": [_summary(s) for s in shown], "actions": []}
    return View(template="periodic.html", context={"schedules": shown}, data=data)


def _summary(s: PeriodicOverview) -> dict[str, object]:
    info = s.info
    return {
        "name": info.name,
        "cron": info.cron,
        "timezone": info.timezone,
        "task": info.task,
        "queue": info.queue,
        "next_tick": info.next_tick,
        "next_in": info.next_in,
        "last_tick": info.last_tick,
        "last_job_id": info.last_job_id,
        "last_job_state": info.last_job_state,
        "in_app": info.in_app,
        "recent": [{"id": j.id, "state": j.state, "finished_at": j.finished_at} for j in s.recent],
        "completed_24h": s.completed_24h,
        "failed_24h": s.failed_24h,
    }


PAGE = Page(name="periodic", path="/periodic", title="Periodic", order=60, handler=periodic)
