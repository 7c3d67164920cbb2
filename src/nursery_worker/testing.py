"""Helpers for testing your own tasks, shipped with the package.

* :func:`run_task` calls a task's function directly, with a fake :class:`JobContext` when it
  declares one: no database, no worker.
* :func:`drain` runs every job that is due in the app's database to completion, in-process, and
  says what happened to each attempt.
* :func:`isolated_schema` points an app at a fresh, migrated schema for one test and drops it after,
  so tests run in parallel and in any order.

Example (pytest with the anyio plugin)::

    import pytest
    from nursery_worker.testing import drain, isolated_schema, run_task
    from myapp.tasks import app, send_welcome

    @pytest.fixture
    async def jobs_app():
        async with isolated_schema(app) as isolated:
            yield isolated

    async def test_send_welcome_completes(jobs_app):
        await send_welcome.defer(user_id=7)
        result = await drain(jobs_app)
        assert [job.task for job in result.completed] == [send_welcome.name]
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import attrs

from ._app import App
from ._config import WorkerConfig
from ._context import JobContext
from ._models import Job
from ._state import Cancelled, Failed, JobState, Outcome, Released, Snoozed, Succeeded, Transition
from ._task import Task
from ._worker import open_worker

__all__ = ["DrainResult", "drain", "isolated_schema", "make_context", "run_task"]


def make_context(
    task: Task[..., Any],
    *,
    args: dict[str, Any] | None = None,
    job_id: int = 1,
    attempt: int = 1,
    max_attempts: int | None = None,
    queue: str | None = None,
    worker_id: str = "testing",
    deadline: dt.datetime | None = None,
) -> JobContext:
    """Build a :class:`JobContext` for calling *task* outside a worker.

    Args:
        task: the task the context is for.
        args: the job's arguments, as ``context.job.args`` shows them.
        job_id: the fake job's id.
        attempt: the attempt number the task sees.
        max_attempts: the budget it sees (default: the task's).
        queue: the queue it sees (default: the task's).
        worker_id: the worker id it sees.
        deadline: the deadline it sees (default: none).

    Returns:
        A :class:`JobContext` whose job is executing, as in a worker.
    """
    job = Job(
        id=job_id,
        task=task.name,
        queue=queue or task.queue,
        args=dict(args or {}),
        state=JobState.EXECUTING,
        attempt=attempt,
        max_attempts=max_attempts or task.max_attempts,
        priority=task.priority,
        scheduled_at=dt.datetime.now(dt.UTC),
        attempted_at=dt.datetime.now(dt.UTC),
        worker_id=worker_id,
    )
    return JobContext(job=job, worker_id=worker_id, deadline=deadline, app=task.app)


async def run_task(task: Task[..., Any], /, *, job_context: JobContext | None = None, **kwargs: Any) -> Any:
    """Call *task*'s function with *kwargs* (and a :class:`JobContext` if it declares one).

    ``async def`` tasks are awaited; plain ``def`` tasks run in a thread, as in a worker. What the
    task raises (including ``Snooze``, ``Retry`` and ``Discard``) propagates, so assert it with
    ``pytest.raises``. Middleware does not run.

    Args:
        task: a registered task.
        job_context: the context to pass to a task that declares one (default:
            :func:`make_context` with these arguments); named so that a task argument called
            ``context`` passes through.
        **kwargs: the job's arguments.

    Returns:
        What the function returned.

    Raises:
        TypeError: *kwargs* do not fit the function's signature.
    """
    task.check_args(kwargs)
    call_kwargs = dict(kwargs)
    if task.context_param is not None:
        call_kwargs[task.context_param] = job_context or make_context(task, args=kwargs)
    if task.is_async:
        return await task.func(**call_kwargs)
    return await anyio.to_thread.run_sync(lambda: task.func(**call_kwargs))


@attrs.frozen(kw_only=True)
class DrainResult:
    """What :func:`drain` ran: the jobs (as they are after the drain) by the outcome of each attempt.

    A job appears once per attempt: a job that failed once and then completed is in ``retried``
    and in ``completed``.

    Attributes:
        completed: attempts that returned (``job.result`` holds the return value).
        retried: attempts that failed and will run again.
        discarded: attempts that failed for good (attempts used up, ``Discard``, unknown task).
        snoozed: attempts that raised ``Snooze``.
        cancelled: attempts stopped by ``app.cancel``.
    """

    completed: tuple[Job, ...] = ()
    retried: tuple[Job, ...] = ()
    discarded: tuple[Job, ...] = ()
    snoozed: tuple[Job, ...] = ()
    cancelled: tuple[Job, ...] = ()

    @property
    def attempts(self) -> int:
        """How many attempts ran."""
        return sum(len(x) for x in (self.completed, self.retried, self.discarded, self.snoozed, self.cancelled))


def _kind(outcome: Outcome, transition: Transition) -> str | None:
    if isinstance(outcome, Succeeded):
        return "completed"
    if isinstance(outcome, Snoozed):
        return "snoozed"
    if isinstance(outcome, Cancelled):
        return "cancelled"
    if isinstance(outcome, Failed):
        return "retried" if transition.state is JobState.RETRYABLE else "discarded"
    if isinstance(outcome, Released):
        return None
    return None


async def drain(
    app: App,
    *,
    queues: Sequence[str] | str | None = None,
    concurrency: int | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 - a plain limit for tests; a cancel scope inside
) -> DrainResult:
    """Run every job that is due now to completion, in this process, and report each attempt.

    A worker in once-mode works the queues until nothing is available or running; due scheduled
    and retryable jobs are promoted as it goes, so a failing job with no backoff runs until its
    attempts are used up. Jobs scheduled for later (a snooze, a backoff) are left for later.

    Args:
        app: the app whose jobs to run (its database and schema).
        queues: the queues to work (default: every queue of the registered tasks, and "default").
        concurrency: jobs at once (default: the worker's, ``WorkerConfig.concurrency``).
        timeout: seconds before giving up (raises ``TimeoutError``).

    Returns:
        A :class:`DrainResult`.

    Raises:
        TimeoutError: the jobs did not finish within *timeout*.
    """
    if queues is None:
        queues = sorted({t.queue for t in app.tasks.values()} | {"default"})
    seen: list[tuple[int, str]] = []

    def on_outcome(job: Job, outcome: Outcome, transition: Transition) -> None:
        kind = _kind(outcome, transition)
        if kind is not None:
            seen.append((job.id, kind))

    with anyio.move_on_after(timeout) as limit:
        async with open_worker(
            app,
            queues=queues,
            concurrency=WorkerConfig().concurrency if concurrency is None else concurrency,
            once=True,
            listen=False,
            poll_interval=0.05,
            promote_interval=0.05,
            retention=None,
        ) as worker:
            worker._executor.on_outcome = on_outcome
            await worker.wait_stopped()
    if limit.cancelled_caught:
        raise TimeoutError(
            f"drain: jobs were still running after {timeout:g}s (they were handed back as available); "
            "a job that snoozes for 0 or never ends keeps a drain busy"
        )
    fresh: dict[int, Job] = {}
    for job_id, _ in seen:
        if job_id not in fresh:
            fresh[job_id] = await app.get_job(job_id)
    buckets: dict[str, list[Job]] = {k: [] for k in ("completed", "retried", "discarded", "snoozed", "cancelled")}
    for job_id, kind in seen:
        buckets[kind].append(fresh[job_id])
    return DrainResult(**{k: tuple(v) for k, v in buckets.items()})


@asynccontextmanager
async def isolated_schema(app: App, *, prefix: str = "nw_test") -> AsyncIterator[App]:
    """Point *app* at a fresh, migrated schema for the block, then drop it and restore the app.

    Tasks stay registered: the same ``app`` object (and the tasks imported from your code) enqueue
    into the isolated schema while the block runs. Blocks on one app must not overlap.

    Args:
        app: the app to isolate (it needs a DSN: ``App(dsn=...)`` or ``$NURSERY_WORKER_DSN``).
        prefix: the start of the schema's name; a random suffix makes it unique.

    Yields:
        *app*, now on the new schema.
    """
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    previous = app.schema
    await app.aclose()  # what the app had opened on its own schema (a fixture's migrate, say)
    app.configure_database(schema=schema)
    try:
        await app.migrate()
        yield app
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await app.driver.drop_schema()
            finally:
                await app.aclose()
                app.configure_database(schema=previous)
