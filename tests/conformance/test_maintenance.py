"""Guarded writes, heartbeats, rescue, promotion, pruning and worker status, the same on every engine.

These drive the driver interface directly where a worker would (a claim, a late write), with the
worker's own periodic services (``run_once``), and with a running worker.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

import anyio
import pytest

from nursery_worker import App, JobState, WorkerState, open_worker
from nursery_worker._maintenance import Heartbeat, Promoter, Pruner, Rescuer
from nursery_worker._models import Completion, WorkerInfo
from nursery_worker._state import ErrorInfo, Transition

from ..integration.helpers import fast, wait_for_state, wait_until
from .conftest import raw_execute

pytestmark = pytest.mark.anyio

_COMPLETED = Transition(state=JobState.COMPLETED)
_RELEASED = Transition(state=JobState.AVAILABLE, give_back_attempt=True)


def _info(worker_id: str) -> WorkerInfo:
    return WorkerInfo(id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), queues=("default",), concurrency=1)


async def _claim(app: App, worker_id: str, attempt: int = 1) -> tuple[int, dt.datetime | None]:
    """Claim the one available job for *worker_id* with the driver's fetch; return its id and lease."""
    (job,) = await app.driver.fetch_jobs(worker_id=worker_id, queues=["default"], limit=1)
    assert (job.state, job.attempt, job.worker_id) == (JobState.EXECUTING, attempt, worker_id)
    assert job.attempted_at is not None
    return job.id, job.attempted_at


async def _finish(app: App, worker_id: str, job_id: int, attempt: int, lease: dt.datetime | None, t: Transition) -> int:
    completion = Completion(job_id=job_id, attempt=attempt, attempted_at=lease, transition=t)
    return len(await app.driver.finish_jobs(worker_id=worker_id, completions=[completion], error_cap=20))


# --- guarded writes -----------------------------------------------------------------------------


async def test_a_claim_takes_available_jobs_once(app: App) -> None:
    """A fetch claims at most its limit, stamps worker and lease, and a second fetch never gets the same job."""
    await app.defer_many([app.job_by_name("anything", {"n": i}) for i in range(3)])
    first = await app.driver.fetch_jobs(worker_id="w-1", queues=["default"], limit=2)
    second = await app.driver.fetch_jobs(worker_id="w-2", queues=["default", "other"], limit=5)
    assert len(first) == 2 and len(second) == 1
    assert {j.id for j in first}.isdisjoint(j.id for j in second)
    assert all(j.worker_id == "w-1" and j.attempt == 1 and j.attempted_at is not None for j in first)
    assert await app.driver.fetch_jobs(worker_id="w-3", queues=["default"], limit=5) == []


async def test_a_write_with_a_wrong_attempt_worker_or_lease_changes_nothing(app: App) -> None:
    """A finish guarded by another attempt, another worker or another lease is a no-op; the right one applies."""
    await app.defer_many([app.job_by_name("anything")])
    job_id, lease = await _claim(app, "w-1")
    failing = Transition(state=JobState.RETRYABLE, delay=0.0, error=ErrorInfo(type="X", message="late"))
    assert await _finish(app, "w-1", job_id, 2, lease, _COMPLETED) == 0
    assert await _finish(app, "w-1", job_id, 0, lease, failing) == 0
    assert await _finish(app, "w-2", job_id, 1, lease, _COMPLETED) == 0
    assert lease is not None
    assert await _finish(app, "w-1", job_id, 1, lease - dt.timedelta(microseconds=1), _COMPLETED) == 0
    job = await app.get_job(job_id)
    assert (job.state, job.attempt, job.worker_id, job.errors) == (JobState.EXECUTING, 1, "w-1", ())
    assert await _finish(app, "w-1", job_id, 1, lease, _COMPLETED) == 1
    assert await _finish(app, "w-1", job_id, 1, lease, _RELEASED) == 0
    assert (await app.get_job(job_id)).state is JobState.COMPLETED


