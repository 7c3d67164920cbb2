"""How a worker stops: graceful, timed out, hard, cancelled from outside, and its lifecycle hooks."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Awaitable, Callable

import anyio
import pytest

from nursery_worker import App, JobState, Worker, WorkerState, open_worker

from .helpers import Connection, executing_count, fast, wait_until, worker_ids

pytestmark = pytest.mark.anyio


def _worker_in(tb: types.TracebackType | None) -> Worker:
    """The Worker that open_worker created, found in the frames of an exception it raised before yielding."""
    while tb is not None:
        for name in ("worker", "self"):
            candidate = tb.tb_frame.f_locals.get(name)
            if isinstance(candidate, Worker):
                return candidate
        tb = tb.tb_next
    raise AssertionError("no Worker in the traceback")


async def test_leaving_the_block_waits_for_a_short_running_job(app: App) -> None:
    """Leaving the block lets a job that is already running finish, and it ends completed."""
    started = anyio.Event()
    finished: list[int] = []

    @app.task
    async def short() -> None:
        started.set()
        await anyio.sleep(0.3)
        finished.append(1)

    job = await short.defer()
    async with open_worker(app, **fast(shutdown_timeout=10)) as worker:
        await started.wait()
    assert finished == [1]
    done = await app.get_job(job.id)
    assert done.state is JobState.COMPLETED
    assert worker.stats().completed == 1


async def test_long_job_is_cancelled_after_shutdown_timeout_and_released(app: App) -> None:
    """A cooperative job still running at shutdown_timeout is cancelled and written back available, attempt restored."""
    started = anyio.Event()
    cancelled: list[int] = []

    @app.task
    async def long() -> None:
        started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(1)
            raise

    job = await long.defer()
    async with open_worker(app, **fast(shutdown_timeout=0.3)) as worker:
        await started.wait()
        assert (await app.get_job(job.id)).attempt == 1
    assert cancelled == [1]
    back = await app.get_job(job.id)
    assert back.state is JobState.AVAILABLE
    assert back.attempt == 0
    assert back.worker_id is None
    assert back.errors == ()
    assert back.finished_at is None
    stats = worker.stats()
    assert (stats.released, stats.processed, stats.failed) == (1, 0, 0)


async def test_after_stop_no_job_is_executing_and_the_worker_row_is_gone(app: App, db: Connection) -> None:
    """Once stopped, none of the worker's jobs is executing and its row has left the workers table."""
    started = anyio.Event()

    @app.task
    async def quick() -> None:
        pass

    @app.task
    async def long() -> None:
        started.set()
        await anyio.sleep(30)

    await app.defer_many([long.job(), *[quick.job() for _ in range(5)]])
    async with open_worker(app, **fast(shutdown_timeout=0.3)) as worker:
        await started.wait()
        assert await worker_ids(db) == [worker.id]
        assert await executing_count(db, worker.id) >= 1
    assert await executing_count(db) == 0
    assert await worker_ids(db) == []


async def test_hard_stop_cancels_running_jobs_at_once(app: App) -> None:
    """worker.stop(hard=True) cancels running jobs without waiting for shutdown_timeout, and writes them back."""
    started = anyio.Event()

    @app.task
    async def long() -> None:
        started.set()
        await anyio.sleep(60)

    job = await long.defer()
    async with open_worker(app, **fast(shutdown_timeout=60)) as worker:
        await started.wait()
        worker.stop(hard=True)
        with anyio.fail_after(10):  # far below the 60 s a graceful stop would give the job
            await worker.wait_stopped()
        assert worker.state is WorkerState.STOPPED
    back = await app.get_job(job.id)
    assert back.state is JobState.AVAILABLE
    assert back.attempt == 0
    assert back.worker_id is None


async def test_hard_stop_during_a_graceful_stop_ends_the_grace_period(app: App) -> None:
    """A hard stop requested while a graceful stop waits for a job cancels that job without waiting out the grace."""
    started = anyio.Event()

    @app.task
    async def long() -> None:
        started.set()
        await anyio.sleep(60)

    job = await long.defer()
    async with open_worker(app, **fast(shutdown_timeout=60)) as worker:
        await started.wait()
        worker.stop()
        await wait_until(lambda: worker.state is WorkerState.STOPPING)
        worker.stop(hard=True)
        with anyio.fail_after(10):
            await worker.wait_stopped()
    back = await app.get_job(job.id)
    assert back.state is JobState.AVAILABLE
    assert back.attempt == 0


async def test_sync_job_ignoring_cancellation_does_not_hold_up_the_stop(app: App) -> None:
    """A def task blocked in a call that ignores cancellation is abandoned, so the stop ends near shutdown_timeout."""
    entered = threading.Event()
    release = threading.Event()
    returned = threading.Event()

    @app.task
    def stubborn() -> None:
        entered.set()
        release.wait(30)  # blocks like time.sleep(30); cancellation cannot interrupt it
        returned.set()

    job = await stubborn.defer()
    try:
        with anyio.fail_after(0.3 + 5):  # shutdown_timeout plus a margin, far below the 30 s block
            async with open_worker(app, **fast(shutdown_timeout=0.3)) as worker:
                await wait_until(entered.is_set)
        assert not returned.is_set()
        assert worker.state is WorkerState.STOPPED
        back = await app.get_job(job.id)
        assert back.state is JobState.AVAILABLE
        assert back.attempt == 0
    finally:
        release.set()
        await anyio.to_thread.run_sync(returned.wait, 10)


