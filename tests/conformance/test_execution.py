"""How a worker runs jobs and records their outcomes, the same on every engine."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

import anyio
import pytest

from nursery_worker import (
    App,
    ConstantBackoff,
    Discard,
    JobState,
    Retry,
    Snooze,
    open_worker,
)

from ..integration.helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


async def test_an_async_task_completes_once(app: App) -> None:
    """An ``async def`` task runs once with its arguments; its job ends completed, attempt 1, no worker."""
    seen: list[int] = []

    @app.task
    async def add(n: int) -> None:
        seen.append(n)

    job = await add.defer(n=3)
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert seen == [3]
    assert (done.attempt, done.worker_id, done.errors) == (1, None, ())
    assert done.attempted_at is not None and done.finished_at is not None
    assert done.inserted_at is not None and done.inserted_at <= done.attempted_at <= done.finished_at


async def test_a_sync_task_runs_in_a_thread(app: App) -> None:
    """A plain ``def`` task runs in a thread other than the event loop's, and completes."""
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @app.task
    def blocking() -> None:
        threads.append(threading.get_ident())

    job = await blocking.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.COMPLETED)
    assert len(threads) == 1 and threads[0] != loop_thread


async def test_a_failure_is_retryable_with_its_error_and_the_policys_delay(app: App) -> None:
    """A raising attempt leaves the job retryable with the error recorded, due exactly the policy's delay later."""

    @app.task(retry=lambda attempt: 30.0 * attempt, max_attempts=3)
    async def flaky() -> None:
        raise ValueError("boom")

    job = await flaky.defer()
    async with open_worker(app, **fast()):
        failed = await wait_for_state(app, job.id, JobState.RETRYABLE)
    assert (failed.attempt, failed.worker_id, failed.finished_at) == (1, None, None)
    (error,) = failed.errors
    assert (error.attempt, error.type, error.message) == (1, "ValueError", "boom")
    assert "ValueError: boom" in error.traceback and "flaky" in error.traceback
    assert error.at is not None and error.at.utcoffset() == dt.timedelta(0)
    assert failed.scheduled_at - error.at == dt.timedelta(seconds=30)


async def test_a_job_that_always_fails_is_discarded_after_max_attempts(app: App) -> None:
    """A job that always fails runs max_attempts times, then is discarded with one error per attempt."""
    calls: list[int] = []

    @app.task(retry=0, max_attempts=3)
    async def always_fails() -> None:
        calls.append(1)
        raise RuntimeError(f"failure {len(calls)}")

    job = await always_fails.defer()
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert len(calls) == 3
    assert gone.attempt == 3 and gone.finished_at is not None
    assert [(e.attempt, e.type, e.message) for e in gone.errors] == [
        (1, "RuntimeError", "failure 1"),
        (2, "RuntimeError", "failure 2"),
        (3, "RuntimeError", "failure 3"),
    ]


async def test_the_error_list_keeps_only_the_most_recent(make_app: Callable[..., App], app: App) -> None:
    """With ``App(error_cap=3)``, a job that failed five times keeps its last three errors."""
    capped = make_app(error_cap=3)
    calls: list[int] = []

    @capped.task(retry=0, max_attempts=5)
    async def fails() -> None:
        calls.append(1)
        raise RuntimeError(f"failure {len(calls)}")

    job = await fails.defer()
    async with open_worker(capped, **fast()):
        gone = await wait_for_state(capped, job.id, JobState.DISCARDED)
    assert len(calls) == 5
    assert [(e.attempt, e.message) for e in gone.errors] == [(3, "failure 3"), (4, "failure 4"), (5, "failure 5")]


async def test_a_timeout_is_recorded_as_timeout_error(app: App) -> None:
    """An async attempt over its timeout is cancelled and recorded as a TimeoutError."""

    @app.task(timeout=0.2, max_attempts=1)
    async def slow() -> None:
        await anyio.sleep(30)

    job = await slow.defer()
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    (error,) = gone.errors
    assert error.type == "TimeoutError"


async def test_higher_priority_runs_first_then_the_oldest(app: App) -> None:
    """Among available jobs a worker with one slot runs the highest priority first, then the oldest."""
    order: list[str] = []

    @app.task
    async def work(name: str) -> None:
        order.append(name)

    await work.defer(name="low-1")
    await work.configure(priority=5).defer(name="high")
    await work.defer(name="low-2")
    last = await work.configure(priority=-1).defer(name="lowest")
    async with open_worker(app, **fast(concurrency=1)):
        await wait_for_state(app, last.id, JobState.COMPLETED)
    assert order == ["high", "low-1", "low-2", "lowest"]


async def test_a_worker_fetches_only_its_own_queues(app: App) -> None:
    """A worker of queues a and b runs their jobs and leaves a job of queue c available."""

    @app.task
    async def noop() -> None: ...

    a = await noop.configure(queue="a").defer()
    b = await noop.configure(queue="b").defer()
    c = await noop.configure(queue="c").defer()
    async with open_worker(app, **fast(queues=["a", "b"])):
        await wait_for_state(app, a.id, JobState.COMPLETED)
        await wait_for_state(app, b.id, JobState.COMPLETED)
        await anyio.sleep(0.3)
    assert (await app.get_job(c.id)).state is JobState.AVAILABLE


