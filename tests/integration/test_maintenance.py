"""The worker's periodic services (rescuer, promoter, heartbeat), one ``run_once`` at a time, and the reaper at work."""

from __future__ import annotations

import os
import socket

import anyio
import pytest

from nursery_worker import App, JobState, open_worker
from nursery_worker._maintenance import Heartbeat, Promoter, Rescuer
from nursery_worker._models import WorkerInfo

from .helpers import Connection, fast, query, wait_for_state, worker_ids

pytestmark = pytest.mark.anyio


async def _add_worker(db: Connection, worker_id: str, *, beat_seconds_ago: float) -> None:
    """Insert a workers row whose last heartbeat was *beat_seconds_ago* seconds ago."""
    await query(
        db,
        "INSERT INTO workers (id, hostname, pid, queues, concurrency, heartbeat_at) "
        "VALUES (%s, 'elsewhere', 1, ARRAY['default'], 1, now() - %s * interval '1 second') RETURNING id",
        [worker_id, beat_seconds_ago],
    )


async def _add_executing_job(
    db: Connection, worker_id: str, *, attempt: int = 1, max_attempts: int = 20, task: str = "some.task"
) -> int:
    """Insert a job executing on *worker_id*; return its id."""
    (row,) = await query(
        db,
        "INSERT INTO jobs (task, queue, state, attempt, max_attempts, worker_id, attempted_at) "
        "VALUES (%s, 'default', 'executing', %s, %s, %s, now() - interval '1 hour') RETURNING id",
        [task, attempt, max_attempts, worker_id],
    )
    return int(row[0])


async def _add_job(db: Connection, state: str, *, due_in_seconds: float) -> int:
    """Insert a job in *state* due *due_in_seconds* from now (negative: already due); return its id."""
    (row,) = await query(
        db,
        "INSERT INTO jobs (task, queue, state, scheduled_at) "
        "VALUES ('some.task', 'default', %s, now() + %s * interval '1 second') RETURNING id",
        [state, due_in_seconds],
    )
    return int(row[0])


async def test_rescue_makes_a_dead_workers_job_retryable_with_worker_lost(app: App, db: Connection) -> None:
    """A job executing on a worker without a recent heartbeat becomes retryable with a WorkerLost error."""
    await _add_worker(db, "dead-1", beat_seconds_ago=3600)
    job_id = await _add_executing_job(db, "dead-1", attempt=2, max_attempts=5)
    result = await Rescuer(app.driver, "rescuer-1", rescue_after=1).run_once()
    assert (result.retryable, result.discarded, result.rescued) == (1, 0, 1)
    job = await app.get_job(job_id)
    assert job.state is JobState.RETRYABLE
    assert job.attempt == 2
    assert job.worker_id is None
    assert job.finished_at is None
    (error,) = job.errors
    assert (error.attempt, error.type) == (2, "WorkerLost")
    assert "dead-1" in error.message
    assert "rescuer-1" in error.message
    assert error.at is not None


async def test_rescue_discards_a_dead_workers_job_on_its_last_attempt(app: App, db: Connection) -> None:
    """A job rescued from a dead worker on its last attempt is discarded with a WorkerLost error."""
    await _add_worker(db, "dead-1", beat_seconds_ago=3600)
    job_id = await _add_executing_job(db, "dead-1", attempt=3, max_attempts=3)
    result = await Rescuer(app.driver, "rescuer-1", rescue_after=1).run_once()
    assert (result.retryable, result.discarded) == (0, 1)
    job = await app.get_job(job_id)
    assert job.state is JobState.DISCARDED
    assert job.finished_at is not None
    assert job.worker_id is None
    assert [(e.attempt, e.type) for e in job.errors] == [(3, "WorkerLost")]


async def test_rescue_takes_jobs_of_a_worker_without_a_row(app: App, db: Connection) -> None:
    """A job executing on a worker id that has no row in the workers table is rescued."""
    job_id = await _add_executing_job(db, "vanished")
    result = await Rescuer(app.driver, "rescuer-1", rescue_after=1).run_once()
    assert result.retryable == 1
    assert (await app.get_job(job_id)).state is JobState.RETRYABLE


async def test_rescue_never_takes_a_live_workers_jobs(app: App, db: Connection) -> None:
    """A job executing on a worker that beat recently is left executing, and its worker row stays."""
    await _add_worker(db, "alive-1", beat_seconds_ago=0)
    job_id = await _add_executing_job(db, "alive-1")
    result = await Rescuer(app.driver, "rescuer-1", rescue_after=60).run_once()
    assert (result.rescued, result.workers_removed) == (0, 0)
    job = await app.get_job(job_id)
    assert (job.state, job.worker_id, job.attempt, job.errors) == (JobState.EXECUTING, "alive-1", 1, ())
    assert await worker_ids(db) == ["alive-1"]


