"""Task results: return values stored on the job, non-JSON returns, and ``app.wait_for``."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

from nursery_worker import App, Discard, Job, JobFailed, JobNotFound, JobState, open_worker
from nursery_worker.testing import drain

from .helpers import Connection, execute, fast, query, wait_for_state, wait_until

pytestmark = pytest.mark.anyio

RESULTS: list[Any] = [
    {"total": 3, "items": ["a", "b"], "nested": {"ok": True, "none": None}},
    [1, 2.5, "three", None, False],
    42,
    2**70,
    -1.25,
    "héllo ✓",
    "",
    True,
    [],
    {},
]


@pytest.mark.parametrize("value", RESULTS, ids=lambda v: type(v).__name__ + ":" + repr(v)[:20])
async def test_async_task_return_value_is_stored_as_result(app: App, value: Any) -> None:
    """Whatever JSON an async task returns is stored on its completed job as ``job.result``."""

    @app.task
    async def produce() -> Any:
        return value

    job = await produce.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == value
    assert type(done.result) is type(value)


async def test_none_return_stores_no_result(app: App, db: Connection) -> None:
    """A task returning None completes with ``job.result`` None (SQL NULL, not JSON null)."""

    @app.task
    async def nothing() -> None:
        return None

    job = await nothing.defer()
    await drain(app, timeout=20)
    done = await app.get_job(job.id)
    assert done.state is JobState.COMPLETED
    assert done.result is None
    assert (await query(db, "SELECT result IS NULL FROM jobs WHERE id = %s", [job.id]))[0][0] is True


async def test_tuple_result_is_stored_as_a_list(app: App) -> None:
    """A returned tuple is stored as a JSON array and read back as a list."""

    @app.task
    async def pair() -> tuple[int, str]:
        return (1, "x")

    job = await pair.defer()
    await drain(app, timeout=20)
    assert (await app.get_job(job.id)).result == [1, "x"]


async def test_sync_task_return_value_is_stored_as_result(app: App) -> None:
    """A plain ``def`` task's return value is stored too."""

    @app.task
    def compute(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    job = await compute.defer(a=2, b=3)
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == {"sum": 5}


async def test_result_of_a_failed_then_successful_job_is_the_final_one(app: App) -> None:
    """A job that fails once then succeeds ends with the successful attempt's result."""
    calls: list[int] = []

    @app.task(retry=0, max_attempts=3)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return "second try"

    job = await flaky.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == "second try"
    assert done.attempt == 2


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


@pytest.mark.parametrize(
    ("value", "error_type"),
    [({1, 2}, "TypeError"), (_Opaque(), "TypeError"), ({"k": b"bytes"}, "TypeError"), ({1: "a"}, "TypeError")],
    ids=["set", "object", "bytes-inside", "int-key"],
)
async def test_non_json_return_discards_the_job_naming_the_task(app: App, value: Any, error_type: str) -> None:
    """A return value that is not JSON discards the job at once with a TypeError naming the task."""
    calls: list[int] = []

    @app.task(name="results.bad_return", max_attempts=5)
    async def bad() -> Any:
        calls.append(1)
        return value

    job = await bad.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert calls == [1]  # not retried: running it again would return the same
    assert done.result is None
    (error,) = done.errors
    assert error.type == error_type
    assert "results.bad_return" in error.message
    assert "not JSON" in error.message


@pytest.mark.parametrize("value", [math.nan, math.inf, {"x": [-math.inf]}], ids=["nan", "inf", "nested-inf"])
async def test_non_finite_float_return_discards_the_job_naming_the_task(app: App, value: Any) -> None:
    """A NaN or infinite float in the return value discards the job with an error naming the task and the value."""

    @app.task(name="results.nan_return", max_attempts=5)
    async def bad() -> Any:
        return value

    job = await bad.defer()
    await drain(app, timeout=20)
    done = await app.get_job(job.id)
    assert done.state is JobState.DISCARDED
    (error,) = done.errors
    # NaN is refused as a ValueError (not a TypeError like the other non-JSON values).
    assert error.type in ("TypeError", "ValueError")
    assert "results.nan_return" in error.message
    assert "nan" in error.message.lower() or "inf" in error.message.lower()


async def test_string_result_with_a_nul_character_discards_the_job(app: App) -> None:
    """A returned string with a NUL character (which PostgreSQL cannot store) discards the job instead of wedging it."""

    @app.task(name="results.nul_return", max_attempts=5)
    async def bad() -> str:
        return "a\x00b"

    job = await bad.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert "results.nul_return" in done.errors[-1].message
    assert "NUL" in done.errors[-1].message


def _job_of(exc: JobFailed) -> Job:
    """The job a JobFailed carries (typed ``object`` on the exception)."""
    assert isinstance(exc.job, Job)
    return exc.job


# --- app.wait_for --------------------------------------------------------------------------------


async def test_wait_for_returns_the_completed_job_with_its_result(app: App) -> None:
    """app.wait_for returns the completed job, result included, while a worker runs in the same task group."""

    @app.task
    async def add(a: int, b: int) -> int:
        await anyio.sleep(0.1)
        return a + b

    job = await add.defer(a=1, b=2)
    async with open_worker(app, **fast()):
        done = await app.wait_for(job.id, timeout=15)
    assert done.id == job.id
    assert done.state is JobState.COMPLETED
    assert done.result == 3


async def test_wait_for_a_job_that_already_completed_returns_at_once(app: App) -> None:
    """app.wait_for of an already completed job returns it without waiting for anything."""

    @app.task
    async def quick() -> str:
        return "done"

    job = await quick.defer()
    await drain(app, timeout=20)
    with anyio.fail_after(5):
        done = await app.wait_for(job.id, poll_interval=30)
    assert done.result == "done"


async def test_wait_for_with_zero_timeout_returns_a_finished_job(app: App) -> None:
    """app.wait_for(timeout=0) of an already completed job returns it (a check without waiting)."""

    @app.task
    async def quick() -> str:
        return "done"

    job = await quick.defer()
    await drain(app, timeout=20)
    done = await app.wait_for(job.id, timeout=0)
    assert done.result == "done"


async def test_wait_for_a_discarded_job_raises_job_failed_with_the_job(app: App) -> None:
    """app.wait_for raises JobFailed, carrying the job, when the job ends discarded."""

    @app.task(max_attempts=3)
    async def hopeless() -> None:
        raise Discard("no such account")

    job = await hopeless.defer()
    async with open_worker(app, **fast()):
        with pytest.raises(JobFailed, match="no such account") as caught:
            await app.wait_for(job.id, timeout=15)
    failed = _job_of(caught.value)
    assert failed.id == job.id
    assert failed.state is JobState.DISCARDED
    assert "discarded" in str(caught.value)


async def test_wait_for_a_job_discarded_for_its_return_value_raises_job_failed(app: App) -> None:
    """A job discarded because its return value is not JSON makes app.wait_for raise JobFailed."""

    @app.task
    async def returns_a_set() -> Any:
        return {1}

    job = await returns_a_set.defer()
    async with open_worker(app, **fast()):
        with pytest.raises(JobFailed, match="not JSON") as caught:
            await app.wait_for(job.id, timeout=15)
    assert _job_of(caught.value).state is JobState.DISCARDED


async def test_wait_for_a_cancelled_executing_job_raises_job_failed(app: App) -> None:
    """app.wait_for raises JobFailed with the cancelled job when an executing job is cancelled while it waits."""
    started = anyio.Event()

    @app.task
    async def long() -> None:
        started.set()
        await anyio.sleep(30)

    job = await long.defer()
    caught: list[JobFailed] = []

    async def waiter() -> None:
        try:
            await app.wait_for(job.id, timeout=15)
        except JobFailed as exc:
            caught.append(exc)

    async with open_worker(app, **fast()), anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        with anyio.fail_after(10):
            await started.wait()
        await app.cancel(job.id)
    (exc,) = caught
    assert _job_of(exc).state is JobState.CANCELLED
    assert "cancelled" in str(exc)


async def test_wait_for_a_job_cancelled_before_it_ran_raises_job_failed(app: App) -> None:
    """app.wait_for of a job cancelled while waiting raises JobFailed at once."""

    @app.task
    async def work() -> None:
        pass

    job = await work.defer()
    await app.cancel(job.id)
    with anyio.fail_after(5), pytest.raises(JobFailed) as caught:
        await app.wait_for(job.id, poll_interval=30)
    assert _job_of(caught.value).state is JobState.CANCELLED


async def test_wait_for_times_out_and_leaves_the_job_untouched(app: App) -> None:
    """app.wait_for raises the builtin TimeoutError when the job does not finish in time, and changes nothing."""

    @app.task
    async def work() -> None:
        pass

    job = await work.defer()
    before = await app.get_job(job.id)
    started = anyio.current_time()
    with pytest.raises(TimeoutError):
        await app.wait_for(job.id, timeout=0.3, poll_interval=0.05)
    assert anyio.current_time() - started >= 0.3
    after = await app.get_job(job.id)
    assert after == before
    assert after.state is JobState.AVAILABLE


async def test_wait_for_an_unknown_id_raises_job_not_found(app: App) -> None:
    """app.wait_for of an id that does not exist raises JobNotFound."""
    with anyio.fail_after(5), pytest.raises(JobNotFound):
        await app.wait_for(987654321, timeout=2)


async def test_wait_for_refuses_a_non_int_id(app: App) -> None:
    """app.wait_for refuses an id that is not an int with a TypeError."""
    with pytest.raises(TypeError):
        await app.wait_for("1")  # type: ignore[arg-type]


async def _listeners(db: Connection, schema: str) -> int:
    rows = await query(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE %s",
        [f'LISTEN "{schema}_events"%'],
    )
    return int(rows[0][0])


async def test_wait_for_is_woken_by_the_finish_notification(app: App, db: Connection, schema: str) -> None:
    """With a 30 s poll interval, wait_for still returns promptly after the job finishes: NOTIFY wakes it."""
    release = anyio.Event()

    @app.task
    async def gated() -> str:
        await release.wait()
        return "finished"

    job = await gated.defer()
    returned: list[Any] = []

    async def waiter() -> None:
        returned.append(await app.wait_for(job.id, timeout=20, poll_interval=30))

    # listen=False: the only LISTEN on this schema's channel is wait_for's own.
    async with open_worker(app, **fast(listen=False)), anyio.create_task_group() as tg:
        await wait_for_state(app, job.id, JobState.EXECUTING)
        tg.start_soon(waiter)
        await wait_until(lambda: _listeners(db, schema), within=10)
        # wait_for has checked the job once (executing) and is listening; the job finishes now.
        finish_started = anyio.current_time()
        release.set()
        with anyio.fail_after(8):  # far below the 30 s poll interval
            await wait_until(lambda: returned, within=8)
        took = anyio.current_time() - finish_started
    assert returned[0].result == "finished"
    assert took < 8


async def test_wait_for_finds_a_finish_without_notification_by_polling(app: App, db: Connection) -> None:
    """A job finished without any NOTIFY (a missed notification) is still found by wait_for's polling."""

    @app.task
    async def work() -> None:
        pass

    job = await work.defer()
    returned: list[Any] = []

    async def waiter() -> None:
        returned.append(await app.wait_for(job.id, timeout=15, poll_interval=0.1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        # Finish it behind every worker's back: a plain UPDATE sends no notification.
        await execute(
            db,
            "UPDATE jobs SET state = 'completed', finished_at = now(), attempt = 1, result = '{\"via\": \"sql\"}' "
            "WHERE id = %s",
            [job.id],
        )
        await wait_until(lambda: returned, within=10)
    assert returned[0].result == {"via": "sql"}


async def test_several_waiters_on_different_jobs_each_get_their_own_result(app: App) -> None:
    """Concurrent wait_for calls on different jobs each return their own job's result."""

    @app.task
    async def square(n: int) -> int:
        await anyio.sleep(0.05 * n)
        return n * n

    jobs = await app.defer_many([square.job(n=i) for i in range(4)])
    results: dict[int, Any] = {}

    async def waiter(job_id: int) -> None:
        results[job_id] = (await app.wait_for(job_id, timeout=15)).result

    async with open_worker(app, **fast()), anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(waiter, job.id)
    assert results == {job.id: i * i for i, job in enumerate(jobs)}


async def test_results_and_errors_with_quotes_backslashes_and_braces_are_stored_exactly(app: App) -> None:
    """Results and error messages holding quotes, backslashes, braces, commas and the word NULL are stored exactly."""
    text = 'a "quoted" \\ back\\slash {brace}, NULL, \\" end'

    @app.task
    async def echo(i: int) -> str:
        return f"{text} {i}"

    @app.task
    async def refuse(i: int) -> None:
        raise Discard(f"{text} {i}")

    completed = await app.defer_many([echo.job(i=i) for i in range(5)])
    discarded = await app.defer_many([refuse.job(i=i) for i in range(5)])
    await drain(app, timeout=20)
    for i, job in enumerate(completed):
        done = await app.get_job(job.id)
        assert (done.state, done.result) == (JobState.COMPLETED, f"{text} {i}")
    for i, job in enumerate(discarded):
        done = await app.get_job(job.id)
        assert done.state is JobState.DISCARDED
        assert (done.errors[-1].type, done.errors[-1].message) == ("Discard", f"{text} {i}")