async def test_a_worker_of_several_queues_runs_their_jobs_in_one_priority_order(app: App) -> None:
    """With one slot and queues a and b, jobs of both run highest priority first, then the oldest, across queues."""
    order: list[str] = []

    @app.task
    async def work(name: str) -> None:
        order.append(name)

    for name, queue, priority in [
        ("a-low", "a", 0),
        ("b-high", "b", 5),
        ("a-mid", "a", 3),
        ("b-low", "b", 0),
        ("a-high", "a", 5),
    ]:
        last = await work.configure(queue=queue, priority=priority).defer(name=name)
    async with open_worker(app, **fast(queues=["a", "b"], concurrency=1)):
        await wait_until(lambda: len(order) == 5)
    assert order == ["b-high", "a-high", "a-mid", "a-low", "b-low"]
    assert (await app.get_job(last.id)).state is JobState.COMPLETED


async def test_an_error_message_with_nul_or_a_lone_surrogate_is_stored_escaped(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure whose message holds NUL and a lone surrogate is recorded with both written as escapes."""
    # The worker's log line carries the raw message; pytest-xdist cannot ship a lone surrogate.
    caplog.set_level(logging.CRITICAL, logger="nursery_worker")

    @app.task(max_attempts=1)
    async def bad(text: str) -> None:
        raise ValueError(text + "\x00" + "\ud800")

    job = await bad.defer(text="decoded from bytes: ")
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert gone.errors[-1].message == "decoded from bytes: \\x00\\ud800"


async def test_a_job_of_an_unknown_task_is_discarded(app: App) -> None:
    """A job whose task this worker does not know is discarded with an error naming the task."""
    (job,) = await app.defer_many([app.job_by_name("nobody.knows", {})])
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert "nobody.knows" in gone.errors[-1].message


async def test_a_scheduled_job_runs_once_due(app: App) -> None:
    """A job deferred with a short delay is promoted and run after it, not before."""
    ran: list[dt.datetime] = []

    @app.task
    async def later() -> None:
        ran.append(dt.datetime.now(dt.UTC))

    job = await later.configure(delay=0.5).defer()
    assert job.state is JobState.SCHEDULED
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert len(ran) == 1
    assert done.attempted_at is not None and done.attempted_at >= job.scheduled_at


# --- outcomes -----------------------------------------------------------------------------------


async def test_snooze_schedules_the_job_later_and_gives_the_attempt_back(app: App) -> None:
    """``raise Snooze(60)`` makes the job scheduled 60 s later, its attempt not counted, no error recorded."""

    @app.task(max_attempts=3)
    async def poll() -> None:
        raise Snooze(60)

    job = await poll.defer()
    async with open_worker(app, **fast()):
        snoozed = await wait_for_state(app, job.id, JobState.SCHEDULED)
    assert (snoozed.attempt, snoozed.errors, snoozed.worker_id, snoozed.finished_at) == (0, (), None, None)
    assert snoozed.attempted_at is not None
    assert dt.timedelta(seconds=59) < snoozed.scheduled_at - snoozed.attempted_at <= dt.timedelta(seconds=61)


async def test_snooze_zero_runs_the_job_again(app: App) -> None:
    """``Snooze(0)`` makes the job available again at once; it runs again and can complete."""
    calls: list[int] = []

    @app.task(max_attempts=1)
    async def twice() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Snooze(0)

    job = await twice.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert len(calls) == 2 and done.attempt == 1


async def test_retry_after_makes_the_job_retryable_at_that_time(app: App) -> None:
    """``raise Retry(after=30)`` records a failed attempt due 30 s later, whatever the task's policy."""

    @app.task(max_attempts=3, retry=3600)
    async def limited() -> None:
        raise Retry(after=30, reason="rate limited")

    job = await limited.defer()
    async with open_worker(app, **fast()):
        failed = await wait_for_state(app, job.id, JobState.RETRYABLE)
    (error,) = failed.errors
    assert (failed.attempt, error.type, error.message) == (1, "Retry", "rate limited")
    assert error.at is not None and failed.scheduled_at - error.at == dt.timedelta(seconds=30)


async def test_discard_discards_at_once_with_attempts_left(app: App) -> None:
    """``raise Discard(...)`` discards the job on its first attempt, with the reason recorded."""

    @app.task(max_attempts=10)
    async def closed() -> None:
        raise Discard("account closed")

    job = await closed.defer()
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert gone.attempt == 1 and gone.finished_at is not None
    assert gone.errors[-1].message == "account closed"


async def test_a_per_job_retry_policy_is_stored_and_used(app: App) -> None:
    """``configure(retry=ConstantBackoff(seconds=7))`` is stored on the job and sets its retry delay."""

    @app.task(retry=3600, max_attempts=3)
    async def fails() -> None:
        raise RuntimeError("no")

    job = await fails.configure(retry=ConstantBackoff(seconds=7)).defer()
    assert job.retry_policy is not None
    async with open_worker(app, **fast()):
        failed = await wait_for_state(app, job.id, JobState.RETRYABLE)
    assert failed.retry_policy == job.retry_policy
    (error,) = failed.errors
    assert error.at is not None and failed.scheduled_at - error.at == dt.timedelta(seconds=7)


async def test_a_retried_job_runs_again_when_due_and_completes(app: App) -> None:
    """A job that failed once is promoted when due, runs again and completes on attempt 2."""
    calls: list[int] = []

    @app.task(retry=0.2, max_attempts=3)
    async def second_time_lucky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first")

    job = await second_time_lucky.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.attempt == 2 and [e.message for e in done.errors] == ["first"]


# --- results ------------------------------------------------------------------------------------


async def test_the_return_value_is_stored_as_the_result(app: App) -> None:
    """A task's JSON return value is stored on its job; None stores no result."""

    @app.task
    async def compute(n: int) -> object:
        return {"n": n, "list": [1, 2.5, "x", None, True], "nested": {"a": []}} if n else None

    job = await compute.defer(n=2)
    empty = await compute.defer(n=0)
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
        nothing = await wait_for_state(app, empty.id, JobState.COMPLETED)
    assert done.result == {"n": 2, "list": [1, 2.5, "x", None, True], "nested": {"a": []}}
    assert nothing.result is None


async def test_a_return_value_that_is_not_json_discards_the_job(app: App) -> None:
    """A task returning a set is discarded with an error naming the task, and no result."""

    @app.task(max_attempts=5)
    async def bad() -> object:
        return {1, 2}

    job = await bad.defer()
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert gone.result is None
    assert bad.name in gone.errors[-1].message


async def test_wait_for_returns_the_result_woken_by_the_finish(app: App) -> None:
    """``wait_for`` returns the completed job with its result, woken well before its 30 s poll."""

    @app.task
    async def slow_add(a: int, b: int) -> int:
        await anyio.sleep(0.2)
        return a + b

    job = await slow_add.defer(a=2, b=3)
    async with open_worker(app, **fast()):
        with anyio.fail_after(10):
            done = await app.wait_for(job.id, poll_interval=30)
    assert done.result == 5


async def test_wait_for_raises_job_failed_for_a_discarded_job(app: App) -> None:
    """``wait_for`` of a job that ends discarded raises JobFailed carrying the job."""
    from nursery_worker import JobFailed

    @app.task(max_attempts=1)
    async def doomed() -> None:
        raise RuntimeError("nope")

    job = await doomed.defer()
    async with open_worker(app, **fast()):
        with pytest.raises(JobFailed) as info:
            await app.wait_for(job.id, timeout=10)
    assert info.value.job.state is JobState.DISCARDED


async def test_wait_for_times_out_and_leaves_the_job_alone(app: App) -> None:
    """``wait_for`` with no worker running raises TimeoutError after its timeout, and the job stays available."""

    @app.task
    async def never() -> None: ...

    job = await never.defer()
    with pytest.raises(TimeoutError):
        await app.wait_for(job.id, timeout=0.3, poll_interval=0.05)
    assert (await app.get_job(job.id)).state is JobState.AVAILABLE


async def test_several_jobs_run_concurrently_up_to_the_concurrency(app: App) -> None:
    """A worker with concurrency 4 runs four jobs at once, never five."""
    running = 0
    peak = 0
    release = anyio.Event()

    @app.task
    async def hold() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    jobs = await app.defer_many([hold.job() for _ in range(6)])
    async with open_worker(app, **fast(concurrency=4)):
        await wait_until(lambda: running == 4)
        await anyio.sleep(0.3)
        assert peak == 4
        release.set()
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED)
    assert peak == 4