async def test_rescue_removes_dead_worker_rows(app: App, db: Connection) -> None:
    """A rescue pass deletes the rows of workers past rescue_after and keeps the live ones."""
    await _add_worker(db, "dead-1", beat_seconds_ago=3600)
    await _add_worker(db, "dead-2", beat_seconds_ago=120)
    await _add_worker(db, "alive-1", beat_seconds_ago=0)
    await _add_executing_job(db, "dead-2")
    result = await Rescuer(app.driver, "rescuer-1", rescue_after=60).run_once()
    assert result.workers_removed == 2
    assert result.retryable == 1
    assert await worker_ids(db) == ["alive-1"]


async def test_promoter_makes_due_jobs_available_and_leaves_future_ones(app: App, db: Connection) -> None:
    """Promoter.run_once makes due scheduled and retryable jobs available, and not the ones still in the future."""
    due_scheduled = await _add_job(db, "scheduled", due_in_seconds=-1)
    due_retryable = await _add_job(db, "retryable", due_in_seconds=-1)
    future_scheduled = await _add_job(db, "scheduled", due_in_seconds=3600)
    future_retryable = await _add_job(db, "retryable", due_in_seconds=3600)
    completed = await _add_job(db, "completed", due_in_seconds=-1)
    assert await Promoter(app.driver).run_once() == 2
    states = {job_id: (await app.get_job(job_id)).state for job_id in (due_scheduled, due_retryable)}
    assert set(states.values()) == {JobState.AVAILABLE}
    assert (await app.get_job(future_scheduled)).state is JobState.SCHEDULED
    assert (await app.get_job(future_retryable)).state is JobState.RETRYABLE
    assert (await app.get_job(completed)).state is JobState.COMPLETED
    assert await Promoter(app.driver).run_once() == 0


class _HeldPromotion:
    """A driver whose first promote_due stays in flight until released (the periodic promotion, say)."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = anyio.Event()
        self.release = anyio.Event()

    async def promote_due(self, *, limit: int) -> int:
        self.calls += 1
        if self.calls == 1:
            self.in_flight.set()
            await self.release.wait()
            return 1
        return 0


async def test_a_promotion_waits_for_the_one_in_flight_to_end() -> None:
    """A second run_once of one promoter starts only after the first has returned, so it sees its promotions."""
    driver = _HeldPromotion()
    promoter = Promoter(driver)  # type: ignore[arg-type]
    ended: list[tuple[str, int]] = []

    async def promote(name: str) -> None:
        ended.append((name, await promoter.run_once()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(promote, "periodic")
        await driver.in_flight.wait()
        tg.start_soon(promote, "once-mode fetcher")
        await anyio.wait_all_tasks_blocked()
        assert (driver.calls, ended) == (1, [])
        driver.release.set()
    assert ended == [("periodic", 1), ("once-mode fetcher", 0)]


async def test_heartbeat_re_registers_a_deleted_worker_row_and_returns_false(app: App, db: Connection) -> None:
    """Heartbeat.run_once returns True while the row exists, and False after re-inserting a deleted row."""
    info = WorkerInfo(
        id="beating-1", hostname=socket.gethostname(), pid=os.getpid(), queues=("default",), concurrency=2
    )
    await app.driver.register_worker(info)
    heartbeat = Heartbeat(app.driver, info)
    assert await heartbeat.run_once() is True
    first = heartbeat.last
    assert first is not None
    await query(db, "DELETE FROM workers WHERE id = 'beating-1' RETURNING id")
    assert await heartbeat.run_once() is False
    assert heartbeat.last is not None and heartbeat.last >= first
    rows = await query(db, "SELECT id, queues, concurrency FROM workers")
    assert rows == [("beating-1", ["default"], 2)]
    assert await heartbeat.run_once() is True


async def test_heartbeat_moves_the_workers_heartbeat_forward(app: App, db: Connection) -> None:
    """Heartbeat.run_once sets the worker row's heartbeat_at to the database's now."""
    info = WorkerInfo(id="beating-1", hostname="h", pid=1, queues=("default",), concurrency=1)
    await app.driver.register_worker(info)
    await query(db, "UPDATE workers SET heartbeat_at = now() - interval '1 hour' RETURNING id")
    assert await Heartbeat(app.driver, info).run_once() is True
    (row,) = await query(db, "SELECT heartbeat_at > now() - interval '1 minute' FROM workers")
    assert row[0] is True


async def test_running_worker_rescues_a_dead_peers_job_and_runs_it(app: App, db: Connection) -> None:
    """A running worker's reaper rescues a job left executing by a dead peer, and the job then runs to completion."""
    ran: list[int] = []

    @app.task(name="orphan.task", retry=0)
    async def orphan() -> None:
        ran.append(1)

    await _add_worker(db, "dead-1", beat_seconds_ago=3600)
    job_id = await _add_executing_job(db, "dead-1", task="orphan.task")
    async with open_worker(app, **fast()) as worker:
        done = await wait_for_state(app, job_id, JobState.COMPLETED)
        assert await worker_ids(db) == [worker.id]
    assert ran == [1]
    assert done.attempt == 2
    assert [(e.attempt, e.type) for e in done.errors] == [(1, "WorkerLost")]
    assert worker.id in done.errors[0].message
