"""How a running worker executes jobs, against real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import anyio
import anyio.lowlevel
import pytest
from psycopg import sql

from nursery_worker import App, JobState, WorkerState, open_worker
from nursery_worker._maintenance import Promoter

from .helpers import Connection, execute, fast, query, wait_for_state, wait_until, worker_ids

pytestmark = pytest.mark.anyio


async def test_async_timeout_is_recorded_as_timeout_error_and_retried(app: App) -> None:
    """An async attempt over its timeout is cancelled, recorded as TimeoutError, retried, then discarded."""
    cancelled: list[int] = []

    @app.task(timeout=0.2, retry=0, max_attempts=2)
    async def slow() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(1)
            raise

    job = await slow.defer()
    async with open_worker(app, **fast()) as worker:
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
        # Counted once the write has returned, which may be a moment after another connection sees it.
        stats = await wait_until(lambda: (s := worker.stats()).processed == 2 and s)
    assert cancelled == [1, 1]
    assert [(e.attempt, e.type) for e in gone.errors] == [(1, "TimeoutError"), (2, "TimeoutError")]
    assert "timeout of 0.2s" in gone.errors[0].message
    assert (stats.failed, stats.retried, stats.discarded) == (2, 1, 1)


async def test_sync_timeout_is_abandoned_and_recorded(app: App) -> None:
    """A sync attempt over its timeout is abandoned in its thread and recorded as TimeoutError at once."""
    release = threading.Event()
    returned = threading.Event()

    @app.task(timeout=0.2, max_attempts=1)
    def stuck() -> None:
        release.wait(10)  # a blocking call that ignores cancellation, like time.sleep
        returned.set()

    job = await stuck.defer()
    try:
        async with open_worker(app, **fast()):
            gone = await wait_for_state(app, job.id, JobState.DISCARDED)
            # Recorded while the function is still blocked in its thread: it was abandoned.
            assert not returned.is_set()
    finally:
        release.set()
        await anyio.to_thread.run_sync(returned.wait, 10)
    (error,) = gone.errors
    assert error.type == "TimeoutError"
    assert "abandoned" in error.message


async def test_fetch_order_is_priority_then_oldest(app: App) -> None:
    """With one slot, jobs run highest priority first and, within a priority, oldest first."""
    order: list[str] = []

    @app.task
    async def record(label: str) -> None:
        order.append(label)

    for label, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("high-2", 5), ("mid", 3)]:
        await record.configure(priority=priority).defer(label=label)
    async with open_worker(app, **fast(concurrency=1)):
        await wait_until(lambda: len(order) == 5)
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2"]


async def test_concurrency_limits_jobs_running_at_once(app: App) -> None:
    """No more than ``concurrency`` jobs run at the same time, and that many do when enough are due."""
    running = 0
    most = 0
    finished: list[int] = []

    @app.task
    async def busy(n: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await anyio.sleep(0.2)
        finally:
            running -= 1
        finished.append(n)

    await app.defer_many([busy.job(n=i) for i in range(9)])
    async with open_worker(app, **fast(concurrency=3)):
        await wait_until(lambda: len(finished) == 9)
    assert most == 3


async def test_worker_never_claims_more_than_its_free_capacity(app: App, db: Connection, schema: str) -> None:
    """At most `concurrency` jobs run at once, and after every write to the jobs table a worker holds at
    most twice that many executing rows: the running jobs and finished ones whose outcomes wait for
    the completer (the next claim overlaps that write)."""
    # A statement trigger logs, after every UPDATE of jobs (claims and completions alike), how many
    # rows each worker has executing, as the database sees it.
    db.execute("CREATE TABLE claim_log (worker_id text, executing int)")
    db.execute(
        sql.SQL(
            "CREATE FUNCTION log_claims() RETURNS trigger LANGUAGE plpgsql SET search_path = {} AS $$ "
            "BEGIN INSERT INTO claim_log SELECT worker_id, count(*) FROM jobs WHERE state = 'executing' "
            "GROUP BY worker_id; RETURN NULL; END $$"
        ).format(sql.Identifier(schema))
    )
    db.execute("CREATE TRIGGER log_claims AFTER UPDATE ON jobs FOR EACH STATEMENT EXECUTE FUNCTION log_claims()")
    finished: list[int] = []
    running: list[int] = []
    most_running = 0

    @app.task
    async def quick(n: int) -> None:
        nonlocal most_running
        running.append(n)
        most_running = max(most_running, len(running))
        await anyio.sleep(0.01 * (n % 3))
        running.remove(n)
        finished.append(n)

    await app.defer_many([quick.job(n=i) for i in range(40)])
    async with open_worker(app, **fast(concurrency=2)):
        await wait_until(lambda: len(finished) == 40)
    rows = await query(db, "SELECT worker_id, max(executing) FROM claim_log GROUP BY worker_id")
    assert rows, "the trigger logged nothing"
    assert most_running == 2
    assert max(int(r[1]) for r in rows) <= 4, rows


async def test_unknown_task_is_discarded_and_the_worker_keeps_running(app: App) -> None:
    """A job naming an unregistered task is discarded with a TaskNotFound error; other jobs still run."""
    ran: list[int] = []

    @app.task
    async def known(n: int) -> None:
        ran.append(n)

    (unknown,) = await app.defer_many([app.job_by_name("nope")])
    async with open_worker(app, **fast()) as worker:
        gone = await wait_for_state(app, unknown.id, JobState.DISCARDED)
        later = await known.defer(n=1)
        await wait_for_state(app, later.id, JobState.COMPLETED)
        assert worker.state is WorkerState.RUNNING
    assert ran == [1]
    assert gone.attempt == 1
    (error,) = gone.errors
    assert error.type == "TaskNotFound"
    assert "'nope'" in error.message


async def test_arguments_not_fitting_the_signature_are_discarded_without_retry(app: App) -> None:
    """A job whose arguments do not bind to the task's signature is discarded on its first attempt."""
    (job,) = await app.defer_many([app.job_by_name("late.registered", {"wrong": 1})])
    calls: list[int] = []

    @app.task(name="late.registered", max_attempts=5)
    async def late(right: int) -> None:
        calls.append(right)

    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert calls == []
    assert gone.attempt == 1
    (error,) = gone.errors
    assert error.type == "TypeError"
    assert "arguments do not fit" in error.message


