"""Page 6, periodic jobs: every schedule, its next fire, whether it is paused, and its last runs
with their outcome; actions: trigger now, pause, resume (``Admin.trigger_periodic`` and friends)."""

from __future__ import annotations

import attrs

from ..._errors import PeriodicNotFound
from ..._insights import PeriodicOverview
from .._page import Action, Done, Page, View, WebError
from .._request import PageRequest


async def periodic(req: PageRequest) -> View:
    """Every periodic schedule (cron, zone, task, queue, next and last tick) with its recent runs."""
    schedules = await req.read(req.admin.periodic_overview)
    shown = [attrs.evolve(s, recent=tuple(req.show(j) for j in s.recent)) for s in schedules]
    data = {"schedules": [_summary(s) for s in shown]}
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
        "paused": info.paused,
        "paused_at": info.paused_at,
        "recent": [{"id": j.id, "state": j.state, "finished_at": j.finished_at} for j in s.recent],
        "completed_24h": s.completed_24h,
        "failed_24h": s.failed_24h,
    }


def _name(req: PageRequest) -> str:
    return str(req.request.path_params["name"])


async def trigger(req: PageRequest) -> Done:
    """Enqueue one run of the schedule now, as its tick would."""
    name = _name(req)
    try:
        job = await req.admin.trigger_periodic(name)
    except PeriodicNotFound as exc:
        raise WebError(404, str(exc)) from None
    return Done(message=f"schedule {name} triggered: job {job.id} is {job.state.value}", target=name, count=1)


async def pause(req: PageRequest) -> Done:
    """Pause the schedule for every worker."""
    name = _name(req)
    try:
        changed = await req.admin.pause_periodic(name)
    except PeriodicNotFound as exc:
        raise WebError(404, str(exc)) from None
    message = f"schedule {name} paused" if changed else f"schedule {name} was already paused"
    return Done(message=message, target=name, count=int(changed))


async def resume(req: PageRequest) -> Done:
    """Resume the schedule."""
    name = _name(req)
    try:
        changed = await req.admin.resume_periodic(name)
    except PeriodicNotFound as exc:
        raise WebError(404, str(exc)) from None
    message = f"schedule {name} resumed" if changed else f"schedule {name} was not paused"
    return Done(message=message, target=name, count=int(changed))


PAGE = Page(
    name="periodic",
    path="/periodic",
    title="Periodic",
    order=60,
    handler=periodic,
    actions=(
        Action(name="periodic.trigger", path="/{name}/trigger", handler=trigger),
        Action(name="periodic.pause", path="/{name}/pause", handler=pause),
        Action(name="periodic.resume", path="/{name}/resume", handler=resume),
    ),
)