async def test_cancelling_the_enclosing_scope_still_writes_running_jobs_back(app: App, db: Connection) -> None:
    """When the caller's scope is cancelled, running jobs (here cleaning up first) are still written back available."""
    started = anyio.Event()
    cancelled: list[int] = []

    @app.task
    async def long() -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # a short cleanup, as a job closing a resource would do
            cancelled.append(1)
            raise

    jobs = await app.defer_many([long.job() for _ in range(3)])
    with anyio.CancelScope() as outer:
        async with open_worker(app, **fast(shutdown_timeout=60)) as worker:
            await started.wait()
            await wait_until(lambda: worker.stats().running == 3)
            outer.cancel()
            await anyio.sleep(60)
    assert outer.cancelled_caught
    assert cancelled == [1, 1, 1]
    for job in jobs:
        back = await app.get_job(job.id)
        assert (back.state, back.attempt, back.worker_id) == (JobState.AVAILABLE, 0, None)
    assert await worker_ids(db) == []


async def test_cancelling_the_caller_during_a_handed_back_jobs_shielded_cleanup_lets_it_finish(
    app: App, db: Connection
) -> None:
    """A job handed back at a hard stop finishes its shielded cleanup when the caller's scope is cancelled meanwhile."""
    started = anyio.Event()
    cleaning = anyio.Event()
    cleaned: list[int] = []

    @app.task
    async def long() -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                cleaning.set()
                await anyio.sleep(0.3)  # a cleanup that must not be cut short
                cleaned.append(1)
            raise

    job = await long.defer()
    with anyio.CancelScope() as outer:
        async with open_worker(app, **fast(shutdown_timeout=60)) as worker:
            await started.wait()
            worker.stop(hard=True)
            await cleaning.wait()
            outer.cancel()
            await anyio.sleep(60)
    assert outer.cancelled_caught
    assert cleaned == [1]
    back = await app.get_job(job.id)
    assert (back.state, back.attempt, back.worker_id) == (JobState.AVAILABLE, 0, None)
    assert await worker_ids(db) == []


async def test_move_on_after_around_the_worker_still_writes_running_jobs_back(app: App, db: Connection) -> None:
    """A move_on_after deadline around open_worker cancels the worker, and its running job is still written back."""
    started = anyio.Event()

    @app.task
    async def long() -> None:
        started.set()
        await anyio.sleep(60)

    job = await long.defer()
    with anyio.move_on_after(60) as outer:
        async with open_worker(app, **fast(shutdown_timeout=60)):
            await started.wait()
            # The deadline falls once the job runs, however long a loaded machine took to start it.
            outer.deadline = anyio.current_time() + 0.5
            await anyio.sleep(60)
    assert outer.cancelled_caught
    assert started.is_set()
    back = await app.get_job(job.id)
    assert (back.state, back.attempt, back.worker_id) == (JobState.AVAILABLE, 0, None)
    assert await worker_ids(db) == []


async def test_startup_hook_failure_raises_it_and_runs_shutdown_hooks(app: App, db: Connection) -> None:
    """A failing startup hook makes open_worker raise it, leaves the worker in ERROR and runs the shutdown hooks."""
    events: list[str] = []

    @app.on_startup
    async def fail() -> None:
        events.append("startup")
        raise RuntimeError("not ready")

    @app.on_shutdown
    async def cleanup() -> None:
        events.append("shutdown")

    body_ran = False
    with pytest.raises(RuntimeError, match="not ready") as info:
        async with open_worker(app, **fast()):
            body_ran = True
    assert type(info.value) is RuntimeError
    assert not body_ran
    assert events == ["startup", "shutdown"]
    assert _worker_in(info.tb).state is WorkerState.ERROR
    assert await worker_ids(db) == []


async def test_startup_and_shutdown_hooks_run_once_in_order(app: App) -> None:
    """Startup hooks run once in registration order before the body, shutdown hooks once in reverse after it."""
    events: list[str] = []

    def hook(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            events.append(name)

        return run

    app.on_startup(hook("start-1"))
    app.on_startup(hook("start-2"))
    app.on_shutdown(hook("stop-1"))
    app.on_shutdown(hook("stop-2"))
    async with open_worker(app, **fast()):
        assert events == ["start-1", "start-2"]
        await anyio.sleep(0.3)
        assert events == ["start-1", "start-2"]
    assert events == ["start-1", "start-2", "stop-2", "stop-1"]


async def test_failing_shutdown_hook_is_logged_and_the_worker_still_deregisters(
    app: App, db: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A shutdown hook that raises is logged; the other hooks run and the worker still leaves the workers table."""
    caplog.set_level(logging.ERROR, logger="nursery_worker.worker")
    events: list[str] = []

    @app.on_shutdown
    async def runs_last() -> None:
        events.append("runs_last")

    @app.on_shutdown
    async def broken() -> None:
        raise RuntimeError("hook broke")

    async with open_worker(app, **fast()) as worker:
        assert await worker_ids(db) == [worker.id]
    assert events == ["runs_last"]
    assert worker.state is WorkerState.STOPPED
    assert await worker_ids(db) == []
    failures = [r for r in caplog.records if "shutdown hook" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)