async def test_non_object_arguments_are_discarded_without_retry(app: App, db: Connection) -> None:
    """A job inserted by SQL with a JSON array as arguments is discarded on its first attempt."""
    calls: list[int] = []

    @app.task(name="takes.nothing")
    async def takes_nothing() -> None:
        calls.append(1)

    (row,) = await query(
        db, "INSERT INTO jobs (task, queue, args) VALUES ('takes.nothing', 'default', '[1, 2]') RETURNING id"
    )
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, int(row[0]), JobState.DISCARDED)
    assert calls == []
    assert gone.attempt == 1
    (error,) = gone.errors
    assert error.type == "TypeError"
    assert "JSON object" in error.message


async def test_jobs_on_other_queues_are_not_taken(app: App) -> None:
    """A worker on 'default' leaves a job of another queue available and untouched."""
    ran: list[str] = []

    @app.task
    async def record(label: str) -> None:
        ran.append(label)

    other = await record.configure(queue="other").defer(label="other")
    mine = await record.defer(label="mine")
    async with open_worker(app, queues=["default"], **fast()):
        await wait_for_state(app, mine.id, JobState.COMPLETED)
        await anyio.sleep(0.3)  # a few more polls, none of which may take the other queue's job
    untouched = await app.get_job(other.id)
    assert ran == ["mine"]
    assert untouched.state is JobState.AVAILABLE
    assert untouched.attempt == 0


async def test_a_worker_serves_several_queues(app: App) -> None:
    """A worker given two queues (as a comma-separated string) runs the jobs of both."""
    ran: list[str] = []

    @app.task
    async def record(label: str) -> None:
        ran.append(label)

    a = await record.configure(queue="alpha").defer(label="a")
    b = await record.configure(queue="beta").defer(label="b")
    async with open_worker(app, queues="alpha, beta", **fast()) as worker:
        assert worker.config.queues == ("alpha", "beta")
        await wait_for_state(app, a.id, JobState.COMPLETED)
        await wait_for_state(app, b.id, JobState.COMPLETED)
    assert sorted(ran) == ["a", "b"]


