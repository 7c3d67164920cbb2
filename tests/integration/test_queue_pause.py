"""Pausing and resuming queues: stored in the database, honoured by every worker's fetch."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from nursery_worker import App, JobState, QueueInfo, open_worker

from .helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


async def _states(app: App, ids: list[int]) -> set[JobState]:
    return {(await app.get_job(i)).state for i in ids}


async def test_a_paused_queue_is_not_fetched_by_any_worker(app: App) -> None:
    """While a queue is paused, two workers run the other queue's jobs and leave the paused queue's available."""

    @app.task
    async def noop() -> None:
        await anyio.lowlevel.checkpoint()

    assert await app.pause_queue("held") is True
    held = [j.id for j in await app.defer_many([noop.configure(queue="held").job() for _ in range(5)])]
    free = [j.id for j in await app.defer_many([noop.configure(queue="free").job() for _ in range(5)])]
    async with open_worker(app, **fast(queues=["held", "free"])), open_worker(app, **fast(queues="held")):

        async def free_done() -> bool:
            return await _states(app, free) == {JobState.COMPLETED}

        await wait_until(free_done)
        # A third worker that works off everything available now and stops: it finds nothing.
        async with open_worker(app, **fast(queues="held", once=True)) as once:
            await once.wait_stopped()
        assert once.stats().processed == 0
        assert await _states(app, held) == {JobState.AVAILABLE}


async def test_resuming_a_queue_wakes_the_workers_at_once(app: App) -> None:
    """Resuming notifies the workers, which fetch the queue's jobs without waiting for their next poll."""

    @app.task
    async def noop() -> None:
        await anyio.lowlevel.checkpoint()

    await app.pause_queue("held")
    (job,) = await app.defer_many([noop.configure(queue="held").job()])
    async with open_worker(app, **fast(queues="held", poll_interval=60.0)) as worker:
        await wait_until(lambda: worker.state.value == "running")
        assert (await app.get_job(job.id)).state is JobState.AVAILABLE
        assert await app.resume_queue("held") is True
        done = await wait_for_state(app, job.id, JobState.COMPLETED, within=10.0)
    assert done.attempt == 1


async def test_a_job_running_when_its_queue_is_paused_finishes(app: App) -> None:
    """Pausing a queue does not touch a job already executing: it completes normally."""
    gate = anyio.Event()

    @app.task
    async def wait_gate() -> None:
        await gate.wait()

    job = await wait_gate.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.EXECUTING)
        await app.pause_queue("default")
        gate.set()
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.state is JobState.COMPLETED


async def test_pause_and_resume_report_whether_they_changed_anything(app: App) -> None:
    """pause_queue and resume_queue return True only when the flag flips."""
    assert await app.resume_queue("q") is False
    assert await app.pause_queue("q") is True
    assert await app.pause_queue("q") is False
    assert await app.resume_queue("q") is True
    assert await app.resume_queue("q") is False


async def test_list_queues_shows_pause_state_counts_and_oldest_age(app: App) -> None:
    """list_queues has one row per queue with jobs or a pause record: counts by state and the oldest wait."""

    @app.task
    async def noop() -> None:
        await anyio.lowlevel.checkpoint()

    await noop.defer()
    await app.defer_many([noop.configure(queue="later", delay=3600).job()])
    await app.pause_queue("empty")

    queues = {q.name: q for q in await app.list_queues()}

    assert sorted(queues) == ["default", "empty", "later"]
    assert isinstance(queues["default"], QueueInfo)
    assert queues["default"].counts["available"] == 1
    assert queues["default"].counts["completed"] == 0
    age = queues["default"].oldest_available_age
    assert age is not None and 0 <= age < 60
    assert queues["later"].counts["scheduled"] == 1
    assert queues["later"].oldest_available_age is None
    assert queues["empty"].paused and queues["empty"].paused_at is not None
    assert sum(queues["empty"].counts.values()) == 0


async def test_a_bad_queue_name_is_refused(app: App) -> None:
    """pause_queue with an invalid queue name raises ConfigurationError naming it."""
    from nursery_worker import ConfigurationError

    with pytest.raises(ConfigurationError, match="not a valid queue name"):
        await app.pause_queue("no spaces allowed")
