"""JobContext injection and middleware (around, before_job, after_job), run by a real worker on
PostgreSQL: what a task learns about its job, the order middlewares wrap it, and their failures."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import anyio
import pytest

from nursery_worker import App, CallNext, ConstantBackoff, Job, JobContext, JobState, open_worker

from .helpers import fast, wait_for_state

pytestmark = pytest.mark.anyio

FINISHED = (JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED, JobState.RETRYABLE)


async def _run(app: App, *job_ids: int, queues: tuple[str, ...] = ("default",)) -> list[Job]:
    """Run a fast worker until every job in *job_ids* has an outcome; return their snapshots."""
    async with open_worker(app, queues=queues, **fast()):
        return [await wait_for_state(app, job_id, *FINISHED, within=20) for job_id in job_ids]


def _facts(context: JobContext) -> dict[str, Any]:
    """What a task reports about its context, as JSON."""
    return {
        "job_id": context.job_id,
        "attempt": context.attempt,
        "max_attempts": context.max_attempts,
        "queue": context.queue,
        "task": context.task,
        "worker_id": context.worker_id,
        "args": dict(context.job.args),
        "deadline": None if context.deadline is None else context.deadline.isoformat(),
        "time_left": context.time_left,
        "same_app": context.app is not None,
    }


# --- JobContext ------------------------------------------------------------------------------


async def test_a_parameter_annotated_job_context_receives_the_running_jobs_context(app: App) -> None:
    """A task's JobContext parameter (any name) gets the job's id, attempt, budget, queue, task and worker."""
    worker_ids: list[str] = []

    @app.task(queue="ctx", max_attempts=7)
    async def report(n: int, whatever_name: JobContext) -> dict[str, Any]:
        return _facts(whatever_name) | {"n": n}

    job = await report.defer(n=3)
    async with open_worker(app, queues=["ctx"], **fast()) as worker:
        worker_ids.append(worker.id)
        done = await wait_for_state(app, job.id, *FINISHED, within=20)

    assert done.state is JobState.COMPLETED, done.errors
    facts = done.result
    assert facts["job_id"] == job.id
    assert facts["attempt"] == 1
    assert facts["max_attempts"] == 7
    assert facts["queue"] == "ctx"
    assert facts["task"] == report.name
    assert facts["worker_id"] == worker_ids[0]
    assert facts["args"] == {"n": 3}
    assert facts["n"] == 3
    assert facts["deadline"] is None and facts["time_left"] is None
    assert facts["same_app"] is True


async def test_the_context_shows_the_attempt_of_a_retried_job(app: App) -> None:
    """On its second attempt a job's context says attempt 2."""
    attempts: list[int] = []

    @app.task(retry=0)
    async def flaky(context: JobContext) -> int:
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise RuntimeError("first time fails")
        return context.attempt

    job = await flaky.defer()
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED, JobState.DISCARDED, within=20)

    assert done.state is JobState.COMPLETED
    assert attempts == [1, 2]
    assert done.result == 2


async def test_a_string_annotation_job_context_is_recognised(app: App) -> None:
    """An explicit string annotation 'JobContext' (as under postponed annotations) injects the context."""

    @app.task
    async def report(ctx: "JobContext") -> int:  # noqa: UP037 - the string form is what is under test
        return ctx.job_id

    job = await report.defer()
    (done,) = await _run(app, job.id)
    assert done.state is JobState.COMPLETED, done.errors
    assert done.result == job.id


async def test_a_job_context_parameter_is_found_when_other_annotations_cannot_be_resolved(app: App) -> None:
    """With an unresolvable forward reference beside it, the 'JobContext' annotation is still recognised."""

    @app.task
    async def report(n: NotDefinedAnywhere, ctx: JobContext) -> int:  # type: ignore[name-defined]  # noqa: F821
        return ctx.job_id + n  # type: ignore[no-any-return]

    job = await report.defer(n=1000)
    (done,) = await _run(app, job.id)
    assert done.state is JobState.COMPLETED, done.errors
    assert done.result == job.id + 1000


async def test_the_deadline_is_set_from_the_tasks_timeout(app: App) -> None:
    """A task with a timeout sees a UTC deadline about that far ahead, and a matching time_left."""

    @app.task(timeout=30)
    async def report(context: JobContext) -> dict[str, Any]:
        return _facts(context) | {"now": dt.datetime.now(dt.UTC).isoformat()}

    job = await report.defer()
    (done,) = await _run(app, job.id)

    assert done.state is JobState.COMPLETED, done.errors
    deadline = dt.datetime.fromisoformat(done.result["deadline"])
    now = dt.datetime.fromisoformat(done.result["now"])
    assert deadline.utcoffset() == dt.timedelta(0)
    assert 25 < (deadline - now).total_seconds() <= 30.5
    assert 25 < done.result["time_left"] <= 30.5