async def test_a_stale_write_of_a_given_back_claim_misses_the_same_workers_reclaim(app: App) -> None:
    """After a hand-back and a re-claim by the same worker (same attempt number), only the new lease can finish it."""
    await app.defer_many([app.job_by_name("anything")])
    job_id, first = await _claim(app, "w-1")
    assert await _finish(app, "w-1", job_id, 1, first, _RELEASED) == 1
    again_id, second = await _claim(app, "w-1")  # at once: within the same millisecond, on a fast machine
    assert again_id == job_id and second != first
    assert await _finish(app, "w-1", job_id, 1, first, _COMPLETED) == 0
    assert (await app.get_job(job_id)).state is JobState.EXECUTING
    assert await _finish(app, "w-1", job_id, 1, second, _COMPLETED) == 1


async def test_a_batched_finish_tells_which_completions_took_effect(app: App) -> None:
    """finish_jobs returns the positions of the completions whose guard held, and only those changed their rows."""
    await app.defer_many([app.job_by_name("anything", {"n": n}) for n in range(3)])
    claimed = await app.driver.fetch_jobs(worker_id="w-1", queues=["default"], limit=3)
    late = Completion(job_id=claimed[1].id, attempt=2, attempted_at=claimed[1].attempted_at, transition=_COMPLETED)
    batch = [
        Completion(job_id=claimed[0].id, attempt=1, attempted_at=claimed[0].attempted_at, transition=_COMPLETED),
        late,
        Completion(job_id=claimed[2].id, attempt=1, attempted_at=claimed[2].attempted_at, transition=_RELEASED),
    ]
    assert await app.driver.finish_jobs(worker_id="w-1", completions=batch, error_cap=20) == [0, 2]
    states = [(await app.get_job(j.id)).state for j in claimed]
    assert states == [JobState.COMPLETED, JobState.EXECUTING, JobState.AVAILABLE]
    assert await app.driver.finish_jobs(worker_id="w-1", completions=batch, error_cap=20) == []


async def test_a_late_completion_after_a_rescue_is_a_no_op(app: App) -> None:
    """A running job rescued from its worker keeps what the rescue wrote when the attempt returns later."""
    started = anyio.Event()
    release = anyio.Event()

    @app.task(max_attempts=1)
    async def held() -> None:
        started.set()
        await release.wait()

    job = await held.defer()
    async with open_worker(app, **fast(heartbeat_interval=60, rescue_after=120, reap_interval=60)) as worker:
        with anyio.fail_after(10):
            await started.wait()
        await app.driver.deregister_worker(worker.id)  # its peers now see it as dead
        assert (await Rescuer(app.driver, "peer", rescue_after=120).run_once()).discarded == 1
        release.set()
        # The worker counts its late completion as ignored, not as completed: it took no effect.
        stats = await wait_until(lambda: (s := worker.stats()).ignored == 1 and s)
        assert (stats.processed, stats.completed, stats.failed) == (0, 0, 0)
    after = await app.get_job(job.id)
    assert (after.state, after.attempt, [e.type for e in after.errors]) == (JobState.DISCARDED, 1, ["WorkerLost"])
    assert worker.stats().ignored == 1 and worker.stats().completed == 0


# --- rescue ---------------------------------------------------------------------------------------


async def test_rescue_makes_a_dead_workers_job_retryable_or_discarded(app: App) -> None:
    """A job executing on a worker with no row is rescued: retryable with WorkerLost, or discarded when out of tries."""
    await app.defer_many(
        [app.job_by_name("t", {"n": 1}, max_attempts=5), app.job_by_name("t", {"n": 2}, max_attempts=1)]
    )
    claimed = await app.driver.fetch_jobs(worker_id="ghost", queues=["default"], limit=2)
    result = await Rescuer(app.driver, "rescuer-1", rescue_after=1).run_once()
    assert (result.retryable, result.discarded, result.rescued) == (1, 1, 2)
    by_n = {j.args["n"]: await app.get_job(j.id) for j in claimed}
    assert by_n[1].state is JobState.RETRYABLE and by_n[2].state is JobState.DISCARDED
    for job in by_n.values():
        (error,) = job.errors
        assert (error.type, error.attempt) == ("WorkerLost", 1)
        assert "ghost" in error.message and "rescuer-1" in error.message
        assert job.worker_id is None
    assert by_n[2].finished_at is not None and by_n[1].finished_at is None