# --- the testing helpers ------------------------------------------------------------------------


async def test_drain_runs_every_due_job_and_sorts_the_outcomes(app: App) -> None:
    """``testing.drain`` runs the due jobs in-process and reports each attempt's outcome."""
    from nursery_worker.testing import drain

    @app.task(max_attempts=1)
    async def judge(ok: bool) -> None:
        if not ok:
            raise RuntimeError("no")

    good = await judge.defer(ok=True)
    bad = await judge.defer(ok=False)
    result = await drain(app)
    assert [j.id for j in result.completed] == [good.id]
    assert [j.id for j in result.discarded] == [bad.id]


async def test_isolated_schema_gives_a_fresh_schema_and_drops_it(app: App) -> None:
    """``testing.isolated_schema`` points the app at a fresh, empty schema for the block and back after it."""
    from nursery_worker.testing import isolated_schema

    @app.task
    async def noop() -> None: ...

    outside = await noop.defer()
    previous = app.schema
    async with isolated_schema(app) as isolated:
        assert isolated.schema != previous
        assert await isolated.list_jobs() == []
        inside = await noop.defer()
        assert [j.id for j in await isolated.list_jobs()] == [inside.id]
    assert app.schema == previous
    assert [j.id for j in await app.list_jobs()] == [outside.id]