async def test_defer_rejects_an_argument_for_the_context_parameter(app: App) -> None:
    """The context is not a job argument: passing it to defer is a TypeError, and it is not required."""

    @app.task
    async def report(n: int, context: JobContext) -> None: ...

    with pytest.raises(TypeError, match="context"):
        await report.defer(n=1, context="mine")
    job = await report.defer(n=1)  # not required either
    assert job.args == {"n": 1}


async def test_a_sync_task_receives_the_context_too(app: App) -> None:
    """A plain def task gets the JobContext, in its worker thread."""
    threads: list[int] = []

    @app.task
    def report(context: JobContext) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return _facts(context)

    job = await report.defer()
    (done,) = await _run(app, job.id)

    assert done.state is JobState.COMPLETED, done.errors
    assert done.result["job_id"] == job.id
    assert done.result["attempt"] == 1
    assert threads and threads[0] != threading.get_ident()


# --- middleware ------------------------------------------------------------------------------


async def test_middlewares_run_around_each_job_in_registration_order(app: App) -> None:
    """The first middleware registered is the outermost: mw1-before, mw2-before, task, mw2-after, mw1-after."""
    events: list[str] = []

    @app.middleware
    async def mw1(context: JobContext, call_next: CallNext) -> Any:
        events.append(f"mw1-before:{context.job_id}")
        result = await call_next()
        events.append(f"mw1-after:{context.job_id}")
        return result

    @app.middleware
    async def mw2(context: JobContext, call_next: CallNext) -> Any:
        events.append(f"mw2-before:{context.job_id}")
        result = await call_next()
        events.append(f"mw2-after:{context.job_id}")
        return result

    @app.task
    async def work(n: int) -> None:
        events.append(f"task:{n}")

    job = await work.defer(n=5)
    (done,) = await _run(app, job.id)

    assert done.state is JobState.COMPLETED
    i = job.id
    assert events == [f"mw1-before:{i}", f"mw2-before:{i}", "task:5", f"mw2-after:{i}", f"mw1-after:{i}"]


async def test_middleware_runs_once_around_every_job(app: App) -> None:
    """Each job gets its own pass through the middleware, with its own context."""
    seen: list[int] = []

    @app.middleware
    async def record(context: JobContext, call_next: CallNext) -> Any:
        seen.append(context.job_id)
        return await call_next()

    @app.task
    async def work(n: int) -> int:
        return n

    jobs = [await work.defer(n=n) for n in range(3)]
    done = await _run(app, *(j.id for j in jobs))

    assert [d.state for d in done] == [JobState.COMPLETED] * 3
    assert sorted(seen) == sorted(j.id for j in jobs)


async def test_middleware_sees_the_result_and_can_replace_it(app: App) -> None:
    """What call_next returns is the task's result; what the middleware returns is what gets stored."""
    seen: list[Any] = []

    @app.middleware
    async def wrap(context: JobContext, call_next: CallNext) -> Any:
        result = await call_next()
        seen.append(result)
        return {"wrapped": result}

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    job = await add.defer(a=2, b=3)
    (done,) = await _run(app, job.id)

    assert seen == [5]
    assert done.state is JobState.COMPLETED
    assert done.result == {"wrapped": 5}


async def test_middleware_wraps_sync_tasks(app: App) -> None:
    """Middleware runs around plain def tasks too; call_next runs the thread and returns its result."""
    events: list[str] = []

    @app.middleware
    async def mw(context: JobContext, call_next: CallNext) -> Any:
        events.append("before")
        result = await call_next()
        events.append(f"after:{result}")
        return result

    @app.task
    def work() -> str:
        events.append("task")
        return "ok"

    job = await work.defer()
    (done,) = await _run(app, job.id)

    assert done.state is JobState.COMPLETED and done.result == "ok"
    assert events == ["before", "task", "after:ok"]


async def test_a_middleware_that_raises_fails_the_job_and_the_worker_goes_on(app: App) -> None:
    """A middleware exception makes the job retryable with the error recorded; other jobs still complete."""

    @app.middleware
    async def picky(context: JobContext, call_next: CallNext) -> Any:
        if context.job.args.get("n") == 1:
            raise PermissionError("middleware says no")
        return await call_next()

    ran: list[int] = []

    @app.task(retry=ConstantBackoff(seconds=600))
    async def work(n: int) -> int:
        ran.append(n)
        return n

    bad = await work.defer(n=1)
    good = await work.defer(n=2)
    async with open_worker(app, **fast()) as worker:
        failed = await wait_for_state(app, bad.id, JobState.RETRYABLE, JobState.DISCARDED, within=20)
        ok = await wait_for_state(app, good.id, JobState.COMPLETED, JobState.DISCARDED, within=20)
        later = await work.defer(n=3)
        after = await wait_for_state(app, later.id, JobState.COMPLETED, JobState.DISCARDED, within=20)
        assert worker.state.value == "running"

    assert failed.state is JobState.RETRYABLE
    assert failed.attempt == 1
    assert [(e.type, e.message) for e in failed.errors] == [("PermissionError", "middleware says no")]
    assert ok.state is JobState.COMPLETED and ok.result == 2
    assert after.state is JobState.COMPLETED and after.result == 3
    assert 1 not in ran


