"""Helpers for testing your own tasks, shipped with the package.

* :func:`run_task` calls a task's function directly, with a fake :class:`JobContext` when it
  declares one: no database, no worker.
* :func:`drain` runs every job that is due in the app's database to completion, in-process, and
  says what happened to each attempt.
* :func:`isolated_schema` points an app at a fresh, migrated schema for one test and drops it after,
  so tests run in parallel and in any order.
* :func:`isolated_database` does the same from synchronous code (a plain pytest fixture), on
  PostgreSQL (a throwaway schema) or on a fresh SQLite file; :class:`JobsUnderTest` wraps the
  isolated app with what a test asserts (what was enqueued) and does (drain).
* The pytest plugin (:mod:`nursery_worker.pytest_plugin`, installed with the package) turns these
  into fixtures: ``nursery_worker_jobs`` and friends.

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
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from ._app import App
from ._config import WorkerConfig
from ._context import JobContext
from ._durable import memory_session
from ._models import Job
from ._state import Cancelled, Failed, JobState, Outcome, Released, Snoozed, Succeeded, Transition
from ._task import Task
from ._worker import open_worker

__all__ = [
    "DrainResult",
    "JobsUnderTest",
    "drain",
    "isolated_database",
    "isolated_schema",
    "make_context",
    "run_task",
]


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
    events: Mapping[str, Any] | None = None,
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
        events: payloads by event key for ``context.wait_for_event``, which times out at once
            (raises ``EventTimeout``) for a key not given. The context's durable calls keep their
            steps in memory: a step runs once per context, and a sleep returns at once.

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
    session = memory_session(job_id, attempt, sleep_threshold=0.0, events=events)  # a sleep returns at once
    return JobContext(job=job, worker_id=worker_id, deadline=deadline, app=task.app, _session=session)


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


def _in_own_loop(app: App, *, drop: bool) -> None:
    """Drop the app's schema (if *drop*) and close its engine, on an event loop of a thread of its own.

    The fixture that calls this is synchronous and may run its teardown while the test's event loop
    (asyncio or trio, whichever the test ran on) is still set up in this thread.
    """

    async def finish() -> None:
        try:
            if drop:
                await app.driver.drop_schema()
        finally:
            await app.aclose()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nursery-worker-testing") as pool:
        pool.submit(anyio.run, finish).result()


@contextmanager
def isolated_database(
    app: App,
    *,
    dsn: str | None = None,
    directory: str | Path | None = None,
    prefix: str = "nw_test",
) -> Iterator[App]:
    """Point *app* at a fresh, migrated database for the block, then remove it and restore the app.

    From synchronous code (a plain pytest fixture, usable by sync and async tests alike). With a
    PostgreSQL *dsn*, the app gets a throwaway schema of that database, dropped after the block;
    with none (or ``"sqlite"``), a new SQLite file in *directory*. Tasks stay registered: the same
    ``app`` object, and the tasks imported from your code, enqueue into the isolated database while
    the block runs. Blocks on one app must not overlap.

    Args:
        app: the app to isolate.
        dsn: a PostgreSQL DSN (``postgresql://...``), ``sqlite:///path`` for that file, or None
            (or ``"sqlite"``) for a new SQLite file in *directory*.
        directory: where the SQLite file goes, created if missing (default: a temporary directory,
            removed after).
        prefix: the start of the schema's name (the tables' prefix with SQLite); a random suffix
            makes it unique.

    Yields:
        *app*, now on the isolated database.

    Raises:
        ConfigurationError: *dsn* is not a DSN nursery-worker can use (the app is then unchanged).

    Example::

        @pytest.fixture
        def jobs_app():
            with isolated_database(app, dsn=os.environ.get("TEST_DSN")) as isolated:
                yield isolated
    """
    with ExitStack() as stack:
        if dsn is None or dsn == "sqlite":
            folder = (
                Path(directory) if directory is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            )
            folder.mkdir(parents=True, exist_ok=True)
            dsn = f"sqlite:///{folder.resolve() / 'nursery-worker.sqlite3'}"
        schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
        app.close()  # what the app had opened on its own database (an import-time migrate, say)
        saved = (app._settings, app._driver)
        app.configure_database(dsn=dsn, schema=schema)
        try:
            app.migrate_sync()
            yield app
        finally:
            try:
                app.close()
                _in_own_loop(app, drop=True)
            finally:
                # Back to the app's own database exactly (configure_database cannot say "no DSN").
                with app._driver_lock:
                    app._settings, app._driver = saved


@attrs.frozen
class JobsUnderTest:
    """An app on an isolated database, with what a test asserts about its jobs and runs them with.

    What the ``nursery_worker_jobs`` fixture of the pytest plugin gives a test.

    Attributes:
        app: the isolated app (the same object as your code's ``App``).

    Example::

        async def test_signup_sends_a_welcome(nursery_worker_jobs):
            await sign_up("ada@example.com")
            await nursery_worker_jobs.assert_enqueued(send_welcome, email="ada@example.com")
            result = await nursery_worker_jobs.drain()
            assert len(result.completed) == 1
    """

    app: App

    async def enqueued(
        self,
        task: Task[..., Any] | str | None = None,
        *,
        state: JobState | str | Sequence[JobState | str] | None = None,
        queue: str | None = None,
    ) -> list[Job]:
        """The jobs in the database, oldest first, filtered by every option given.

        Args:
            task: only jobs of this task (the task object or its name).
            state: only jobs in this state, or in one of these.
            queue: only jobs of this queue.

        Returns:
            Every matching job, in the order they were enqueued.
        """
        name = task.name if isinstance(task, Task) else task
        found: list[Job] = []
        before: int | None = None
        while True:
            page = await self.app.list_jobs(state=state, queue=queue, task=name, limit=1000, before_id=before)
            found.extend(page)
            if len(page) < 1000:
                return found[::-1]
            before = page[-1].id

    async def assert_enqueued(self, task: Task[..., Any] | str, /, **args: Any) -> list[Job]:
        """Assert that at least one job of *task* was enqueued (with exactly these *args*, if given).

        Args:
            task: the task (or its name).
            **args: the job's arguments, compared with ``job.args`` as a whole; none: any arguments.

        Returns:
            The matching jobs, oldest first.

        Raises:
            AssertionError: no such job; the message lists the jobs that were enqueued.
        """
        name = task.name if isinstance(task, Task) else task
        jobs = await self.enqueued(name)
        matching = [job for job in jobs if not args or job.args == args]
        if not matching:
            everything = [(job.task, job.args) for job in await self.enqueued()]
            wanted = f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})" if args else name
            raise AssertionError(f"no job {wanted} was enqueued; enqueued: {everything}")
        return matching

    async def assert_nothing_enqueued(self) -> None:
        """Assert that the database holds no job at all.

        Raises:
            AssertionError: there are jobs; the message lists them.
        """
        jobs = await self.enqueued()
        if jobs:
            raise AssertionError(f"expected no jobs, found: {[(job.task, job.args) for job in jobs]}")

    async def drain(
        self,
        *,
        queues: Sequence[str] | str | None = None,
        concurrency: int | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109 - passed on to drain()
    ) -> DrainResult:
        """Run every job that is due now to completion, in this process; see :func:`drain`.

        Returns:
            A :class:`DrainResult`.

        Raises:
            TimeoutError: the jobs did not finish within *timeout*.
        """
        return await drain(self.app, queues=queues, concurrency=concurrency, timeout=timeout)
