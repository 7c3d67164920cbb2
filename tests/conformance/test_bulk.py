"""Bulk cancel, retry and delete by filter, and deleting one job, the same on every engine."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from nursery_worker import App, JobFilter, JobNotFound, JobState, JobStateError, open_worker

from ..integration.helpers import fast, wait_for_state, wait_until
from .conftest import raw_execute

pytestmark = pytest.mark.anyio


def _noop_task(app: App, queue: str = "default") -> object:
    @app.task(name=f"work_{queue}", queue=queue)
    async def work(n: int) -> None:
        pass

    return work


async def _states(app: App, ids: list[int]) -> list[JobState]:
    return [(await app.get_job(i)).state for i in ids]


async def test_count_jobs_counts_what_every_field_of_the_filter_matches(app: App) -> None:
    """count_jobs narrows by state, queue, task and id range together."""
    emails = _noop_task(app, "emails")
    other = _noop_task(app, "default")
    mail = [await emails.defer(n=i) for i in range(4)]  # type: ignore[attr-defined]
    await other.defer(n=9)  # type: ignore[attr-defined]
    await app.cancel(mail[0].id)
    assert await app.count_jobs(JobFilter()) == 5
    assert await app.count_jobs(JobFilter(queue="emails")) == 4
    assert await app.count_jobs(JobFilter(states="available", queue="emails")) == 3
    assert await app.count_jobs(JobFilter(task="work_default")) == 1
    assert await app.count_jobs(JobFilter(queue="emails", min_id=mail[1].id, max_id=mail[2].id)) == 2
    assert await app.count_jobs(JobFilter(states=["cancelled", "available"], queue="emails")) == 4


async def test_older_than_compares_inserted_at_with_the_database_clock(app: App) -> None:
    """Jobs inserted just now match older_than=0 and not older_than of an hour."""
    work = _noop_task(app)
    await work.defer(n=1)  # type: ignore[attr-defined]
    assert await app.count_jobs(JobFilter(older_than=0)) == 1
    assert await app.count_jobs(JobFilter(older_than=3600)) == 0


async def test_bulk_cancel_cancels_the_matching_jobs_in_chunks_and_reports_progress(app: App) -> None:
    """Every matching waiting job is cancelled, a chunk at a time; jobs outside the filter are untouched."""
    emails = _noop_task(app, "emails")
    other = _noop_task(app, "default")
    mail = await app.defer_many([emails.job(n=i) for i in range(7)])  # type: ignore[attr-defined]
    kept = await other.defer(n=0)  # type: ignore[attr-defined]
    chunks: list[int] = []
    result = await app.bulk_cancel(JobFilter(states="available", queue="emails"), chunk_size=3, progress=chunks.append)
    assert (result.matched, result.changed, result.requested, result.skipped) == (7, 7, 0, 0)
    assert chunks == [3, 3, 1]
    assert set(await _states(app, [j.id for j in mail])) == {JobState.CANCELLED}
    assert (await app.get_job(kept.id)).state is JobState.AVAILABLE


async def test_bulk_cancel_skips_a_job_that_changed_state_after_the_count(app: App) -> None:
    """A job that left the filter's states between the count and its chunk keeps its new state."""
    work = _noop_task(app)
    first, second = await app.defer_many([work.job(n=1), work.job(n=2)])  # type: ignore[attr-defined]

    def meanwhile(_: int) -> None:
        # Another actor moves the second job to scheduled after the first chunk.
        raw_execute(
            app,
            "UPDATE {s}.jobs SET state = 'scheduled' WHERE id = %s",
            "UPDATE {p}jobs SET state = 'scheduled' WHERE id = ?",
            (second.id,),
        )

    result = await app.bulk_cancel(JobFilter(states="available"), chunk_size=1, progress=meanwhile)
    assert (result.matched, result.changed, result.skipped) == (2, 1, 1)
    assert await _states(app, [first.id, second.id]) == [JobState.CANCELLED, JobState.SCHEDULED]


async def test_bulk_cancel_leaves_jobs_deferred_after_the_count(app: App) -> None:
    """Only the jobs counted at the start are acted on: one deferred during the run stays available."""
    work = _noop_task(app)
    await app.defer_many([work.job(n=1), work.job(n=2)])  # type: ignore[attr-defined]
    late: list[int] = []

    def meanwhile(_: int) -> None:
        if not late:
            late.append(app.defer_many_sync([work.job(n=3)])[0].id)  # type: ignore[attr-defined]

    result = await app.bulk_cancel(JobFilter(states="available"), chunk_size=1, progress=meanwhile)
    assert (result.matched, result.changed) == (2, 2)
    assert (await app.get_job(late[0])).state is JobState.AVAILABLE


async def test_bulk_cancel_of_an_executing_job_cancels_its_scope(app: App) -> None:
    """An executing job matched by the filter gets a cancel request, and its worker cancels its scope."""
    started = anyio.Event()
    cancelled: list[int] = []

    @app.task(max_attempts=5, retry=0)
    async def long() -> None:
        started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(1)
            raise

    job = await long.defer()
    async with open_worker(app, **fast()):
        with anyio.fail_after(10):
            await started.wait()
        result = await app.bulk_cancel(JobFilter(task=long.name))
        assert (result.matched, result.changed, result.requested) == (1, 0, 1)
        await wait_until(lambda: cancelled)
        await wait_for_state(app, job.id, JobState.CANCELLED)


