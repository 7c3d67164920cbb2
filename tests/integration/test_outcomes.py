"""What a task raises or returns to steer its job (Snooze, Retry, Discard), and retry policies."""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any

import anyio
import pytest

from nursery_worker import (
    App,
    ConfigurationError,
    ConstantBackoff,
    Discard,
    ExponentialBackoff,
    Job,
    JobState,
    LinearBackoff,
    Retry,
    Snooze,
    open_worker,
)
from nursery_worker.testing import drain

from .helpers import Connection, execute, fast, query, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


async def _db_now(db: Connection) -> dt.datetime:
    value: dt.datetime = (await query(db, "SELECT now()"))[0][0]
    return value


async def _make_due(db: Connection, job_id: int) -> None:
    """Move a scheduled/retryable job's scheduled_at into the past, so the promoter makes it available."""
    await execute(db, "UPDATE jobs SET scheduled_at = now() - interval '1 second' WHERE id = %s", [job_id])


# --- Snooze ---------------------------------------------------------------------------------------


async def test_returned_snooze_schedules_the_job_later_and_gives_the_attempt_back(app: App, db: Connection) -> None:
    """``return Snooze(timedelta)`` is the same as raising it."""

    @app.task
    async def poll() -> Snooze:
        return Snooze(dt.timedelta(minutes=2))

    job = await poll.defer()
    async with open_worker(app, **fast()):
        snoozed = await wait_for_state(app, job.id, JobState.SCHEDULED)
    now = await _db_now(db)
    assert snoozed.attempt == 0
    assert snoozed.result is None
    assert 110 < (snoozed.scheduled_at - now).total_seconds() <= 120


async def test_sync_task_can_snooze(app: App) -> None:
    """A plain ``def`` task that raises Snooze is snoozed too."""

    @app.task
    def poll() -> None:
        raise Snooze(60)

    job = await poll.defer()
    async with open_worker(app, **fast()):
        snoozed = await wait_for_state(app, job.id, JobState.SCHEDULED)
    assert snoozed.attempt == 0


async def test_snoozed_job_runs_again_when_due_and_completes(app: App) -> None:
    """A snoozed job runs again once its snooze is over, and can then complete, with only one attempt counted."""
    calls: list[int] = []

    @app.task(max_attempts=1)
    async def poll() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Snooze(0.2)
        return "ready"

    job = await poll.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    # Three runs with max_attempts=1: snoozes did not use the budget.
    assert len(calls) == 3
    assert done.attempt == 1
    assert done.result == "ready"
    assert done.errors == ()


async def test_snooze_zero_makes_the_job_available_again(app: App) -> None:
    """``Snooze(0)`` hands the job straight back as available; it runs again without using an attempt."""
    calls: list[int] = []
    snapshots: list[Job] = []

    @app.task(max_attempts=1)
    async def poll() -> None:
        calls.append(1)
        if len(calls) == 1:
            return Snooze(0)  # type: ignore[return-value]
        snapshots.append(await app.get_job(job.id))
        return None

    job = await poll.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert len(calls) == 2
    assert done.attempt == 1
    assert snapshots[0].attempt == 1  # the second run is attempt 1 again


async def test_snooze_zero_leaves_the_job_available(app: App) -> None:
    """After ``Snooze(0)`` the job is in state available with attempt 0 (seen while no worker runs)."""
    calls: list[int] = []

    @app.task(max_attempts=1)
    async def poll() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Snooze(0)

    job = await poll.defer()
    # concurrency=1 and the snoozed job handed back: stop the worker right after its first outcome.
    async with open_worker(app, **fast(poll_interval=30.0, listen=False)) as worker:
        await wait_until(lambda: worker.stats().snoozed == 1)
        worker.stop()
    after = await app.get_job(job.id)
    if after.state is JobState.AVAILABLE:
        assert after.attempt == 0
    else:  # the worker was quick enough to run it again before stopping
        assert after.state is JobState.COMPLETED and after.attempt == 1


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf, dt.timedelta(seconds=-3), "5", True, None])
def test_snooze_refuses_a_bad_delay_naming_it(bad: Any) -> None:
    """Snooze with a negative, NaN, infinite or non-number delay raises ConfigurationError naming the value."""
    with pytest.raises(ConfigurationError) as caught:
        Snooze(bad)
    shown = repr(bad.total_seconds()) if isinstance(bad, dt.timedelta) else repr(bad)
    assert shown in str(caught.value)
    assert "Snooze" in str(caught.value)


