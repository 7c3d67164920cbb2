"""Job control (cancel, retry, unique jobs, queue pause), the same on every engine."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from nursery_worker import App, ConfigurationError, Job, JobNotFound, JobState, JobStateError, open_worker

from ..integration.helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


# --- cancel -------------------------------------------------------------------------------------


async def test_cancelling_a_waiting_job_cancels_it_and_it_never_runs(app: App) -> None:
    """An available or scheduled job is cancelled at once, with a "Cancelled" error, and never runs."""
    ran: list[int] = []

    @app.task
    async def work(n: int) -> None:
        ran.append(n)

    available = await work.defer(n=1)
    scheduled = await work.configure(delay=3600).defer(n=2)
    for job in (available, scheduled):
        result = await app.cancel(job.id)
        assert result.status == "cancelled"
        assert result.job.state is JobState.CANCELLED and result.job.finished_at is not None
        assert [e.type for e in result.job.errors] == ["Cancelled"]
    async with open_worker(app, **fast(once=True)) as worker:
        await worker.wait_stopped()
    assert ran == []


async def test_cancelling_an_executing_job_cancels_its_scope(app: App) -> None:
    """An executing job's cancel is "requested"; its worker cancels its scope and it ends cancelled, not retried."""
    started = anyio.Event()
    cancelled: list[int] = []
    runs: list[int] = []

    @app.task(max_attempts=5, retry=0)
    async def long() -> None:
        runs.append(1)
        started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(1)
            raise

    job = await long.defer()
    async with open_worker(app, **fast(poll_interval=30.0)) as worker:
        with anyio.fail_after(10):
            await started.wait()
        result = await app.cancel(job.id)
        assert result.status == "requested"
        assert result.job.cancel_requested_at is not None and result.job.worker_id == worker.id
        with anyio.fail_after(15):  # by notification: the poll is 30 s
            await wait_until(lambda: cancelled)
        done = await wait_for_state(app, job.id, JobState.CANCELLED)
        await anyio.sleep(0.3)
    assert runs == [1]
    assert (done.attempt, done.worker_id) == (1, None)
    (error,) = done.errors
    assert (error.attempt, error.type) == (1, "Cancelled")


async def test_a_cancel_reaches_a_worker_without_listen_by_polling(app: App) -> None:
    """With ``listen=False`` the worker finds the durable cancel request by polling."""
    started = anyio.Event()
    marker: list[int] = []

    @app.task
    async def long() -> None:
        started.set()
        await anyio.sleep(30)
        marker.append(1)

    job = await long.defer()
    async with open_worker(app, **fast(listen=False)) as worker:
        with anyio.fail_after(10):
            await started.wait()
        assert (await app.cancel(job.id)).status == "requested"
        done = await wait_for_state(app, job.id, JobState.CANCELLED)
        # Counted once the write has returned, which may be a moment after another connection sees it.
        await wait_until(lambda: worker.stats().processed == 1)
        assert worker.stats().cancelled == 1
    assert marker == []
    assert done.errors[-1].type == "Cancelled"


async def test_a_cancel_request_overrides_a_release_at_shutdown(app: App) -> None:
    """A job whose cancel request its worker has not seen ends cancelled, not available, when released at a stop."""
    started = anyio.Event()

    @app.task(max_attempts=5)
    async def long() -> None:
        started.set()
        await anyio.sleep(30)

    job = await long.defer()
    async with open_worker(app, **fast(listen=False, poll_interval=30.0, shutdown_timeout=0.1)):
        with anyio.fail_after(10):
            await started.wait()
        assert (await app.cancel(job.id)).status == "requested"
    final = await app.get_job(job.id)
    assert final.state is JobState.CANCELLED and final.finished_at is not None
    assert [e.type for e in final.errors] == ["Cancelled"]


async def test_cancelling_a_finished_job_changes_nothing(app: App) -> None:
    """Cancelling a completed job reports already_finished and leaves it completed."""

    @app.task
    async def quick() -> None: ...

    job = await quick.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.COMPLETED)
    result = await app.cancel(job.id)
    assert result.status == "already_finished" and result.job.state is JobState.COMPLETED


async def test_cancelling_an_unknown_id_raises_job_not_found(app: App) -> None:
    """``cancel`` of an id that does not exist raises JobNotFound."""
    with pytest.raises(JobNotFound, match="424242"):
        await app.cancel(424242)


# --- retry (the dead-letter path) ---------------------------------------------------------------


async def test_retry_puts_a_discarded_job_back_with_one_more_attempt(app: App) -> None:
    """``app.retry`` makes a discarded job available with its errors kept and room for one more attempt; it runs."""
    calls: list[int] = []

    @app.task(max_attempts=1)
    async def once_broken() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("broken")
        return 7

    job = await once_broken.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.DISCARDED)
        again = await app.retry(job.id)
        assert again.state is JobState.AVAILABLE
        assert again.max_attempts == 2 and again.finished_at is None
        assert [e.message for e in again.errors] == ["broken"]
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert (done.attempt, done.result) == (2, 7)


async def test_retry_of_a_job_that_is_not_finished_is_a_job_state_error(app: App) -> None:
    """``app.retry`` of an available job raises JobStateError and changes nothing."""

    @app.task
    async def waiting() -> None: ...

    job = await waiting.defer()
    with pytest.raises(JobStateError):
        await app.retry(job.id)
    assert (await app.get_job(job.id)).state is JobState.AVAILABLE


# --- unique jobs --------------------------------------------------------------------------------


