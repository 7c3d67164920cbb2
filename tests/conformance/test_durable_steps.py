"""Durable steps, sleeps, events and progress (issue 22), the same on every engine."""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
import pytest

from nursery_worker import (
    App,
    ConfigurationError,
    EventTimeout,
    JobContext,
    JobState,
    StepResultRefused,
    open_worker,
    step,
)

from ..integration.helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


async def test_a_completed_step_is_not_run_again_when_the_job_retries(app: App) -> None:
    """A step that completed returns its stored result on the next attempt without running; a failed one runs again."""
    runs: dict[str, int] = {"charge": 0, "email": 0}

    @app.task(max_attempts=3)
    async def order(context: JobContext, order_id: int) -> str:
        async def charge() -> dict[str, Any]:
            runs["charge"] += 1
            return {"charge": f"ch-{order_id}", "n": runs["charge"]}

        async def email() -> None:
            runs["email"] += 1
            if runs["email"] == 1:
                raise ConnectionError("smtp down")

        charged = await context.step("charge", charge)
        await context.step("email", email)
        return str(charged["charge"]) + f"/{charged['n']}"

    job = await order.defer(order_id=7)
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert runs == {"charge": 1, "email": 2}
    assert done.result == "ch-7/1" and done.attempt == 2
    steps = await app.get_steps(job.id)
    assert [(s.name, s.state, s.runs, s.position) for s in steps] == [
        ("charge", "completed", 1, 0),
        ("email", "completed", 2, 1),
    ]
    assert steps[0].result == {"charge": "ch-7", "n": 1}
    assert steps[1].error is None and steps[1].duration is not None


async def test_a_failed_steps_error_is_stored_until_it_runs_again(app: App) -> None:
    """A step that raised is stored as failed with its error type and message."""

    @app.task(max_attempts=1)
    async def broken(context: JobContext) -> None:
        async def boom() -> None:
            raise ValueError("no such card")

        await context.step("charge", boom)

    job = await broken.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.DISCARDED)
    (only,) = await app.get_steps(job.id)
    assert only.state == "failed" and only.error is not None
    assert (only.error.type, only.error.message) == ("ValueError", "no such card")


async def test_step_names_are_unique_within_a_job(app: App) -> None:
    """Using one step name twice in an attempt fails the attempt with a message naming the step."""

    @app.task(max_attempts=1)
    async def twice(context: JobContext) -> None:
        await context.step("a", lambda: 1)
        await context.step("a", lambda: 2)

    job = await twice.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert done.errors[-1].type == "ConfigurationError"
    assert "'a' is already used" in done.errors[-1].message


async def test_a_step_result_that_is_not_json_discards_the_job_with_a_clear_error(app: App) -> None:
    """A step returning a value JSON cannot hold fails the job for good, naming the step; it is stored as failed."""

    @app.task(max_attempts=5)
    async def bad(context: JobContext) -> None:
        await context.step("make", lambda: {1, 2})

    job = await bad.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.DISCARDED)
    assert done.attempt == 1
    assert done.errors[-1].type == "StepResultRefused" and "'make'" in done.errors[-1].message
    (only,) = await app.get_steps(job.id)
    assert only.state == "failed"


async def test_the_step_decorator_runs_once_per_job_and_numbers_repeated_calls(app: App) -> None:
    """A ``@step`` function called in a job is a durable step named by its function, numbered on repeats."""
    calls: list[int] = []

    @step
    async def send(n: int) -> int:
        calls.append(n)
        return n * 10

    attempts: list[int] = []

    @app.task(max_attempts=2)
    async def fan_out(context: JobContext) -> list[int]:
        out = [await send(1), await send(2)]
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise RuntimeError("fail after the steps")
        return out

    job = await fan_out.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert calls == [1, 2] and done.result == [10, 20]
    assert [s.name for s in await app.get_steps(job.id)] == [
        "test_the_step_decorator_runs_once_per_job_and_numbers_repeated_calls.<locals>.send",
        "test_the_step_decorator_runs_once_per_job_and_numbers_repeated_calls.<locals>.send-2",
    ]
    assert await send(3) == 30  # outside a job: a plain call


async def test_a_durable_sleep_ends_the_attempt_without_using_it_up(app: App) -> None:
    """A sleep at or above the threshold suspends the job (scheduled, waiting), then it resumes after its steps."""
    runs: list[str] = []

    @app.task(max_attempts=1)
    async def later(context: JobContext) -> str:
        await context.step("before", lambda: runs.append("before"))
        await context.sleep(0.5, name="nap")
        runs.append("after")
        return "woke"

    job = await later.defer()
    async with open_worker(app, **fast(durable_sleep_threshold=0.2)):
        waiting = await wait_for_state(app, job.id, JobState.SCHEDULED)
        assert waiting.waiting is not None
        assert (waiting.waiting.kind, waiting.waiting.step, waiting.attempt) == ("sleep", "nap", 0)
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert runs == ["before", "after"] and done.result == "woke" and done.attempt == 1
    states = {s.name: s.state for s in await app.get_steps(job.id)}
    assert states == {"before": "completed", "nap": "completed"}