async def test_registering_a_non_async_middleware_is_a_type_error(app: App) -> None:
    """@app.middleware, @app.before_job and @app.after_job refuse plain def functions."""

    def mw(context: JobContext, call_next: CallNext) -> Any:
        return call_next()

    def before(context: JobContext) -> None: ...

    def after(context: JobContext, result: Any, error: BaseException | None) -> None: ...

    with pytest.raises(TypeError, match="async def"):
        app.middleware(mw)
    with pytest.raises(TypeError, match="async def"):
        app.before_job(before)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async def"):
        app.after_job(after)  # type: ignore[arg-type]
    assert app.middlewares == []


# --- before_job / after_job ------------------------------------------------------------------


async def test_before_and_after_job_hooks_run_with_the_context_and_the_result(app: App) -> None:
    """before_job gets (context) before the task; after_job gets (context, result, None) after it."""
    events: list[Any] = []

    @app.before_job
    async def before(context: JobContext) -> None:
        events.append(("before", context.job_id))

    @app.after_job
    async def after(context: JobContext, result: Any, error: BaseException | None) -> None:
        events.append(("after", context.job_id, result, error))

    @app.task
    async def work(n: int) -> int:
        events.append(("task", n))
        return n * 10

    job = await work.defer(n=4)
    (done,) = await _run(app, job.id)

    assert done.state is JobState.COMPLETED and done.result == 40
    assert events == [("before", job.id), ("task", 4), ("after", job.id, 40, None)]


async def test_after_job_sees_the_tasks_exception_and_the_job_still_fails(app: App) -> None:
    """after_job gets (context, None, exc) when the task raises; the job's outcome is the task's failure."""
    errors: list[tuple[Any, BaseException | None]] = []

    @app.after_job
    async def after(context: JobContext, result: Any, error: BaseException | None) -> None:
        errors.append((result, error))

    @app.task(retry=ConstantBackoff(seconds=600))
    async def work() -> None:
        raise ValueError("boom")

    job = await work.defer()
    (done,) = await _run(app, job.id)

    assert len(errors) == 1
    result, error = errors[0]
    assert result is None
    assert isinstance(error, ValueError) and str(error) == "boom"
    assert done.state is JobState.RETRYABLE
    assert [(e.type, e.message) for e in done.errors] == [("ValueError", "boom")]


async def test_a_before_job_hook_that_raises_fails_the_job_before_it_runs(app: App) -> None:
    """An exception from before_job fails the attempt (recorded) and the task does not run."""
    ran: list[int] = []

    @app.before_job
    async def gate(context: JobContext) -> None:
        raise RuntimeError("not today")

    @app.task(retry=ConstantBackoff(seconds=600))
    async def work() -> None:
        ran.append(1)

    job = await work.defer()
    (done,) = await _run(app, job.id)

    assert ran == []
    assert done.state is JobState.RETRYABLE
    assert [(e.type, e.message) for e in done.errors] == [("RuntimeError", "not today")]


async def test_hooks_and_middlewares_share_one_registration_order(app: App) -> None:
    """before_job, a middleware and after_job registered in that order nest in that order."""
    events: list[str] = []

    @app.before_job
    async def before(context: JobContext) -> None:
        events.append("before_job")

    @app.middleware
    async def mw(context: JobContext, call_next: CallNext) -> Any:
        events.append("mw-before")
        result = await call_next()
        events.append("mw-after")
        return result

    @app.after_job
    async def after(context: JobContext, result: Any, error: BaseException | None) -> None:
        events.append("after_job")

    @app.task
    async def work() -> None:
        events.append("task")

    job = await work.defer()
    (done,) = await _run(app, job.id)

    assert done.state is JobState.COMPLETED
    assert events == ["before_job", "mw-before", "task", "after_job", "mw-after"]


# --- known bugs ------------------------------------------------------------------------------


async def test_an_optional_job_context_parameter_receives_the_context(app: App) -> None:
    """A parameter annotated 'JobContext | None' (so the function can be called directly) still gets the context."""

    @app.task
    async def report(context: JobContext | None = None) -> int | None:
        return None if context is None else context.job_id

    with pytest.raises(TypeError):
        await report.defer(context="not a context")
    job = await report.defer()
    (done,) = await _run(app, job.id)
    assert done.result == job.id


async def test_after_job_sees_a_timeout(app: App) -> None:
    """after_job is told about an attempt that failed by exceeding the task's timeout."""
    errors: list[BaseException | None] = []

    @app.after_job
    async def after(context: JobContext, result: Any, error: BaseException | None) -> None:
        errors.append(error)

    @app.task(timeout=0.2, max_attempts=1)
    async def slow() -> None:
        await anyio.sleep(30)

    job = await slow.defer()
    (done,) = await _run(app, job.id)

    assert done.state is JobState.DISCARDED
    assert [e.type for e in done.errors] == ["TimeoutError"]
    assert len(errors) == 1 and isinstance(errors[0], TimeoutError)