async def test_worker_stats_count_snoozes(app: App) -> None:
    """WorkerStats.snoozed counts attempts that snoozed, not as failures or completions."""

    @app.task
    async def poll(n: int) -> None:
        raise Snooze(60)

    jobs = await app.defer_many([poll.job(n=i) for i in range(3)])
    async with open_worker(app, **fast()) as worker:
        for job in jobs:
            await wait_for_state(app, job.id, JobState.SCHEDULED)
        await wait_until(lambda: worker.stats().snoozed == 3)
        stats = worker.stats()
    assert (stats.snoozed, stats.processed) == (3, 3)
    assert (stats.completed, stats.failed, stats.retried, stats.discarded, stats.cancelled) == (0, 0, 0, 0, 0)


async def test_snooze_beyond_the_timestamp_range_does_not_wedge_the_job(app: App) -> None:
    """A snooze too long for a timestamp is refused (raised inside the task, it fails the attempt): the job moves on."""

    @app.task(max_attempts=2, retry=0)
    async def poll() -> None:
        raise Snooze(dt.timedelta(days=999_999_999))  # about 2.7 million years

    job = await poll.defer()
    async with open_worker(app, **fast(final_timeout=0.5)):
        await wait_for_state(app, job.id, JobState.DISCARDED, within=10)
    assert (await app.get_job(job.id)).errors[-1].type == "ConfigurationError"


async def _left_executing(app: App, job_id: int) -> bool:
    return (await app.get_job(job_id)).state not in (JobState.EXECUTING, JobState.AVAILABLE)


def test_snooze_longer_than_a_hundred_years_is_refused_at_once() -> None:
    """Snooze(seconds) beyond 100 years raises ConfigurationError naming the value."""
    with pytest.raises(ConfigurationError, match="100 years"):
        Snooze(dt.timedelta(days=999_999_999))


async def test_a_poisoned_outcome_does_not_block_later_jobs_outcomes(app: App) -> None:
    """A completion the database refuses is isolated from its batch: the other outcomes are still written, and
    the refused attempt is recorded as failed (a hand-back's budget is unknown: retryable at once)."""
    from nursery_worker._completer import Completer
    from nursery_worker._models import Completion
    from nursery_worker._state import Transition

    @app.task
    async def noop() -> None: ...

    jobs = [await noop.defer() for _ in range(3)]
    claimed = await app.driver.fetch_jobs(worker_id="w-poison", queues=["default"], limit=3)
    assert len(claimed) == 3
    completer = Completer(app.driver, "w-poison", final_timeout=2.0)
    async with anyio.create_task_group() as tg:
        await tg.start(completer.serve)
        for i, job in enumerate(claimed):
            # The middle one asks for a delay no timestamp can hold: its statement is refused.
            transition = (
                Transition(state=JobState.RETRYABLE, delay=1e300) if i == 1 else Transition(state=JobState.COMPLETED)
            )
            completer.submit(
                Completion(job_id=job.id, attempt=job.attempt, attempted_at=job.attempted_at, transition=transition)
            )
        await wait_until(lambda: not completer.pending, within=10)
        completer.close()
    states = [(await app.get_job(j.id)).state for j in sorted(jobs, key=lambda j: j.id)]
    assert sorted(states) == [JobState.COMPLETED, JobState.COMPLETED, JobState.RETRYABLE]
    refused = await app.get_job(claimed[1].id)
    assert [e.type for e in refused.errors] == ["OutcomeRefused"]
    assert "refused to record this attempt's outcome (retryable)" in refused.errors[0].message


# --- Retry --------------------------------------------------------------------------------------


async def test_retry_after_seconds_makes_the_job_retryable_at_that_time(app: App, db: Connection) -> None:
    """``raise Retry(after=30)`` makes the job retryable 30 s after the failure, recorded as a "Retry" error."""

    @app.task(max_attempts=3, retry=3600)
    async def limited() -> None:
        raise Retry(after=30, reason="rate limited")

    job = await limited.defer()
    async with open_worker(app, **fast()):
        failed = await wait_for_state(app, job.id, JobState.RETRYABLE)
    now = await _db_now(db)
    assert failed.attempt == 1  # the attempt counts
    (error,) = failed.errors
    assert (error.attempt, error.type, error.message) == (1, "Retry", "rate limited")
    assert error.at is not None
    assert failed.scheduled_at - error.at == dt.timedelta(seconds=30)  # not the task's 3600
    assert 20 < (failed.scheduled_at - now).total_seconds() <= 30


async def test_returned_retry_works_like_raised_retry(app: App) -> None:
    """``return Retry(after=timedelta)`` is the same as raising it."""

    @app.task(max_attempts=3)
    async def limited() -> Retry:
        return Retry(after=dt.timedelta(seconds=45))

    job = await limited.defer()
    async with open_worker(app, **fast()):
        failed = await wait_for_state(app, job.id, JobState.RETRYABLE)
    (error,) = failed.errors
    assert error.type == "Retry"
    assert error.at is not None
    assert failed.scheduled_at - error.at == dt.timedelta(seconds=45)