async def test_bulk_cancel_refuses_a_finished_state(app: App) -> None:
    """Asking to cancel completed jobs is refused with the reason, before anything is read."""
    with pytest.raises(JobStateError, match="cannot cancel completed jobs: a finished job cannot be cancelled"):
        await app.bulk_cancel(JobFilter(states="completed"))


async def test_bulk_retry_retries_the_matching_cancelled_and_discarded_jobs(app: App) -> None:
    """Cancelled jobs of the filter become available again; an available one is not touched."""
    work = _noop_task(app)
    jobs = await app.defer_many([work.job(n=i) for i in range(3)])  # type: ignore[attr-defined]
    for job in jobs[:2]:
        await app.cancel(job.id)
    result = await app.bulk_retry(JobFilter(task="work_default"))
    assert (result.matched, result.changed, result.skipped) == (2, 2, 0)
    assert set(await _states(app, [j.id for j in jobs])) == {JobState.AVAILABLE}


async def test_bulk_retry_skips_a_job_whose_unique_key_is_held(app: App) -> None:
    """A cancelled unique job whose key another queued job holds is skipped, the rest retried."""

    @app.task(unique_key=True)
    async def once(key: str) -> None:
        pass

    first = await once.defer(key="a")
    await app.cancel(first.id)
    await once.defer(key="a")  # holds the key now
    other = await once.defer(key="b")
    await app.cancel(other.id)
    result = await app.bulk_retry(JobFilter(states="cancelled"))
    assert (result.matched, result.changed, result.skipped) == (2, 1, 1)
    assert await _states(app, [first.id, other.id]) == [JobState.CANCELLED, JobState.AVAILABLE]


async def test_bulk_retry_refuses_a_queued_state(app: App) -> None:
    """Asking to retry available jobs is refused, naming the states that can be retried."""
    with pytest.raises(JobStateError, match=r"cannot retry available jobs.*discarded, cancelled"):
        await app.bulk_retry(JobFilter(states="available"))


async def test_bulk_delete_deletes_the_matching_jobs_and_never_an_executing_one(app: App) -> None:
    """Without states, bulk_delete takes every state but executing: a running job survives it."""
    started = anyio.Event()
    release = anyio.Event()

    @app.task
    async def hold() -> None:
        started.set()
        await release.wait()

    running = await hold.defer()
    async with open_worker(app, **fast()):
        with anyio.fail_after(10):
            await started.wait()
        waiting = await app.defer_many([hold.configure(queue="parked").job() for _ in range(3)])
        result = await app.bulk_delete(JobFilter(min_id=waiting[0].id))
        assert (result.matched, result.changed) == (3, 3)
        for job in waiting:
            with pytest.raises(JobNotFound):
                await app.get_job(job.id)
        result = await app.bulk_delete(JobFilter(task=hold.name))
        assert result.matched == 0
        assert (await app.get_job(running.id)).state is JobState.EXECUTING
        release.set()
        await wait_for_state(app, running.id, JobState.COMPLETED)


async def test_bulk_delete_refuses_the_executing_state_and_says_why(app: App) -> None:
    """Naming the executing state in a delete is refused with the reason and the fix."""
    with pytest.raises(JobStateError, match=r"executing jobs cannot be deleted.*cancel them first"):
        await app.bulk_delete(JobFilter(states="executing"))


async def test_delete_job_deletes_one_job_and_returns_it(app: App) -> None:
    """delete_job removes a waiting job and returns it as it was."""
    work = _noop_task(app)
    job = await work.defer(n=1)  # type: ignore[attr-defined]
    deleted = await app.delete_job(job.id)
    assert (deleted.id, deleted.state) == (job.id, JobState.AVAILABLE)
    with pytest.raises(JobNotFound):
        await app.get_job(job.id)
    with pytest.raises(JobNotFound):
        await app.delete_job(job.id)


async def test_delete_job_refuses_an_executing_job(app: App) -> None:
    """An executing job is not deleted; the error says to cancel it first."""
    started = anyio.Event()
    release = anyio.Event()

    @app.task
    async def hold() -> None:
        started.set()
        await release.wait()

    job = await hold.defer()
    async with open_worker(app, **fast()):
        with anyio.fail_after(10):
            await started.wait()
        with pytest.raises(JobStateError, match=f"job {job.id} is executing and cannot be deleted.*cancel it first"):
            await app.delete_job(job.id)
        release.set()
        await wait_for_state(app, job.id, JobState.COMPLETED)


async def test_a_sync_twin_refuses_to_run_inside_an_event_loop(app: App) -> None:
    """count_jobs_sync inside a running loop raises instead of blocking it, naming the async method."""
    with pytest.raises(RuntimeError, match="await the async method"):
        app.count_jobs_sync(JobFilter())


def test_the_sync_twins_count_cancel_and_delete(app: App, make_app: Callable[..., App]) -> None:
    """count_jobs_sync, bulk_cancel_sync, bulk_retry_sync, bulk_delete_sync and delete_job_sync work
    from synchronous code."""
    work = _noop_task(app)
    jobs = app.defer_many_sync([work.job(n=i) for i in range(3)])  # type: ignore[attr-defined]
    assert app.count_jobs_sync(JobFilter(states="available")) == 3
    assert app.bulk_cancel_sync(JobFilter(max_id=jobs[1].id)).changed == 2
    assert app.bulk_retry_sync(JobFilter(min_id=jobs[1].id)).changed == 1
    assert app.delete_job_sync(jobs[2].id).id == jobs[2].id
    assert app.bulk_delete_sync(JobFilter()).changed == 2
    assert app.count_jobs_sync(JobFilter()) == 0
