"""Guarded writes, rescues racing with late results, and a worker whose connections are killed."""

from __future__ import annotations

from datetime import datetime

import anyio
import pytest
from psycopg.conninfo import make_conninfo

from nursery_worker import App, JobState, WorkerState, open_worker
from nursery_worker._maintenance import Rescuer
from nursery_worker._models import Completion
from nursery_worker._state import ErrorInfo, Transition

from .helpers import Connection, execute, fast, query, wait_for_state, wait_until

pytestmark = pytest.mark.anyio

_COMPLETED = Transition(state=JobState.COMPLETED)


async def _claim(app: App, worker_id: str, attempt: int = 1) -> tuple[int, datetime | None]:
    """Claim the one available job for *worker_id* through the driver's fetch; return its id and lease."""
    (job,) = await app.driver.fetch_jobs(worker_id=worker_id, queues=["default"], limit=1)
    assert (job.state, job.attempt, job.worker_id) == (JobState.EXECUTING, attempt, worker_id)
    assert job.attempted_at is not None
    return job.id, job.attempted_at


async def test_finish_with_a_wrong_attempt_changes_nothing(app: App) -> None:
    """finish_jobs for an attempt other than the one executing changes no row."""
    await app.defer_many([app.job_by_name("anything")])
    job_id, lease = await _claim(app, "w-1")
    failing = Transition(state=JobState.RETRYABLE, delay=0.0, error=ErrorInfo(type="X", message="late"))
    for attempt, transition in [(2, _COMPLETED), (0, _COMPLETED), (2, failing)]:
        late = [Completion(job_id=job_id, attempt=attempt, attempted_at=lease, transition=transition)]
        changed = len(await app.driver.finish_jobs(worker_id="w-1", completions=late, error_cap=20))
        assert changed == 0
    job = await app.get_job(job_id)
    assert (job.state, job.attempt, job.worker_id, job.errors) == (JobState.EXECUTING, 1, "w-1", ())
    # The right attempt on the right worker does apply.
    changed = len(
        await app.driver.finish_jobs(
            worker_id="w-1",
            completions=[Completion(job_id=job_id, attempt=1, attempted_at=lease, transition=_COMPLETED)],
            error_cap=20,
        )
    )
    assert changed == 1
    assert (await app.get_job(job_id)).state is JobState.COMPLETED


async def test_finish_from_a_wrong_worker_changes_nothing(app: App) -> None:
    """finish_jobs from a worker other than the one executing the job changes no row."""
    await app.defer_many([app.job_by_name("anything")])
    job_id, lease = await _claim(app, "w-1")
    released = Transition(state=JobState.AVAILABLE, give_back_attempt=True)
    for transition in (_COMPLETED, released):
        changed = len(
            await app.driver.finish_jobs(
                worker_id="w-2",
                completions=[Completion(job_id=job_id, attempt=1, attempted_at=lease, transition=transition)],
                error_cap=20,
            )
        )
        assert changed == 0
    job = await app.get_job(job_id)
    assert (job.state, job.attempt, job.worker_id, job.errors) == (JobState.EXECUTING, 1, "w-1", ())


async def test_finish_of_a_finished_job_changes_nothing(app: App) -> None:
    """A second finish_jobs for an attempt already written changes no row."""
    await app.defer_many([app.job_by_name("anything")])
    job_id, lease = await _claim(app, "w-1")
    once = [Completion(job_id=job_id, attempt=1, attempted_at=lease, transition=_COMPLETED)]
    assert len(await app.driver.finish_jobs(worker_id="w-1", completions=once, error_cap=20)) == 1
    released = Transition(state=JobState.AVAILABLE, give_back_attempt=True)
    again = [Completion(job_id=job_id, attempt=1, attempted_at=lease, transition=released)]
    assert len(await app.driver.finish_jobs(worker_id="w-1", completions=again, error_cap=20)) == 0
    job = await app.get_job(job_id)
    assert (job.state, job.attempt) == (JobState.COMPLETED, 1)


async def test_stale_write_of_a_given_back_claim_does_not_touch_the_same_workers_reclaim(app: App) -> None:
    """After a claim is handed back and the same worker claims the job again, the old claim's write changes nothing."""
    await app.defer_many([app.job_by_name("anything")])
    job_id, first = await _claim(app, "w-1")
    released = Transition(state=JobState.AVAILABLE, give_back_attempt=True)
    give_back = [Completion(job_id=job_id, attempt=1, attempted_at=first, transition=released)]
    assert len(await app.driver.finish_jobs(worker_id="w-1", completions=give_back, error_cap=20)) == 1
    again_id, second = await _claim(app, "w-1")  # same worker, same attempt number: only the lease differs
    assert again_id == job_id and second != first
    stale = [Completion(job_id=job_id, attempt=1, attempted_at=first, transition=_COMPLETED)]
    assert len(await app.driver.finish_jobs(worker_id="w-1", completions=stale, error_cap=20)) == 0
    job = await app.get_job(job_id)
    assert (job.state, job.attempt, job.worker_id) == (JobState.EXECUTING, 1, "w-1")
    fresh = [Completion(job_id=job_id, attempt=1, attempted_at=second, transition=_COMPLETED)]
    assert len(await app.driver.finish_jobs(worker_id="w-1", completions=fresh, error_cap=20)) == 1