async def test_a_short_sleep_waits_in_the_worker(app: App) -> None:
    """A sleep under the threshold neither suspends the job nor stores a step."""

    @app.task
    async def short(context: JobContext) -> None:
        await context.sleep(0.01)

    job = await short.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.attempt == 1 and await app.get_steps(job.id) == []


async def test_an_emit_wakes_the_waiting_job_with_its_payload(app: App) -> None:
    """A job waiting for an event is scheduled until an emit, then runs again and receives the payload."""
    received: list[Any] = []

    @app.task
    async def await_payment(context: JobContext, order_id: int) -> Any:
        payload = await context.wait_for_event(f"paid:{order_id}", timeout=3600)
        received.append(payload)
        return payload

    job = await await_payment.defer(order_id=1)
    async with open_worker(app, **fast()):
        waiting = await wait_for_state(app, job.id, JobState.SCHEDULED)
        assert waiting.waiting is not None and waiting.waiting.event == "paid:1"
        assert await app.emit("paid:1", {"amount": 5}) is True
        assert await app.emit("paid:1", {"amount": 999}) is False  # the first emit wins
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert received == [{"amount": 5}] and done.result == {"amount": 5}
    (wait,) = await app.get_steps(job.id)
    assert (wait.name, wait.state, wait.result, wait.event) == ("event:paid:1", "completed", {"amount": 5}, "paid:1")


async def test_a_late_waiter_receives_an_event_emitted_before(app: App) -> None:
    """A job that waits for an event emitted earlier gets its payload at once, without suspending."""

    @app.task
    async def late(context: JobContext) -> Any:
        return await context.wait_for_event("ready")

    assert await app.emit("ready", [1, 2]) is True
    job = await late.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == [1, 2] and done.attempt == 1


async def test_an_event_timeout_is_an_outcome_the_task_handles(app: App) -> None:
    """When the timeout passes first, the wait raises EventTimeout, which the task may catch."""

    @app.task
    async def patient(context: JobContext) -> str:
        try:
            await context.wait_for_event("never", timeout=0.3)
        except EventTimeout as exc:
            return f"timed out on {exc.key}"
        return "received"

    job = await patient.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == "timed out on never"
    (wait,) = await app.get_steps(job.id)
    assert wait.state == "timed_out"
    assert await app.emit("never", 1) is True  # a later emit changes nothing for it


async def test_progress_is_stored_on_the_job_and_kept_across_attempts(app: App) -> None:
    """A progress report is written on the job (the last one when the attempt ends) and stays after a retry."""

    @app.task(max_attempts=2)
    async def crunch(context: JobContext) -> None:
        await context.progress(1, 10, note="first")
        await context.progress(3, 10, note="held")  # within the interval: written as the attempt ends
        if context.attempt == 1:
            raise RuntimeError("again")

    job = await crunch.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.progress is not None
    assert (done.progress.done, done.progress.total, done.progress.note) == (3.0, 10.0, "held")
    assert done.progress.fraction == pytest.approx(0.3) and done.progress.updated_at is not None


async def test_bad_durable_arguments_are_refused_before_anything_is_written(app: App) -> None:
    """Bad keys, payloads, names and numbers raise at the call site with the value in the message."""
    with pytest.raises(ConfigurationError, match="event key"):
        await app.emit("", 1)
    with pytest.raises(TypeError, match="not JSON"):
        await app.emit("k", {1, 2})
    with pytest.raises(ConfigurationError, match="NUL"):
        app.emit_sync("a\x00b")
    context = JobContext(job=(await app.get_job((await _noop(app)).id)), worker_id="w")
    with pytest.raises(ConfigurationError, match="-1"):
        await context.progress(-1)
    with pytest.raises(ConfigurationError, match="aware"):
        await context.sleep_until(dt.datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="non-empty"):
        await context.step("", lambda: None)


async def _noop(app: App) -> Any:
    @app.task
    async def noop() -> None:
        pass

    return await noop.defer()


async def test_pruning_a_job_deletes_its_steps(app: App) -> None:
    """Steps go with their job when it is deleted."""

    @app.task
    async def one(context: JobContext) -> None:
        await context.step("s", lambda: 1)

    job = await one.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.COMPLETED)
    assert len(await app.get_steps(job.id)) == 1
    await app.prune(older_than=0)
    await wait_until(lambda: _gone(app, job.id))
    assert await app.driver.job_steps(job.id) == []


async def _gone(app: App, job_id: int) -> bool:
    from nursery_worker import JobNotFound

    try:
        await app.get_job(job_id)
    except JobNotFound:
        return True
    return False


async def test_an_emit_in_a_rolled_back_transaction_wakes_nobody(app: App, engine: str) -> None:
    """An emit on the caller's connection takes effect only if that transaction commits."""
    if engine == "postgres":
        import psycopg

        from ..conftest import TEST_DSN

        with psycopg.connect(TEST_DSN) as conn:
            assert app.emit_sync("tx", 1, connection=conn) is True
            conn.rollback()
            assert app.emit_sync("tx2", 2, connection=conn) is True
            conn.commit()
    else:
        import sqlite3

        from nursery_worker._dsn import parse_sqlite_dsn

        await _noop(app)  # the tables exist
        dsn = app._settings.dsn
        assert dsn is not None
        conn = sqlite3.connect(parse_sqlite_dsn(dsn).path)
        try:
            assert app.emit_sync("tx", 1, connection=conn) is True
            conn.rollback()
            assert app.emit_sync("tx2", 2, connection=conn) is True
            conn.commit()
        finally:
            conn.close()
    assert await app.emit("tx", 3) is True  # the rolled-back emit left nothing
    assert await app.emit("tx2", 4) is False


