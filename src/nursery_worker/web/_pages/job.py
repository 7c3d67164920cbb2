"""Page 3, one job: its timeline of states and attempts, its progress, what it waits for and its
durable steps, args, result, dependencies and dependants, trace id, and why it is not running; and
its actions (retry, cancel, delete, run now)."""

from __future__ import annotations

from typing import Any

import attrs

from ..._diagnose import diagnose
from ..._errors import JobNotFound
from ..._models import Job, JobStep
from ..._status import STEP_ROWS, waiting_text
from .._page import Action, Done, Page, View
from .._request import PageRequest

#: The most dependencies and dependants shown.
RELATED = 50


def timeline(job: Job) -> list[dict[str, Any]]:
    """The job's events in time order: inserted, scheduled, each failed attempt, the last attempt, the end."""
    events: list[dict[str, Any]] = []
    if job.inserted_at is not None:
        events.append(
            {"at": job.inserted_at, "what": "inserted", "detail": f"queue {job.queue}, priority {job.priority}"}
        )
    if job.inserted_at is None or job.scheduled_at > job.inserted_at:
        events.append({"at": job.scheduled_at, "what": "scheduled for", "detail": ""})
    for error in job.errors:
        events.append(
            {
                "at": error.at,
                "what": f"attempt {error.attempt} failed",
                "detail": f"{error.type}: {error.message}",
                "traceback": error.traceback,
            }
        )
    if job.attempted_at is not None:
        worker = f" on {job.worker_id}" if job.worker_id else ""
        events.append({"at": job.attempted_at, "what": f"attempt {job.attempt} started{worker}", "detail": ""})
    if job.cancel_requested_at is not None:
        events.append({"at": job.cancel_requested_at, "what": "cancel requested", "detail": ""})
    if job.finished_at is not None:
        took = ""
        if job.attempted_at is not None:
            took = f"attempt took {(job.finished_at - job.attempted_at).total_seconds():.3f}s"
        events.append({"at": job.finished_at, "what": job.state.value, "detail": took})
    return sorted(({"traceback": "", **e} for e in events if e["at"] is not None), key=lambda e: e["at"])


def shown_steps(req: PageRequest, job: Job, steps: list[JobStep]) -> list[JobStep]:
    """*steps* with their results passed through the redaction hook, as the job's result is."""
    redact = req.options.redact
    if redact is None:
        return steps
    return [s if s.result is None else attrs.evolve(s, result=redact(job.task, s.result)) for s in steps]


async def job_page(req: PageRequest) -> View:
    """The job's page; a 404 page if there is no such job."""
    job_id = req.path_int("job_id")
    limit = req.options.statement_timeout
    job, reasons = await req.read(lambda: diagnose(req.admin, job_id, time_limit=limit))
    dependencies: list[Job | int] = []
    for dep in job.depends_on[:RELATED]:
        try:
            dependencies.append(req.show(await req.read(lambda dep=dep: req.admin.get_job(dep))))  # type: ignore[misc]
        except JobNotFound:
            dependencies.append(dep)
    dependants = await req.read(lambda: req.admin.job_dependants(job_id, limit=RELATED, time_limit=limit))
    steps = await req.read(lambda: req.admin.get_steps(job_id, limit=STEP_ROWS + 1))
    trace = (job.trace_context or {}).get("traceparent")
    trace_id = trace.split("-")[1] if trace and trace.count("-") >= 3 else None
    shown = req.show(job)
    return View(
        template="job.html",
        context={
            "job": shown,
            "timeline": timeline(shown),
            "reasons": reasons,
            "dependencies": dependencies,
            "dependants": [req.show(d) for d in dependants],
            "trace_id": trace_id,
            "steps": shown_steps(req, job, steps[:STEP_ROWS]),
            "more_steps": len(steps) > STEP_ROWS,
            "waiting": None if job.waiting is None else waiting_text(job.waiting),
        },
        title=f"Job {job.id}",
    )


async def retry(req: PageRequest) -> Done:
    job = await req.admin.retry(req.path_int("job_id"))
    return Done(message=f"job {job.id} is {job.state.value} again", target=f"job {job.id}", count=1)


async def cancel(req: PageRequest) -> Done:
    found = await req.admin.cancel(req.path_int("job_id"))
    words = {
        "cancelled": "cancelled",
        "requested": "asked to stop: its worker cancels it",
        "already_finished": f"already {found.job.state.value}; nothing to cancel",
    }
    changed = 1 if found.status in ("cancelled", "requested") else 0
    return Done(
        message=f"job {found.job.id} {words.get(found.status, found.status)}",
        target=f"job {found.job.id}",
        count=changed,
    )


async def delete(req: PageRequest) -> Done:
    job = await req.admin.delete_job(req.path_int("job_id"))
    return Done(message=f"job {job.id} deleted", redirect=req.url("/jobs"), target=f"job {job.id}", count=1)


async def run_now(req: PageRequest) -> Done:
    job = await req.admin.run_now(req.path_int("job_id"))
    return Done(message=f"job {job.id} is available now", target=f"job {job.id}", count=1)


PAGE = Page(
    name="job",
    path="/jobs/{job_id:int}",
    title="Job",
    order=30,
    handler=job_page,
    nav=False,
    actions=(
        Action(name="job.retry", path="/retry", handler=retry),
        Action(name="job.cancel", path="/cancel", handler=cancel),
        Action(name="job.delete", path="/delete", handler=delete),
        Action(name="job.run_now", path="/run-now", handler=run_now),
    ),
)