async def test_a_duplicate_defer_returns_the_holder_and_inserts_nothing(app: App) -> None:
    """A second defer of a unique key returns the same job marked duplicate; other keys and tasks insert."""

    @app.task(unique_key=True)
    async def reindex(table: str) -> None: ...

    @app.task(unique_key=True)
    async def other(table: str) -> None: ...

    first = await reindex.defer(table="orders")
    again = await reindex.defer(table="orders")
    different = await reindex.defer(table="users")
    other_task = await other.defer(table="orders")
    assert not first.duplicate and again.duplicate
    assert again.id == first.id and again.state is JobState.AVAILABLE
    assert len({first.id, different.id, other_task.id}) == 3
    assert len(await app.list_jobs()) == 3


async def test_a_key_is_free_again_once_its_holder_completed(app: App) -> None:
    """With the default states a new job is accepted once the holder completed; with completed in scope it is not."""

    @app.task(unique_key="k")
    async def work() -> None: ...

    first = await work.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, first.id, JobState.COMPLETED)
    second = await work.defer()
    assert not second.duplicate and second.id != first.id
    scope = ["scheduled", "available", "executing", "retryable", "completed"]
    strict = work.configure(unique_key="k2", unique_states=scope)
    held = await strict.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, held.id, JobState.COMPLETED)
    refused = await strict.defer()
    assert refused.duplicate and refused.id == held.id and refused.state is JobState.COMPLETED


async def test_defer_many_returns_duplicates_in_order(app: App) -> None:
    """``defer_many`` returns one job per item, in order, with duplicates (in the database or the call) marked."""

    @app.task(unique_key=True)
    async def work(n: int) -> None: ...

    existing = await work.defer(n=1)
    jobs = await app.defer_many([work.job(n=0), work.job(n=1), work.job(n=0), work.job(n=2)])
    assert [j.duplicate for j in jobs] == [False, True, True, False]
    assert jobs[1].id == existing.id and jobs[2].id == jobs[0].id
    assert [j.args["n"] for j in jobs] == [0, 1, 0, 2]
    assert len(await app.list_jobs()) == 3


async def test_concurrent_defers_of_one_key_insert_one_job(app: App, make_app: Callable[..., App]) -> None:
    """Twenty defers of one key racing from tasks, threads and a second App insert exactly one job."""
    other = make_app()

    @app.task(name="race.work", unique_key="race")
    async def work(n: int) -> None: ...

    @other.task(name="race.work", unique_key="race")
    async def same_work(n: int) -> None: ...

    results: list[Job] = []

    async def from_task(n: int) -> None:
        results.append(await work.defer(n=n))

    def from_thread(n: int) -> None:
        results.append(work.defer_sync(n=n))

    async def from_other(n: int) -> None:
        results.append(await same_work.defer(n=n))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(from_task, n)
            tg.start_soon(anyio.to_thread.run_sync, from_thread, 100 + n)
        for n in range(4):
            tg.start_soon(from_other, 200 + n)
    assert len(results) == 20
    assert len({j.id for j in results}) == 1
    assert sum(not j.duplicate for j in results) == 1
    assert len(await app.list_jobs()) == 1


async def test_retry_of_a_unique_job_whose_key_is_taken_is_a_job_state_error(app: App) -> None:
    """``app.retry`` of a cancelled unique job while a twin holds its key raises JobStateError."""

    @app.task(unique_key="only-one")
    async def work() -> None: ...

    first = await work.defer()
    await app.cancel(first.id)
    twin = await work.defer()
    assert not twin.duplicate
    with pytest.raises(JobStateError):
        await app.retry(first.id)
    assert (await app.get_job(first.id)).state is JobState.CANCELLED


# --- queue pause ----------------------------------------------------------------------------------


async def test_a_paused_queue_is_not_fetched_until_resumed(app: App) -> None:
    """Jobs of a paused queue wait while other queues run; resuming wakes the worker well before its poll."""

    @app.task
    async def noop() -> None: ...

    assert await app.pause_queue("slow") is True
    assert await app.pause_queue("slow") is False
    held = await noop.configure(queue="slow").defer()
    free = await noop.configure(queue="fast").defer()
    async with open_worker(app, **fast(queues=["slow", "fast"], poll_interval=30.0)):
        await wait_for_state(app, free.id, JobState.COMPLETED)
        await anyio.sleep(0.3)
        assert (await app.get_job(held.id)).state is JobState.AVAILABLE
        (info,) = [q for q in await app.list_queues() if q.name == "slow"]
        assert info.paused and info.paused_at is not None and info.counts["available"] == 1
        assert info.oldest_available_age is not None and info.oldest_available_age >= 0.3
        assert await app.resume_queue("slow") is True
        with anyio.fail_after(15):  # by notification: the poll is 30 s
            await wait_for_state(app, held.id, JobState.COMPLETED)
    assert await app.resume_queue("slow") is False
    queues = {q.name: q for q in await app.list_queues()}
    assert not queues["slow"].paused and queues["slow"].paused_at is None
    assert queues["fast"].counts == {**{s.value: 0 for s in JobState}, "completed": 1}
    assert queues["slow"].oldest_available_age is None


# --- what an engine cannot do is refused ----------------------------------------------------------


async def test_a_connection_of_the_other_engine_is_refused(app: App, engine: str, tmp_path: object) -> None:
    """``defer(connection=...)`` with another engine's connection raises a clear error and inserts nothing."""

    @app.task
    async def work() -> None: ...

    if engine == "sqlite":
        import psycopg

        from ..conftest import TEST_DSN

        with psycopg.connect(TEST_DSN) as conn, pytest.raises(ConfigurationError, match="PostgreSQL"):
            work.configure(connection=conn).defer_sync()
    else:
        with sqlite3.connect(":memory:") as conn, pytest.raises(TypeError, match="psycopg"):
            work.configure(connection=conn).defer_sync()
    assert await app.list_jobs() == []