async def test_anyio_sleep_is_not_needed_to_wake_a_job_when_the_wait_ends(app: App) -> None:
    """A job waiting for an event with a short timeout is promoted at its timeout and completes."""
    done_event = anyio.Event()

    @app.task
    async def waits(context: JobContext) -> str:
        try:
            return str(await context.wait_for_event("x", timeout=dt.timedelta(milliseconds=200)))
        except EventTimeout:
            done_event.set()
            return "timeout"

    job = await waits.defer()
    async with open_worker(app, **fast()):
        with anyio.fail_after(10):
            await done_event.wait()
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == "timeout"


def test_step_result_refused_is_a_value_error() -> None:
    """StepResultRefused is a ValueError, so code that catches bad values catches it."""
    assert issubclass(StepResultRefused, ValueError)


async def test_make_context_keeps_steps_in_memory_and_answers_events_it_is_given(app: App) -> None:
    """Under testing.make_context a step runs once, a sleep returns at once, and events come from ``events=``."""
    from nursery_worker.testing import make_context, run_task

    runs: list[int] = []

    @app.task
    async def flow(context: JobContext) -> Any:
        await context.step("a", lambda: runs.append(1))
        await context.step("b", lambda: runs.append(2))
        await context.sleep(3600)
        paid = await context.wait_for_event("paid", timeout=60)
        try:
            await context.wait_for_event("refund", timeout=60)
        except EventTimeout:
            return paid
        return None

    context = make_context(flow, events={"paid": {"ok": True}})
    assert await run_task(flow, job_context=context) == {"ok": True}
    assert runs == [1, 2]


async def test_a_step_in_a_task_group_of_the_job_suspends_it_too(app: App) -> None:
    """A durable wait inside a task group the job opens still suspends the job (its exit arrives wrapped)."""

    @app.task
    async def grouped(context: JobContext) -> Any:
        out: list[Any] = []

        async def wait() -> None:
            out.append(await context.wait_for_event("grouped"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
        return out[0]

    job = await grouped.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.SCHEDULED)
        await app.emit("grouped", "go")
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == "go"


async def test_why_says_what_a_waiting_job_waits_for(app: App) -> None:
    """``jobs show --why`` of a job suspended by an event wait names the step, the key and how to wake it."""
    from nursery_worker._admin import Admin
    from nursery_worker._diagnose import diagnose

    @app.task
    async def waits(context: JobContext) -> None:
        await context.wait_for_event("approval:9", name="approval")

    job = await waits.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.SCHEDULED)
    _, reasons = await diagnose(Admin(app), job.id)
    assert reasons[0].code == "event"
    assert "'approval'" in reasons[0].message and "'approval:9'" in reasons[0].message
    assert "with no timeout" in reasons[0].message and "events emit approval:9" in reasons[0].message


async def test_names_keys_and_notes_the_database_cannot_store_are_refused_at_the_call(app: App) -> None:
    """A lone surrogate or a NUL in a step name, an event key or a progress note is refused before any write."""
    job = await _noop(app)
    context = JobContext(job=await app.get_job(job.id), worker_id="w")
    with pytest.raises(ConfigurationError, match="surrogate"):
        await context.step("bad\ud800", lambda: 1)
    with pytest.raises(ConfigurationError, match="surrogate"):
        await context.wait_for_event("key\ud800")
    with pytest.raises(ConfigurationError, match="NUL"):
        await context.progress(1, 2, note="a\x00b")
    with pytest.raises(ConfigurationError, match="surrogate"):
        await app.emit("k\udfff", 1)


async def test_a_job_of_many_steps_lists_the_first_ones_and_says_there_are_more(app: App) -> None:
    """get_steps(limit=) returns the first steps by position; jobs show lists 200 and points to --json for all."""
    from nursery_worker._status import STEP_ROWS, render_job

    @app.task
    async def many(context: JobContext) -> None:
        for i in range(STEP_ROWS + 5):
            await context.step(f"s{i}", lambda i=i: i)

    job = await many.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED, within=60)
    first = await app.get_steps(job.id, limit=3)
    assert [s.name for s in first] == ["s0", "s1", "s2"]
    assert len(await app.get_steps(job.id)) == STEP_ROWS + 5
    text = render_job(done, await app.get_steps(job.id, limit=STEP_ROWS + 1))
    assert f"steps (the first {STEP_ROWS}; --json lists every one):" in text
    assert f" s{STEP_ROWS - 1} " in text and f" s{STEP_ROWS} " not in text
    with pytest.raises(ConfigurationError, match="limit=0"):
        await app.get_steps(job.id, limit=0)