async def test_notify_wakes_an_idle_worker(app: App) -> None:
    """With a 30 s poll interval, a job deferred while the worker idles is picked up by NOTIFY, long before a poll."""
    ran: list[int] = []

    @app.task
    async def ping() -> None:
        ran.append(1)

    async with open_worker(app, **fast(poll_interval=30)) as worker:
        await wait_until(lambda: worker.listener_connected)
        await anyio.sleep(0.2)  # idle: the first fetches are over, the next poll is 30 s away
        job = await ping.defer()
        await wait_for_state(app, job.id, JobState.COMPLETED, within=5)
    assert ran == [1]


async def test_polling_picks_up_jobs_without_listen(app: App) -> None:
    """With listen=False the worker never listens, and polling still picks up a job deferred after start."""
    ran: list[int] = []

    @app.task
    async def ping() -> None:
        ran.append(1)

    async with open_worker(app, **fast(listen=False)) as worker:
        await anyio.sleep(0.2)
        job = await ping.defer()
        await wait_for_state(app, job.id, JobState.COMPLETED)
        assert not worker.listener_connected
    assert ran == [1]


async def test_stats_count_outcomes(app: App) -> None:
    """worker.stats() counts processed, completed, failed, retried, discarded and running jobs, and its times."""
    release = anyio.Event()

    @app.task
    async def ok() -> None:
        pass

    @app.task(retry=0, max_attempts=2)
    async def bad() -> None:
        raise RuntimeError("bad")

    @app.task
    async def held() -> None:
        await release.wait()

    await app.defer_many([ok.job(), bad.job(), held.job()])
    before = dt.datetime.now(dt.UTC)
    async with open_worker(app, **fast()) as worker:
        stats = await wait_until(
            lambda: (s := worker.stats()).completed == 1 and s.discarded == 1 and s.running == 1 and s
        )
        assert stats.worker_id == worker.id
        assert stats.state is WorkerState.RUNNING
        assert (stats.processed, stats.completed, stats.failed, stats.retried, stats.discarded) == (3, 1, 2, 1, 1)
        assert stats.released == 0
        assert stats.started_at is not None
        assert before <= stats.started_at <= dt.datetime.now(dt.UTC)
        first_beat = stats.last_heartbeat
        assert first_beat is not None
        await wait_until(lambda: (b := worker.stats().last_heartbeat) is not None and b > first_beat)
        release.set()
    final = worker.stats()
    assert (final.processed, final.completed, final.running) == (4, 2, 0)


async def test_worker_state_is_running_inside_and_stopped_after(app: App, db: Connection) -> None:
    """The worker is RUNNING and registered inside the block, and STOPPED and unregistered after it."""
    async with open_worker(app, **fast()) as worker:
        inside = worker.state
        assert await worker_ids(db) == [worker.id]
    assert inside is WorkerState.RUNNING
    assert worker.state is WorkerState.STOPPED
    assert worker.stats().state is WorkerState.STOPPED
    assert await worker_ids(db) == []


async def test_once_stops_by_itself_after_working_off_available_jobs(app: App) -> None:
    """open_worker(once=True) runs every available job and then stops without being asked."""
    ran: list[int] = []

    @app.task
    async def record(n: int) -> None:
        ran.append(n)

    jobs = await app.defer_many([record.job(n=i) for i in range(5)])
    with anyio.fail_after(10):
        async with open_worker(app, **fast(once=True)) as worker:
            await worker.wait_stopped()
    assert worker.state is WorkerState.STOPPED
    assert sorted(ran) == [0, 1, 2, 3, 4]
    for job in jobs:
        assert (await app.get_job(job.id)).state is JobState.COMPLETED


