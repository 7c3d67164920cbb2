"""Enqueueing and inspecting jobs, the same on every engine."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from nursery_worker import App, JobNotFound, JobState, open_worker

from ..integration.helpers import fast, wait_for_state

pytestmark = pytest.mark.anyio


async def test_defer_returns_an_available_job_with_aware_utc_times(app: App) -> None:
    """A deferred job is available at once, with timezone-aware database times, and reads back the same."""

    @app.task(queue="mail", priority=3, max_attempts=4)
    async def send(to: str, n: int = 1) -> None: ...

    job = await send.defer(to="ada@example.com")
    assert job.state is JobState.AVAILABLE
    assert (job.queue, job.priority, job.max_attempts, job.attempt) == ("mail", 3, 4, 0)
    assert job.scheduled_at.utcoffset() == dt.timedelta(0)
    assert job.inserted_at is not None and job.inserted_at.utcoffset() == dt.timedelta(0)
    assert abs((job.inserted_at - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    stored = await app.get_job(job.id)
    assert stored.args == {"to": "ada@example.com"}
    assert (stored.id, stored.state, stored.scheduled_at, stored.inserted_at) == (
        job.id,
        JobState.AVAILABLE,
        job.scheduled_at,
        job.inserted_at,
    )
    assert (stored.attempted_at, stored.finished_at, stored.worker_id, stored.errors) == (None, None, None, ())


async def test_delay_schedules_the_job_that_many_seconds_after_its_insert(app: App) -> None:
    """``delay=90`` makes a scheduled job due exactly 90 s after its insert time, by the database's clock."""

    @app.task
    async def later() -> None: ...

    job = await later.configure(delay=90).defer()
    assert job.state is JobState.SCHEDULED
    assert job.inserted_at is not None
    assert job.scheduled_at - job.inserted_at == dt.timedelta(seconds=90)
    assert (await app.get_job(job.id)).scheduled_at == job.scheduled_at


async def test_scheduled_at_in_the_past_is_available_and_in_the_future_scheduled(app: App) -> None:
    """An aware ``scheduled_at`` is kept to the microsecond; a past one is available at once, a future one scheduled."""

    @app.task
    async def at() -> None: ...

    past = dt.datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=dt.UTC)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=2, microseconds=7)
    early = await at.configure(scheduled_at=past).defer()
    late = await at.configure(scheduled_at=future).defer()
    assert early.state is JobState.AVAILABLE and late.state is JobState.SCHEDULED
    assert (await app.get_job(early.id)).scheduled_at == past
    assert (await app.get_job(late.id)).scheduled_at == future


async def test_defer_many_inserts_every_job_in_order(app: App) -> None:
    """``defer_many`` returns one job per spec, in order, with increasing ids, each stored as returned."""

    @app.task
    async def item(n: int) -> None: ...

    specs = [
        item.configure(delay=60).job(n=i) if i % 7 == 0 else item.configure(queue=f"q{i % 3}").job(n=i)
        for i in range(300)
    ]
    jobs = await app.defer_many(specs)
    assert [j.args["n"] for j in jobs] == list(range(300))
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    assert len({j.id for j in jobs}) == 300
    for i in (0, 1, 123, 299):
        stored = await app.get_job(jobs[i].id)
        assert (stored.args, stored.state, stored.queue) == ({"n": i}, jobs[i].state, jobs[i].queue)
        assert stored.scheduled_at == jobs[i].scheduled_at and stored.inserted_at == jobs[i].inserted_at
    assert {j.state for j in jobs if j.args["n"] % 7 == 0} == {JobState.SCHEDULED}
    assert {j.state for j in jobs if j.args["n"] % 7} == {JobState.AVAILABLE}
    assert await app.defer_many([]) == []


async def test_get_job_of_an_unknown_id_raises_job_not_found(app: App) -> None:
    """``get_job`` of an id that never existed raises JobNotFound."""
    with pytest.raises(JobNotFound):
        await app.get_job(987654321)


async def test_an_id_beyond_64_bits_is_simply_not_found(app: App) -> None:
    """``get_job``, ``cancel`` and ``retry`` of an id no row can have raise JobNotFound; paging past it lists all."""
    job = await app.defer_many([app.job_by_name("t")])
    for huge in (2**70, -(2**70)):
        for call in (app.get_job, app.cancel, app.retry):
            with pytest.raises(JobNotFound):
                await call(huge)
    assert [j.id for j in await app.list_jobs(before_id=2**70)] == [job[0].id]
    assert await app.list_jobs(before_id=-(2**70)) == []


async def test_list_jobs_filters_and_pages_newest_first(app: App) -> None:
    """``list_jobs`` filters by state, queue and task, newest first, and pages with limit and before_id."""

    @app.task(queue="a")
    async def one(n: int) -> None: ...

    @app.task(queue="b")
    async def two(n: int) -> None: ...

    ones = [await one.defer(n=i) for i in range(3)]
    twos = [await two.defer(n=i) for i in range(2)]
    await app.cancel(ones[0].id)
    assert [j.id for j in await app.list_jobs()] == [j.id for j in reversed(ones + twos)]
    assert [j.id for j in await app.list_jobs(queue="b")] == [twos[1].id, twos[0].id]
    assert [j.id for j in await app.list_jobs(task=one.name, state="available")] == [ones[2].id, ones[1].id]
    assert [j.id for j in await app.list_jobs(state=["cancelled", "available"], queue="a")] == [
        ones[2].id,
        ones[1].id,
        ones[0].id,
    ]
    page = await app.list_jobs(limit=2)
    rest = await app.list_jobs(limit=10, before_id=page[-1].id)
    assert [j.id for j in page + rest] == [j.id for j in reversed(ones + twos)]


async def test_ids_are_never_reused_after_a_prune(app: App) -> None:
    """A job deferred after every job was pruned gets a new id, higher than any before."""

    @app.task
    async def noop() -> None: ...

    first = await noop.defer()
    await app.cancel(first.id)
    assert await app.prune(older_than=0) == 1
    assert (await noop.defer()).id > first.id


async def test_defer_sync_from_a_thread_wakes_an_idle_worker_at_once(app: App) -> None:
    """A job deferred with ``defer_sync`` from another thread is picked up by an idle worker well before its poll."""
    ran = anyio.Event()
    ran_at: list[float] = []

    @app.task
    async def ping() -> None:
        ran_at.append(time.perf_counter())
        ran.set()

    async with open_worker(app, **fast(poll_interval=30.0)):
        await anyio.sleep(0.3)  # the worker has fetched once and is idle
        deferred_at = time.perf_counter()
        thread_ids: list[int] = []

        def produce() -> None:
            thread_ids.append(threading.get_ident())
            ping.defer_sync()

        await anyio.to_thread.run_sync(produce)
        with anyio.fail_after(20):
            await ran.wait()
    assert thread_ids[0] != threading.get_ident()
    assert ran_at[0] - deferred_at < 15.0  # well before the 30 s poll


async def test_a_job_deferred_by_another_app_on_the_same_database_is_run(
    app: App, make_app: Callable[..., App]
) -> None:
    """A producer with its own App (its own connections) enqueues a job that the worker's App runs, soon."""
    producer = make_app()
    done: list[int] = []

    @app.task(name="shared.job")
    async def shared(n: int) -> None:
        done.append(n)

    async with open_worker(app, **fast(poll_interval=30.0)):
        await anyio.sleep(0.3)
        (job,) = await producer.defer_many([producer.job_by_name("shared.job", {"n": 5})])
        completed = await wait_for_state(app, job.id, JobState.COMPLETED, within=5)
    assert done == [5]
    assert completed.attempt == 1