async def test_rescue_leaves_live_workers_alone_and_removes_stale_rows(app: App) -> None:
    """A worker beating recently keeps its jobs; one silent longer than rescue_after loses them and its row."""
    await app.defer_many([app.job_by_name("t", {"n": i}) for i in range(2)])
    await app.driver.register_worker(_info("live"))
    await app.driver.register_worker(_info("stale"))
    (live_job,) = await app.driver.fetch_jobs(worker_id="live", queues=["default"], limit=1)
    (stale_job,) = await app.driver.fetch_jobs(worker_id="stale", queues=["default"], limit=1)
    await anyio.sleep(1.5)
    assert await Heartbeat(app.driver, _info("live")).run_once() is True
    result = await Rescuer(app.driver, "peer", rescue_after=1.0).run_once()
    assert (result.retryable, result.workers_removed) == (1, 1)
    assert (await app.get_job(live_job.id)).state is JobState.EXECUTING
    assert (await app.get_job(stale_job.id)).state is JobState.RETRYABLE
    assert [w.id for w in await app.driver.list_workers()] == ["live"]


async def test_a_rescued_job_with_a_cancel_request_ends_cancelled(app: App) -> None:
    """A dead worker's job whose cancel was requested is rescued as cancelled, not retryable."""
    await app.defer_many([app.job_by_name("t", max_attempts=5)])
    (job,) = await app.driver.fetch_jobs(worker_id="ghost", queues=["default"], limit=1)
    assert (await app.cancel(job.id)).status == "requested"
    result = await Rescuer(app.driver, "peer", rescue_after=1).run_once()
    assert (result.cancelled, result.retryable, result.discarded) == (1, 0, 0)
    final = await app.get_job(job.id)
    assert final.state is JobState.CANCELLED and final.finished_at is not None
    assert final.worker_id is None and final.errors[-1].type == "WorkerLost"


async def test_a_running_worker_rescues_a_dead_peers_job_and_runs_it(app: App) -> None:
    """A worker's reaper rescues a job claimed by a worker that died, and runs it again."""
    ran: list[int] = []

    @app.task(name="orphan", retry=0)
    async def orphan(n: int) -> None:
        ran.append(n)

    await orphan.defer(n=9)
    (job,) = await app.driver.fetch_jobs(worker_id="dead-peer", queues=["default"], limit=1)
    async with open_worker(app, **fast(rescue_after=0.5)):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert ran == [9]
    assert done.attempt == 2 and [e.type for e in done.errors] == ["WorkerLost"]


async def test_a_heartbeat_re_registers_a_vanished_row(app: App) -> None:
    """A heartbeat whose row was removed (declared dead) puts it back and returns False; then True again."""
    info = _info("w-back")
    await app.driver.register_worker(info)
    assert await app.driver.heartbeat(info) is True
    await app.driver.deregister_worker(info.id)
    assert await app.driver.heartbeat(info) is False
    assert [w.id for w in await app.driver.list_workers()] == ["w-back"]
    assert await app.driver.heartbeat(info) is True


# --- promotion and pruning ------------------------------------------------------------------------


async def test_the_promoter_makes_due_jobs_available_and_leaves_future_ones(app: App) -> None:
    """``promote_due`` moves due scheduled jobs to available and leaves the ones not yet due."""

    @app.task
    async def later() -> None: ...

    soon = await later.configure(delay=3600).defer()
    far = await later.configure(delay=3600).defer()
    assert await Promoter(app.driver).run_once() == 0
    # The first job falls due: its time is moved an hour back by the database's own clock.
    raw_execute(
        app,
        "UPDATE {s}.jobs SET scheduled_at = scheduled_at - interval '2 hours' WHERE id = %s",
        "UPDATE {p}jobs SET scheduled_at = scheduled_at - 7200000000 WHERE id = ?",
        (soon.id,),
    )
    assert await Promoter(app.driver).run_once() == 1
    assert (await app.get_job(soon.id)).state is JobState.AVAILABLE
    assert (await app.get_job(far.id)).state is JobState.SCHEDULED