async def test_once_works_off_a_due_retry_even_when_its_write_is_slow(app: App, db: Connection) -> None:
    """open_worker(once=True) also runs a failed job that is due again, even when writing the failure is slow."""
    started = anyio.Event()
    fail_now = anyio.Event()
    calls: list[int] = []

    @app.task(retry=0, max_attempts=3)
    async def second_time_lucky() -> None:
        calls.append(1)
        if len(calls) == 1:
            started.set()
            await fail_now.wait()
            raise RuntimeError("first attempt fails")

    def blocked_by_us() -> bool:
        """Whether a statement of another connection waits on a lock this test's transaction holds."""
        db.execute("SELECT pg_stat_clear_snapshot()")
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        ).fetchone()
        return row is not None and row[0] > 0

    job = await second_time_lucky.defer()
    # The deadline only bounds a hang. The worker's promoter service is kept out of the way (an hour
    # apart), so that the fetch loop alone finds the retry: the service's race with once-mode's last
    # look is a separate bug (test_once_promoter_race.py), not what this test is about.
    with anyio.fail_after(60):
        async with open_worker(app, **fast(once=True, promote_interval=3600)) as worker:
            await started.wait()
            # Hold the job's row lock, so that the worker's write of the failure waits on it (as a
            # slow or contended write would), while fetches and promotions skip the row.
            with db.transaction():
                db.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", [job.id])
                fail_now.set()
                # The job has returned and its write waits on our lock: from here on, a worker that
                # stops is wrong (it would leave the retry behind).
                await wait_until(blocked_by_us, within=30)
                # Give a wrong stop the chance to happen; a correct worker keeps waiting for the write.
                # (This window can only miss a wrong stop on a very slow machine, never fail a right one.)
                with anyio.move_on_after(1):
                    await wait_until(lambda: worker.state is not WorkerState.RUNNING)
                assert worker.state is WorkerState.RUNNING
            await worker.wait_stopped()
    done = await app.get_job(job.id)
    assert len(calls) == 2
    assert (done.state, done.attempt) == (JobState.COMPLETED, 2)


async def test_exception_in_body_propagates_as_itself_after_graceful_stop(app: App, db: Connection) -> None:
    """An exception raised in the ``async with`` body comes out unwrapped, after running jobs finished."""

    class Boom(Exception):
        pass

    started = anyio.Event()

    @app.task
    async def short() -> None:
        started.set()
        await anyio.sleep(0.2)

    job = await short.defer()
    with pytest.raises(Boom) as info:
        async with open_worker(app, **fast()) as worker:
            await started.wait()
            raise Boom("from the body")
    assert type(info.value) is Boom
    assert str(info.value) == "from the body"
    assert worker.state is WorkerState.STOPPED
    assert (await app.get_job(job.id)).state is JobState.COMPLETED
    assert await worker_ids(db) == []


async def test_three_workers_sharing_a_queue_run_every_job_exactly_once(app: App, db: Connection) -> None:
    """Three workers claiming from one queue with SKIP LOCKED run each of 2,000 jobs once and only once."""
    runs: list[int] = []

    @app.task
    async def work(n: int) -> None:
        runs.append(n)
        await anyio.lowlevel.checkpoint()

    await app.defer_many([work.job(n=n) for n in range(2_000)])
    async with (
        open_worker(app, **fast(concurrency=20)) as w1,
        open_worker(app, **fast(concurrency=20)) as w2,
        open_worker(app, **fast(concurrency=20)) as w3,
    ):
        await wait_until(lambda: len(runs) >= 2_000, within=60)
        await anyio.sleep(0.3)  # a duplicate run, if there were one, would have time to show up
    # Read once the workers have stopped: an outcome is counted when its write has returned.
    per_worker = [w.stats().completed for w in (w1, w2, w3)]
    assert sorted(runs) == list(range(2_000))
    assert sum(per_worker) == 2_000
    assert sum(1 for c in per_worker if c > 0) >= 2  # the work was actually shared
    assert await query(db, "SELECT state, count(*) FROM jobs GROUP BY state") == [("completed", 2_000)]


async def test_a_due_scheduled_job_takes_its_place_by_priority_and_schedule(app: App, db: Connection) -> None:
    """A scheduled job, once due, runs by priority and then by its scheduled time, among jobs queued before it."""
    order: list[str] = []

    @app.task
    async def record(label: str) -> None:
        order.append(label)

    await record.configure(priority=0).defer(label="low")
    await record.configure(priority=5, delay=3600).defer(label="high-later")
    await record.configure(priority=5).defer(label="high-now")
    # Make the scheduled one due, with a schedule older than every other job's.
    await execute(
        db,
        "UPDATE jobs SET scheduled_at = now() - interval '1 hour' WHERE args->>'label' = 'high-later'",
    )
    assert await Promoter(app.driver).run_once() == 1
    async with open_worker(app, **fast(concurrency=1)):
        await wait_until(lambda: len(order) == 3)
    assert order == ["high-later", "high-now", "low"]
