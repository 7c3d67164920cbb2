"""The step writer: step records of many jobs written together, on every engine."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest

from nursery_worker import App, JobState
from nursery_worker._models import Lease, StepWrite
from nursery_worker._state import ErrorInfo
from nursery_worker._stepwriter import StepWriter

from ..integration.helpers import wait_until

pytestmark = pytest.mark.anyio


async def _claimed(app: App, n: int) -> list[Lease]:
    @app.task
    async def durable() -> None:
        pass

    await app.defer_many([durable.job() for _ in range(n)])
    jobs = await app.driver.fetch_jobs(worker_id="w1", queues=["default"], limit=n)
    assert len(jobs) == n
    return [Lease(job_id=j.id, attempt=j.attempt, worker_id="w1", attempted_at=j.attempted_at) for j in jobs]


def _record(lease: Lease, name: str, *, result: str | None = "1", error: ErrorInfo | None = None) -> StepWrite:
    return StepWrite(lease=lease, name=name, position=0, result_json=result, error=error, duration=0.001)


async def test_records_submitted_together_are_written_and_each_is_answered(app: App) -> None:
    """Records of many jobs submitted at once are all stored, and each caller learns its own outcome."""
    leases = await _claimed(app, 20)
    writer = StepWriter(app.driver)
    answers: dict[int, bool] = {}

    async def one(lease: Lease) -> None:
        answers[lease.job_id] = await writer.record(_record(lease, "a"))

    async with anyio.create_task_group() as tg:
        for lease in leases:
            tg.start_soon(one, lease)
    assert answers == {lease.job_id: True for lease in leases}
    for lease in leases:
        (stored,) = await app.driver.job_steps(lease.job_id)
        assert (stored.name, stored.state, stored.result) == ("a", "completed", 1)


async def test_a_stale_lease_in_a_batch_is_refused_and_the_others_are_written(app: App) -> None:
    """A record whose lease is gone is answered False; the rest of its batch is stored."""
    leases = await _claimed(app, 3)
    stale = Lease(job_id=leases[0].job_id, attempt=leases[0].attempt, worker_id="other", attempted_at=None)
    written = await app.driver.record_steps([_record(stale, "a"), _record(leases[1], "a"), _record(leases[2], "a")])
    assert written == [False, True, True]
    assert await app.driver.job_steps(leases[0].job_id) == []


async def test_a_batch_the_database_refuses_is_written_one_record_at_a_time(app: App, engine: str) -> None:
    """When one record makes the whole statement fail, the others are still stored and only it fails."""
    if engine == "sqlite":
        pytest.skip("SQLite keeps JSON as text: it refuses no record")
    leases = await _claimed(app, 3)
    writer = StepWriter(app.driver)
    outcomes: dict[int, object] = {}
    bad = '{"not json'  # never sent by a job (results are checked first): jsonb refuses it

    async def one(lease: Lease, result: str) -> None:
        try:
            outcomes[lease.job_id] = await writer.record(_record(lease, "a", result=result))
        except Exception as exc:
            outcomes[lease.job_id] = type(exc).__name__

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, leases[0], "1")
        tg.start_soon(one, leases[1], bad)
        tg.start_soon(one, leases[2], "2")
    assert outcomes[leases[0].job_id] is True and outcomes[leases[2].job_id] is True
    assert outcomes[leases[1].job_id] == "DatabaseError"


async def test_a_failed_run_is_stored_with_its_error_and_a_completed_step_never_changes(app: App) -> None:
    """A failed record stores the error; a later completion replaces it; a completed step is final."""
    (lease,) = await _claimed(app, 1)
    error = ErrorInfo(type="ValueError", message="card declined")
    assert await app.driver.record_steps([_record(lease, "charge", result=None, error=error)]) == [True]
    (failed,) = await app.driver.job_steps(lease.job_id)
    assert failed.state == "failed" and failed.error is not None and failed.error.message == "card declined"
    assert await app.driver.record_steps([_record(lease, "charge", result='"ch_1"')]) == [True]
    assert await app.driver.record_steps([_record(lease, "charge", result='"ch_2"')]) == [False]
    (done,) = await app.driver.job_steps(lease.job_id)
    assert (done.state, done.result, done.runs, done.error) == ("completed", "ch_1", 2, None)
    job = await app.get_job(lease.job_id)
    assert job.state is JobState.EXECUTING and job.attempted_at is not None
    assert job.attempted_at <= dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


async def test_a_record_whose_deadline_passes_in_the_queue_does_not_stall_the_ones_behind_it(
    app: App, engine: str
) -> None:
    """A queued record given up by its job (its deadline passed) leaves the queue; the next one still gets written."""
    import sqlite3

    import psycopg

    from nursery_worker._dsn import is_sqlite_dsn, parse_sqlite_dsn

    leases = await _claimed(app, 3)
    writer = StepWriter(app.driver)
    dsn = app._settings.dsn
    assert dsn is not None
    # Hold back the first write: a lock on its job's row (PostgreSQL) or on the database (SQLite).
    holder: sqlite3.Connection | psycopg.Connection[tuple[object, ...]]
    if is_sqlite_dsn(dsn):
        holder = sqlite3.connect(parse_sqlite_dsn(dsn).path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(dsn)
        holder.execute(f'SELECT 1 FROM "{app.schema}".jobs WHERE id = %s FOR UPDATE', [leases[0].job_id])
    results: dict[str, object] = {}
    given_up = anyio.Event()

    async def first() -> None:
        results["first"] = await writer.record(_record(leases[0], "a"))

    async def impatient() -> None:
        with anyio.move_on_after(0.2):
            results["impatient"] = await writer.record(_record(leases[1], "a"))
        given_up.set()

    async def last() -> None:
        results["last"] = await writer.record(_record(leases[2], "a"))

    async def queued(n: int) -> None:
        await wait_until(lambda: len(writer._queue) == n, interval=0.005)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await wait_until(lambda: writer._busy, interval=0.005)
            tg.start_soon(impatient)
            await queued(1)
            tg.start_soon(last)
            await queued(2)
            await given_up.wait()
            assert "impatient" not in results and len(writer._queue) == 1
            if isinstance(holder, sqlite3.Connection):
                holder.execute("ROLLBACK")
            else:
                holder.rollback()
    finally:
        holder.close()
    assert results == {"first": True, "last": True}
    assert not writer._busy and writer._queue == []
    assert await app.driver.job_steps(leases[1].job_id) == []


async def test_a_failed_steps_error_carries_its_attempt_and_time(app: App) -> None:
    """A failed step's error says which attempt raised it and when (the database's clock), alone or in a batch."""
    leases = await _claimed(app, 2)
    error = ErrorInfo(type="OSError", message="reset")
    await app.driver.record_steps([_record(leases[0], "one", result=None, error=error)])
    await app.driver.record_steps([_record(lease, "two", result=None, error=error) for lease in leases])
    for lease in leases:
        for stored in await app.driver.job_steps(lease.job_id):
            assert stored.error is not None
            assert (stored.error.attempt, stored.error.type) == (lease.attempt, "OSError")
            assert stored.error.at is not None