async def test_retry_at_an_aware_datetime_schedules_the_retry_then(app: App) -> None:
    """``Retry(after=aware datetime)`` schedules the next attempt at about that time."""
    target = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    @app.task(max_attempts=3)
    async def limited() -> None:
        raise Retry(after=target.astimezone(dt.timezone(dt.timedelta(hours=5))))

    job = await limited.defer()
    async with open_worker(app, **fast()):
        failed = await wait_for_state(app, job.id, JobState.RETRYABLE)
    assert abs((failed.scheduled_at - target).total_seconds()) < 5


async def test_retry_on_the_last_attempt_discards_the_job(app: App) -> None:
    """Retry on the last attempt discards the job, with the "Retry" error recorded."""

    @app.task(max_attempts=1)
    async def limited() -> None:
        raise Retry(after=10, reason="still limited")

    job = await limited.defer()
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert gone.attempt == 1
    assert gone.finished_at is not None
    assert [(e.type, e.message) for e in gone.errors] == [("Retry", "still limited")]


async def test_retry_runs_again_and_can_complete(app: App) -> None:
    """A job that asked for a retry runs again once due and completes, having used two attempts."""
    calls: list[int] = []

    @app.task(max_attempts=3, retry=3600)
    async def limited() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise Retry(after=0.2)
        return len(calls)

    job = await limited.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.attempt == 2
    assert done.result == 2
    assert [e.type for e in done.errors] == ["Retry"]


@pytest.mark.parametrize("bad", [-1, math.nan, "10", dt.timedelta(seconds=-1)])
def test_retry_refuses_a_bad_delay(bad: Any) -> None:
    """Retry(after=...) with a negative, NaN or non-number delay raises ConfigurationError naming the value."""
    with pytest.raises(ConfigurationError) as caught:
        Retry(after=bad)
    shown = repr(bad.total_seconds()) if isinstance(bad, dt.timedelta) else repr(bad)
    assert shown in str(caught.value)


def test_retry_refuses_a_naive_datetime() -> None:
    """Retry(after=naive datetime) raises ConfigurationError asking for an aware one."""
    with pytest.raises(ConfigurationError, match="aware"):
        Retry(after=dt.datetime(2030, 1, 1))


# --- Discard ------------------------------------------------------------------------------------


async def test_discard_discards_at_once_with_attempts_left(app: App) -> None:
    """``raise Discard("why")`` discards the job now, though attempts are left, with the reason as the error."""
    calls: list[int] = []

    @app.task(max_attempts=5, retry=0)
    async def check() -> None:
        calls.append(1)
        raise Discard("why")

    job = await check.defer()
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert calls == [1]
    assert gone.attempt == 1
    assert gone.finished_at is not None
    (error,) = gone.errors
    assert (error.attempt, error.type, error.message) == (1, "Discard", "why")


async def test_returned_discard_discards_the_job(app: App) -> None:
    """``return Discard("why")`` discards the job like raising it, and stores no result."""

    @app.task(max_attempts=5)
    def check() -> Discard:  # a sync task, for good measure
        return Discard("account deleted")

    job = await check.defer()
    await drain(app, timeout=20)
    gone = await app.get_job(job.id)
    assert gone.state is JobState.DISCARDED
    assert gone.result is None
    assert [(e.type, e.message) for e in gone.errors] == [("Discard", "account deleted")]


# --- retry policies -------------------------------------------------------------------------------


async def _delays_of_two_failures(app: App, db: Connection, job_id: int) -> list[dt.timedelta]:
    """Run a failing job twice (making its retry due in between); return scheduled_at - error time after each."""
    delays: list[dt.timedelta] = []
    async with open_worker(app, **fast()):
        for attempt in (1, 2):
            failed: Job = await wait_until(functools.partial(_retryable_at, app, job_id, attempt))
            at = failed.errors[-1].at
            assert at is not None
            delays.append(failed.scheduled_at - at)
            if attempt == 1:
                await _make_due(db, job_id)
    return delays


async def _retryable_at(app: App, job_id: int, attempt: int) -> Job | None:
    job = await app.get_job(job_id)
    return job if job.state is JobState.RETRYABLE and job.attempt == attempt else None


async def test_linear_backoff_grows_by_its_step(app: App, db: Connection) -> None:
    """A task with LinearBackoff(base=10, step=5) waits 10 s after attempt 1 and 15 s after attempt 2."""

    @app.task(retry=LinearBackoff(base=10, step=5), max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.defer()
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=10), dt.timedelta(seconds=15)]


async def test_linear_backoff_is_capped_by_max_delay(app: App, db: Connection) -> None:
    """LinearBackoff never waits longer than its max_delay."""

    @app.task(retry=LinearBackoff(base=10, step=100, max_delay=50), max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.defer()
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=10), dt.timedelta(seconds=50)]


