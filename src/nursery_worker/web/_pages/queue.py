"""One queue's page: depth by state, lag, throughput and failure rate, limits and their use,
breakers of its tasks, the workers that serve it; actions pause, resume and set limits."""

from __future__ import annotations

from ..._task import check_queue
from .._page import Action, Done, Page, View, WebError
from .._request import PageRequest
from ._common import FINISHED, WAITING, read_counts

STALE_AFTER = 15.0


def _name(req: PageRequest) -> str:
    name = str(req.request.path_params["name"])
    try:
        return check_queue(name, where="queue page")
    except (ValueError, TypeError) as exc:
        raise WebError(404, str(exc)) from None


async def queue_page(req: PageRequest) -> View:
    """The queue's page; a 404 page if it has neither jobs nor settings."""
    name = _name(req)
    counts = await read_counts(req, name)
    info = counts.queues[0]
    workers = await req.read(req.admin.list_workers)
    breakers = await req.read(req.admin.list_breakers)
    tasks = {t.name for t in req.admin.app_tasks().values() if t.queue == name}
    now = counts.now
    serving = [w for w in workers if name in w.queues]
    at = counts.oldest_available.get(name)
    finished = {(c.state, c.window): c for c in counts.finished}
    rates = []
    for window, label in ((3600, "last hour"), (86400, "last day")):
        done, failed = finished[("completed", window)], finished[("discarded", window)]
        total = done.count + failed.count
        rates.append(
            {
                "label": label,
                "completed": done,
                "discarded": failed,
                "cancelled": finished[("cancelled", window)],
                "failure_rate": round(100 * failed.count / total, 1) if total else None,
            }
        )
    return View(
        template="queue.html",
        context={
            "q": info,
            "counts": counts,
            "states": WAITING,
            "finished_states": FINISHED,
            "lag": (now - at).total_seconds() if at is not None else None,
            "rates": rates,
            "workers": serving,
            "stale_after": STALE_AFTER,
            "breakers": [b for b in breakers if b.task in tasks],
            "running": info.counts.get("executing", 0),
        },
        title=f"Queue {name}",
    )


async def pause(req: PageRequest) -> Done:
    name = _name(req)
    changed = await req.admin.pause_queue(name)
    return Done(
        message=f"queue {name} paused" if changed else f"queue {name} was already paused",
        target=name,
        count=int(changed),
    )


async def resume(req: PageRequest) -> Done:
    name = _name(req)
    changed = await req.admin.resume_queue(name)
    return Done(
        message=f"queue {name} resumed" if changed else f"queue {name} was not paused", target=name, count=int(changed)
    )


async def set_limits(req: PageRequest) -> Done:
    name = _name(req)
    concurrency = req.int_param("max_concurrency", low=1, high=1_000_000)
    rate = req.param("rate_limit")
    info = await req.admin.set_queue_limits(name, max_concurrency=concurrency, rate_limit=rate)
    shown = f"max_concurrency={info.max_concurrency or 'none'}, rate_limit={info.rate_limit or 'none'}"
    return Done(message=f"queue {name} limits: {shown}", target=f"{name}: {shown}", count=1)


PAGE = Page(
    name="queue",
    path="/queues/{name}",
    title="Queue",
    order=41,
    handler=queue_page,
    nav=False,
    actions=(
        Action(name="queue.pause", path="/pause", handler=pause),
        Action(name="queue.resume", path="/resume", handler=resume),
        Action(name="queue.set_limits", path="/limits", handler=set_limits),
    ),
)