async def test_late_completion_after_a_rescue_is_a_noop(app: App, db: Connection) -> None:
    """A job rescued from a worker declared dead keeps what the rescue wrote when its attempt returns later."""
    started = anyio.Event()
    release = anyio.Event()

    @app.task(max_attempts=1)
    async def held() -> None:
        started.set()
        await release.wait()

    job = await held.defer()
    # Heartbeats and reaps far apart: the worker's own beat must not refresh the row the test made stale.
    async with open_worker(app, **fast(heartbeat_interval=60, rescue_after=120, reap_interval=60)) as worker:
        await started.wait()
        # A peer sees the worker's heartbeat as stale and rescues its job.
        await execute(db, "UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", [worker.id])
        await Rescuer(app.driver, "peer", rescue_after=120).run_once()
        # (The worker's own reaper may be the one that got there first: either way the job is rescued.)
        rescued = await app.get_job(job.id)
        assert (rescued.state, rescued.worker_id) == (JobState.DISCARDED, None)
        release.set()
        await wait_until(lambda: worker.stats().ignored == 1)
        assert worker.stats().completed == 0  # it took no effect, so it is not counted as completed
    # Leaving the block has flushed the worker's completion of the attempt; the guard ignored it.
    after = await app.get_job(job.id)
    assert after.state is JobState.DISCARDED
    assert after.attempt == 1
    assert [e.type for e in after.errors] == ["WorkerLost"]
    assert worker.state is WorkerState.STOPPED


async def test_late_result_of_a_rescued_attempt_does_not_touch_its_rerun(app: App, db: Connection) -> None:
    """When the same worker re-runs a job rescued from it, the old attempt's late failure changes nothing."""
    started = [anyio.Event(), anyio.Event()]
    gates = [anyio.Event(), anyio.Event()]
    calls = 0

    @app.task(max_attempts=3, retry=0)
    async def held() -> None:
        nonlocal calls
        n = calls
        calls += 1
        started[n].set()
        await gates[n].wait()
        if n == 0:
            raise RuntimeError("late failure of the rescued attempt")

    job = await held.defer()
    async with open_worker(app, **fast(heartbeat_interval=60, rescue_after=120, reap_interval=60)) as worker:
        await started[0].wait()
        await execute(db, "UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", [worker.id])
        await Rescuer(app.driver, "peer", rescue_after=120).run_once()
        # The promoter makes the rescued job available again and this same worker claims attempt 2.
        with anyio.fail_after(10):
            await started[1].wait()
        gates[0].set()  # attempt 1 fails now, long after it was rescued
        await wait_until(lambda: worker.stats().ignored == 1)
        assert worker.stats().failed == 0  # the late failure took no effect
        rerun = await app.get_job(job.id)
        assert (rerun.state, rerun.attempt) == (JobState.EXECUTING, 2)
        gates[1].set()
        await wait_for_state(app, job.id, JobState.COMPLETED)
        assert worker.state is WorkerState.RUNNING
    done = await app.get_job(job.id)
    assert done.attempt == 2
    assert [(e.attempt, e.type) for e in done.errors] == [(1, "WorkerLost")]
    assert worker.stats().state is WorkerState.STOPPED


def _named(dsn: str, application_name: str) -> str:
    return make_conninfo(dsn, application_name=application_name)


async def _terminate(db: Connection, application_name: str) -> int:
    """Terminate every backend with *application_name* (never the test's own); return how many."""
    rows = await query(
        db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        [application_name],
    )
    return len(rows)


async def _listener_pids(db: Connection, application_name: str) -> set[int]:
    rows = await query(
        db,
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN %%'",
        [application_name],
    )
    return {int(r[0]) for r in rows}


async def test_worker_survives_its_connections_being_terminated(
    app: App, db: Connection, dsn: str, schema: str
) -> None:
    """After every connection of a running worker is terminated, it finishes its running job and runs new ones."""
    # The worker's connections get an application_name of their own, so that only they are terminated.
    name = f"nw-{schema}"
    started = anyio.Event()
    release = anyio.Event()
    seen: list[int] = []
    async with App(dsn=_named(dsn, name), schema=schema) as worker_app:

        @worker_app.task(name="held")
        async def held() -> None:
            started.set()
            await release.wait()

        @worker_app.task(name="echo")
        async def echo(n: int) -> None:
            seen.append(n)

        # The test defers through the fixture's app, whose connections are not terminated.
        (running,) = await app.defer_many([app.job_by_name("held")])
        async with open_worker(worker_app, **fast()) as worker:
            await started.wait()
            await wait_until(lambda: worker.listener_connected)
            assert await _terminate(db, name) >= 2  # at least one pooled connection and the listener
            release.set()
            (later,) = await app.defer_many([app.job_by_name("echo", {"n": 7})])
            await wait_for_state(app, running.id, JobState.COMPLETED)
            await wait_for_state(app, later.id, JobState.COMPLETED)
            assert worker.state is WorkerState.RUNNING
        assert seen == [7]
        assert worker.stats().state is WorkerState.STOPPED


async def test_listener_reconnects_after_its_connection_is_terminated(
    app: App, db: Connection, dsn: str, schema: str
) -> None:
    """A terminated LISTEN connection is replaced, and NOTIFY wakes the worker again (its poll is 30 s away)."""
    name = f"nw-{schema}"
    seen: list[int] = []
    async with App(dsn=_named(dsn, name), schema=schema) as worker_app:

        @worker_app.task(name="echo")
        async def echo(n: int) -> None:
            seen.append(n)

        async with open_worker(worker_app, **fast(poll_interval=30)) as worker:
            await wait_until(lambda: worker.listener_connected)
            old = await wait_until(lambda: _listener_pids(db, name))
            assert await _terminate(db, name) >= 1

            async def reconnected() -> bool:
                return worker.listener_connected and bool(await _listener_pids(db, name) - old)

            await wait_until(reconnected)
            (job,) = await app.defer_many([app.job_by_name("echo", {"n": 1})])
            await wait_for_state(app, job.id, JobState.COMPLETED, within=5)
            assert worker.state is WorkerState.RUNNING
        assert seen == [1]