async def test_constant_backoff_waits_the_same_each_time(app: App, db: Connection) -> None:
    """A task with ConstantBackoff(seconds=7) waits 7 s after every failed attempt."""

    @app.task(retry=ConstantBackoff(seconds=7), max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.defer()
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=7), dt.timedelta(seconds=7)]


async def test_callable_retry_policy_gets_the_failed_attempt(app: App, db: Connection) -> None:
    """A callable policy is called with the failed attempt number and its answer is the wait."""
    seen: list[int] = []

    def policy(attempt: int) -> float:
        seen.append(attempt)
        return 100.0 * attempt

    @app.task(retry=policy, max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.defer()
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=100), dt.timedelta(seconds=200)]
    assert seen == [1, 2]


async def test_per_job_retry_policy_overrides_the_tasks_and_is_stored(app: App, db: Connection) -> None:
    """``configure(retry=ConstantBackoff(42))`` is stored on the job and used instead of the task's policy."""

    @app.task(retry=LinearBackoff(base=1000, step=1000), max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.configure(retry=ConstantBackoff(seconds=42)).defer()
    assert job.retry_policy == {"kind": "constant", "seconds": 42.0}
    stored = await app.get_job(job.id)
    assert stored.retry_policy == {"kind": "constant", "seconds": 42.0}
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=42), dt.timedelta(seconds=42)]


async def test_per_job_linear_policy_is_stored_and_used(app: App, db: Connection) -> None:
    """A per-job LinearBackoff is stored as JSON on the row and drives the job's retries."""

    @app.task(retry=3600, max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.configure(retry=LinearBackoff(base=20, step=3, max_delay=100)).defer()
    assert (await app.get_job(job.id)).retry_policy == {"kind": "linear", "base": 20, "step": 3, "max_delay": 100}
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=20), dt.timedelta(seconds=23)]


async def test_per_job_exponential_policy_without_jitter_is_used(app: App, db: Connection) -> None:
    """A per-job ExponentialBackoff(jitter=0) waits base, then base * factor."""

    @app.task(retry=3600, max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.configure(retry=ExponentialBackoff(base=8, factor=3, jitter=0)).defer()
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=8), dt.timedelta(seconds=24)]


async def test_per_job_number_retry_is_stored_as_a_constant_policy(app: App, db: Connection) -> None:
    """``configure(retry=12)`` stores a constant policy of 12 s and uses it."""

    @app.task(retry=3600, max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    job = await flaky.configure(retry=12).defer()
    assert (await app.get_job(job.id)).retry_policy == {"kind": "constant", "seconds": 12.0}
    delays = await _delays_of_two_failures(app, db, job.id)
    assert delays == [dt.timedelta(seconds=12), dt.timedelta(seconds=12)]


async def test_job_without_a_per_job_policy_stores_none(app: App) -> None:
    """A job deferred without ``configure(retry=...)`` has retry_policy None (the task's policy applies)."""

    @app.task(retry=ConstantBackoff(seconds=5))
    async def work() -> None:
        pass

    job = await work.defer()
    assert (await app.get_job(job.id)).retry_policy is None


async def test_per_job_callable_retry_is_refused_naming_the_fix(app: App) -> None:
    """``configure(retry=<callable>)`` raises ConfigurationError that says a callable works per task."""

    @app.task
    async def work() -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"@app\.task") as caught:
        work.configure(retry=lambda attempt: 5.0)
    assert "cannot be stored on a job" in str(caught.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearBackoff(base=-1),
        lambda: LinearBackoff(step=-1),
        lambda: LinearBackoff(max_delay=0),
        lambda: LinearBackoff(base=math.nan),
        lambda: ConstantBackoff(seconds=-1),
        lambda: ConstantBackoff(seconds=math.inf),
        lambda: ConstantBackoff(seconds="5"),  # type: ignore[arg-type]
    ],
    ids=["linear-base", "linear-step", "linear-max", "linear-nan", "constant-neg", "constant-inf", "constant-str"],
)
def test_backoff_policies_refuse_invalid_values(make: Any) -> None:
    """LinearBackoff and ConstantBackoff refuse negative, NaN, infinite and non-numbers with ConfigurationError."""
    with pytest.raises(ConfigurationError, match="must be a number"):
        make()


async def test_retry_policy_beyond_the_timestamp_range_does_not_wedge_the_job(app: App) -> None:
    """A (per-job) policy delay far beyond the timestamp range is refused at configure time or clamped."""

    @app.task(max_attempts=5)
    async def flaky() -> None:
        raise RuntimeError("boom")

    try:
        job = await flaky.configure(retry=ConstantBackoff(seconds=1e15)).defer()
    except ConfigurationError:
        return  # refused up front: fine
    async with open_worker(app, **fast(final_timeout=0.5)):
        await wait_until(lambda: _left_executing(app, job.id), within=2)
    assert (await app.get_job(job.id)).state is JobState.RETRYABLE