async def test_prune_deletes_only_finished_jobs_older_than_the_age(app: App) -> None:
    """``prune`` deletes finished jobs of the given states finished before the age, and nothing else."""

    @app.task
    async def noop() -> None: ...

    waiting = await noop.defer()
    old_cancelled = await noop.defer()
    old_other = await noop.defer()
    await app.cancel(old_cancelled.id)
    await app.cancel(old_other.id)
    # The two finished two hours ago, by the database's own clock.
    for old in (old_cancelled, old_other):
        raw_execute(
            app,
            "UPDATE {s}.jobs SET finished_at = finished_at - interval '2 hours' WHERE id = %s",
            "UPDATE {p}jobs SET finished_at = finished_at - 7200000000 WHERE id = ?",
            (old.id,),
        )
    fresh = await noop.defer()
    await app.cancel(fresh.id)
    assert await app.prune(older_than=3600, states="completed") == 0
    assert await app.prune(older_than=3600, states=["cancelled"]) == 2
    assert [j.id for j in await app.list_jobs()] == [fresh.id, waiting.id]
    assert await app.prune(older_than=3600) == 0


async def test_a_worker_with_retention_prunes_by_itself(app: App) -> None:
    """A worker with ``retention={"completed": 0}`` deletes completed jobs by itself."""

    @app.task
    async def noop() -> None: ...

    job = await noop.defer()

    async def pruned() -> bool:
        return job.id not in {j.id for j in await app.list_jobs()}

    async with open_worker(app, **fast(retention={"completed": 0.0}, prune_interval=0.1)):
        await wait_until(pruned)
    assert await Pruner(app.driver, retention={"completed": 0.0}).run_once() == {}


# --- workers --------------------------------------------------------------------------------------


async def test_a_running_worker_is_listed_with_its_counters_and_removed_at_stop(app: App) -> None:
    """A worker's row shows its queues, state and processed count by its heartbeats, and is deleted when it stops."""

    @app.task
    async def noop() -> None: ...

    job = await noop.defer()
    async with open_worker(app, **fast(queues=["default", "x"], concurrency=3)) as worker:
        await wait_for_state(app, job.id, JobState.COMPLETED)

        async def counted() -> bool:
            rows = await app.driver.list_workers()
            return bool(rows) and rows[0].processed == 1 and rows[0].state == "running"

        await wait_until(counted)
        (row,) = await app.driver.list_workers()
        assert (row.id, row.queues, row.concurrency, row.pid) == (worker.id, ("default", "x"), 3, os.getpid())
        assert row.heartbeat_at.utcoffset() == dt.timedelta(0)
        assert 0 <= (row.now - row.heartbeat_at).total_seconds() < 2
        assert row.started_at <= row.heartbeat_at <= row.now
    assert worker.state is WorkerState.STOPPED
    assert await app.driver.list_workers() == []


async def test_a_graceful_stop_hands_a_long_job_back_without_using_an_attempt(app: App) -> None:
    """A job still running after shutdown_timeout is cancelled and written back available, its attempt given back."""
    started = anyio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await anyio.sleep(60)

    job = await forever.defer()
    async with open_worker(app, **fast(shutdown_timeout=0.2)):
        with anyio.fail_after(10):
            await started.wait()
    back = await app.get_job(job.id)
    assert (back.state, back.attempt, back.worker_id, back.errors) == (JobState.AVAILABLE, 0, None, ())


async def test_queue_depth_counts_waiting_and_running_jobs(app: App) -> None:
    """``queue_depth`` counts scheduled, available, executing and retryable jobs by queue, not finished ones."""

    @app.task
    async def noop() -> None: ...

    await noop.defer()
    await noop.configure(queue="q2", delay=60).defer()
    done = await noop.defer()
    await app.cancel(done.id)
    await app.defer_many([app.job_by_name("t", queue="q3")])
    await app.driver.fetch_jobs(worker_id="w", queues=["q3"], limit=1)
    depth = [(d.queue, d.state, d.count) for d in await app.driver.queue_depth()]
    assert depth == [("default", "available", 1), ("q2", "scheduled", 1), ("q3", "executing", 1)]
