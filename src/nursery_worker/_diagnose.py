""" "Why is this job not running?": every reason the queue would hold a job back, checked in turn.

Pure decisions on records read once (:func:`diagnose` reads, :func:`explain` decides), so the
dashboard's job page and ``nursery-worker jobs show ID --why`` give the same answer. The reasons:
scheduled in the future, waiting on dependencies, queue paused, queue or task concurrency full, a
rate limit, circuit breaker open, no live worker serves its queue, this app registers no such task.
The workers table does not record which tasks a worker registered, so the last check is against
the app given (the one the dashboard or the CLI loaded), and says so.

Layering: this module sits beside ``_admin`` and reads through it (never the driver's SQL).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from ._errors import JobNotFound
from ._flow import BreakerInfo
from ._models import Job, JobSearch, QueueInfo, WorkerRow
from ._state import JobState
from ._status import waits_forever

if TYPE_CHECKING:
    from ._admin import Admin

#: A worker whose heartbeat is older than this many seconds is not counted as live (the default
#: ``rescue_after``: peers would rescue its jobs by then).
STALE_AFTER = 15.0
#: The most running jobs counted when checking a task's concurrency limit.
_RUNNING_CAP = 1000


@attrs.frozen(kw_only=True)
class Reason:
    """One thing that holds the job back (or, with ``blocking=False``, a note about it).

    Attributes:
        code: a stable name: ``scheduled``, ``sleep``, ``event``, ``dependencies``, ``queue_paused``,
            ``queue_concurrency``, ``task_concurrency``, ``rate_limit``, ``breaker_open``,
            ``no_worker``, ``task_unknown``, ``not_waiting``, ``ready``.
        message: one sentence for people.
        blocking: whether it stops the job from being claimed now.
    """

    code: str
    message: str
    blocking: bool = True


@attrs.frozen(kw_only=True)
class Facts:
    """What :func:`explain` decides from, read once by :func:`diagnose`."""

    job: Job
    now: dt.datetime
    queue: QueueInfo | None
    dependencies: Sequence[Job | int]  # an int: a dependency that no longer exists
    breakers: Sequence[BreakerInfo]
    workers: Sequence[WorkerRow]
    task_known: bool | None  # None: the app registers no tasks at all (a bare DSN)
    task_limits: Mapping[str, object] = attrs.field(factory=dict)
    task_running: int | None = None


def _ago(seconds: float) -> str:
    s = int(abs(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h {s % 3600 // 60}m"


def explain(facts: Facts) -> list[Reason]:
    """The reasons, blocking ones first; ``ready`` alone when nothing holds the job back."""
    job, now = facts.job, facts.now
    state = job.state
    if state is JobState.EXECUTING:
        return [Reason(code="not_waiting", message=f"it is running now, on worker {job.worker_id}", blocking=False)]
    if state.is_terminal:
        return [
            Reason(
                code="not_waiting",
                message=f"it is {state.value}: finished jobs do not run again unless retried",
                blocking=False,
            )
        ]
    reasons: list[Reason] = []
    waiting = job.waiting
    if waiting is not None and waiting.kind == "event":
        until = (
            "with no timeout"
            if waits_forever(waiting.until, now)
            else f"until its timeout in {_ago((waiting.until - now).total_seconds())}, "
            f"at {waiting.until:%Y-%m-%d %H:%M:%S %Z}"
        )
        reasons.append(
            Reason(
                code="event",
                message=f"its step {waiting.step!r} waits for event {waiting.event!r} {until}; "
                f"`nursery-worker events emit {waiting.event}` (or app.emit) wakes it",
            )
        )
    elif waiting is not None and job.scheduled_at > now:
        reasons.append(
            Reason(
                code="sleep",
                message=f"its step {waiting.step!r} sleeps durably for {_ago((waiting.until - now).total_seconds())}, "
                f"until {waiting.until:%Y-%m-%d %H:%M:%S %Z}",
            )
        )
    elif state in (JobState.SCHEDULED, JobState.RETRYABLE) and job.scheduled_at > now:
        why = "its next attempt (after a failure) is due" if state is JobState.RETRYABLE else "it is scheduled"
        reasons.append(
            Reason(
                code="scheduled",
                message=f"{why} in {_ago((job.scheduled_at - now).total_seconds())}, "
                f"at {job.scheduled_at:%Y-%m-%d %H:%M:%S %Z}",
            )
        )
    if state is JobState.PENDING:
        open_deps = [d for d in facts.dependencies if not (isinstance(d, Job) and d.state is JobState.COMPLETED)]
        if open_deps:
            shown = ", ".join(
                f"{d.id} ({d.state.value})" if isinstance(d, Job) else f"{d} (gone)" for d in open_deps[:10]
            )
            reasons.append(Reason(code="dependencies", message=f"it waits for {len(open_deps)} dependencies: {shown}"))
    queue = facts.queue
    if queue is not None and queue.paused:
        reasons.append(Reason(code="queue_paused", message=f"queue {queue.name!r} is paused"))
    if queue is not None and queue.max_concurrency is not None:
        running = queue.counts.get("executing", 0)
        if running >= queue.max_concurrency:
            reasons.append(
                Reason(
                    code="queue_concurrency",
                    message=f"queue {queue.name!r} runs {running} jobs, "
                    f"its limit max_concurrency={queue.max_concurrency}",
                )
            )
    if queue is not None and queue.rate_limit is not None:
        reasons.append(
            Reason(
                code="rate_limit",
                message=f"queue {queue.name!r} has a rate limit of {queue.rate_limit}: "
                "the job waits when it is used up",
                blocking=False,
            )
        )
    limit = facts.task_limits.get("max_concurrency")
    if isinstance(limit, int) and facts.task_running is not None and facts.task_running >= limit:
        reasons.append(
            Reason(
                code="task_concurrency",
                message=f"task {job.task!r} runs {facts.task_running} jobs, its limit max_concurrency={limit}",
            )
        )
    rate = facts.task_limits.get("rate_limit")
    if rate is not None:
        reasons.append(
            Reason(
                code="rate_limit",
                message=f"task {job.task!r} has a rate limit of {rate}: the job waits when it is used up",
                blocking=False,
            )
        )
    for breaker in facts.breakers:
        if breaker.task == job.task and breaker.state != "closed":
            reasons.append(
                Reason(
                    code="breaker_open",
                    message=f"task {job.task!r}'s circuit breaker is {breaker.state} after {breaker.failures} failures",
                )
            )
    live = [w for w in facts.workers if (now - w.heartbeat_at).total_seconds() <= STALE_AFTER and job.queue in w.queues]
    if not live:
        stale = [w for w in facts.workers if job.queue in w.queues]
        detail = f" ({len(stale)} with stale heartbeats)" if stale else ""
        reasons.append(Reason(code="no_worker", message=f"no live worker serves queue {job.queue!r}{detail}"))
    if facts.task_known is False:
        reasons.append(
            Reason(
                code="task_unknown",
                message=f"this app registers no task {job.task!r}: workers built from it cannot run the job",
            )
        )
    if not any(r.blocking for r in reasons):
        reasons.insert(
            0, Reason(code="ready", message="nothing holds it back: a worker should claim it shortly", blocking=False)
        )
    return sorted(reasons, key=lambda r: not r.blocking)


async def diagnose(admin: Admin, job_id: int, *, time_limit: float = 5.0) -> tuple[Job, list[Reason]]:
    """Read what :func:`explain` needs about job *job_id* and return the job and its reasons.

    Raises:
        JobNotFound: there is no such job.
    """
    job = await admin.get_job(job_id)
    counts = await admin.dashboard_counts(queue=job.queue, cap=_RUNNING_CAP, time_limit=time_limit, finished=False)
    queue = counts.queues[0] if counts.queues else None
    now = counts.now
    dependencies: list[Job | int] = []
    if job.state is JobState.PENDING:
        for dep in job.depends_on[:50]:
            try:
                dependencies.append(await admin.get_job(dep))
            except JobNotFound:
                dependencies.append(dep)
    tasks = admin.app_tasks()
    task = tasks.get(job.task)
    limits: dict[str, object] = {}
    running: int | None = None
    if task is not None:
        if task.max_concurrency is not None:
            limits["max_concurrency"] = task.max_concurrency
            found = await admin.search_jobs(
                JobSearch(states=("executing",), task=job.task), limit=_RUNNING_CAP, time_limit=time_limit
            )
            running = len(found)
        if task.rate_limit is not None:
            limits["rate_limit"] = str(task.rate_limit)
    facts = Facts(
        job=job,
        now=now,
        queue=queue,
        dependencies=dependencies,
        breakers=await admin.list_breakers(),
        workers=await admin.list_workers(),
        task_known=(job.task in tasks) if tasks else None,
        task_limits=limits,
        task_running=running,
    )
    return job, explain(facts)
