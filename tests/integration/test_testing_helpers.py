"""The helpers of ``nursery_worker.testing`` against real PostgreSQL: ``run_task`` and
``make_context`` (no worker), ``drain`` (a once-mode worker in-process) and ``isolated_schema``."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from nursery_worker import App, Discard, JobContext, JobState, Retry, Snooze
from nursery_worker.testing import DrainResult, drain, isolated_schema, make_context, run_task

from .helpers import Connection, query

pytestmark = pytest.mark.anyio


# --- run_task and make_context ---------------------------------------------------------------


async def test_run_task_awaits_an_async_task_and_returns_its_result(app: App, db: Connection) -> None:
    """run_task calls an async task's function with the keyword arguments and returns what it returned."""

    @app.task
    async def add(a: int, b: int) -> int:
        await anyio.lowlevel.checkpoint()
        return a + b

    assert await run_task(add, a=2, b=3) == 5
    assert (await query(db, "SELECT count(*) FROM jobs"))[0][0] == 0  # nothing was enqueued


async def test_run_task_runs_a_sync_task_in_a_thread(app: App) -> None:
    """run_task runs a plain def task in another thread and returns its result."""
    threads: list[int] = []

    @app.task
    def shout(word: str) -> str:
        threads.append(threading.get_ident())
        return word.upper()

    assert await run_task(shout, word="hi") == "HI"
    assert threads and threads[0] != threading.get_ident()


async def test_run_task_injects_a_default_context(app: App) -> None:
    """A task that declares a JobContext gets a fake one: attempt 1, worker 'testing', its args and options."""

    @app.task(queue="reports", max_attempts=4)
    async def report(n: int, context: JobContext) -> dict[str, Any]:
        return {
            "attempt": context.attempt,
            "max_attempts": context.max_attempts,
            "queue": context.queue,
            "task": context.task,
            "worker_id": context.worker_id,
            "args": dict(context.job.args),
            "state": context.job.state.value,
            "deadline": context.deadline,
            "app": context.app is app,
        }

    facts = await run_task(report, n=9)

    assert facts == {
        "attempt": 1,
        "max_attempts": 4,
        "queue": "reports",
        "task": report.name,
        "worker_id": "testing",
        "args": {"n": 9},
        "state": "executing",
        "deadline": None,
        "app": True,
    }


async def test_run_task_passes_a_context_made_with_make_context(app: App) -> None:
    """A context built with make_context(attempt=..., job_id=...) is what the task sees."""

    @app.task
    def report(context: JobContext) -> tuple[int, int, str]:
        return context.job_id, context.attempt, context.worker_id

    context = make_context(report, job_id=41, attempt=3, worker_id="w-1")

    assert await run_task(report, job_context=context) == (41, 3, "w-1")


async def test_run_task_propagates_snooze_and_discard(app: App) -> None:
    """Snooze, Retry and Discard raised by the task come out of run_task for pytest.raises."""

    @app.task
    async def outcome(kind: str) -> None:
        if kind == "snooze":
            raise Snooze(30)
        if kind == "retry":
            raise Retry(after=5, reason="later")
        raise Discard("no such user")

    with pytest.raises(Snooze) as snoozed:
        await run_task(outcome, kind="snooze")
    assert snoozed.value.seconds == 30
    with pytest.raises(Retry):
        await run_task(outcome, kind="retry")
    with pytest.raises(Discard, match="no such user"):
        await run_task(outcome, kind="discard")


async def test_run_task_checks_the_arguments_against_the_signature(app: App) -> None:
    """Arguments that do not fit the task's function raise TypeError before it is called."""
    called: list[int] = []

    @app.task
    async def work(n: int) -> None:
        called.append(n)

    with pytest.raises(TypeError):
        await run_task(work, m=1)
    assert called == []


# --- drain -----------------------------------------------------------------------------------


async def test_drain_of_an_empty_queue_runs_nothing(app: App) -> None:
    """With no jobs, drain returns an empty DrainResult."""

    @app.task
    async def work() -> None: ...

    result = await drain(app)
    assert result == DrainResult()
    assert result.attempts == 0


async def test_drain_runs_every_available_job_and_reports_them_completed_with_results(app: App) -> None:
    """drain works off all available jobs; completed holds a fresh snapshot of each with its result."""

    @app.task
    async def square(n: int) -> int:
        return n * n

    jobs = [await square.defer(n=n) for n in range(5)]

    result = await drain(app)

    assert result.attempts == 5
    assert sorted(j.id for j in result.completed) == [j.id for j in jobs]
    assert all(j.state is JobState.COMPLETED for j in result.completed)
    assert {j.args["n"]: j.result for j in result.completed} == {n: n * n for n in range(5)}
    assert (result.retried, result.discarded, result.snoozed, result.cancelled) == ((), (), (), ())
    for job in jobs:
        assert (await app.get_job(job.id)).state is JobState.COMPLETED


async def test_drain_reports_retried_discarded_and_snoozed_attempts(app: App) -> None:
    """A job that fails once then completes is in retried and completed; Discard and Snooze land in their buckets."""
    runs: dict[str, int] = {}

    @app.task(retry=0)
    async def flaky() -> str:
        runs["flaky"] = runs.get("flaky", 0) + 1
        if runs["flaky"] == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    @app.task
    async def hopeless() -> None:
        raise Discard("bad input")

    @app.task
    async def sleepy() -> None:
        raise Snooze(3600)

    f = await flaky.defer()
    h = await hopeless.defer()
    s = await sleepy.defer()

    result = await drain(app)

    assert [j.id for j in result.retried] == [f.id]
    assert [j.id for j in result.completed] == [f.id]
    assert result.completed[0].result == "ok"
    assert result.retried[0].state is JobState.COMPLETED  # a fresh snapshot, taken after the drain
    assert [j.id for j in result.discarded] == [h.id]
    assert result.discarded[0].state is JobState.DISCARDED
    assert [e.type for e in result.discarded[0].errors] == ["Discard"]
    assert [j.id for j in result.snoozed] == [s.id]
    assert result.snoozed[0].state is JobState.SCHEDULED
    assert result.snoozed[0].attempt == 0
    assert result.attempts == 4


async def test_drain_with_queues_runs_only_those_queues(app: App) -> None:
    """drain(queues=[...]) leaves the jobs of other queues available."""

    @app.task(queue="fast")
    async def quick() -> None: ...

    @app.task(queue="slow")
    async def slow() -> None: ...

    q = await quick.defer()
    s = await slow.defer()
    d = await quick.configure(queue="default").defer()

    result = await drain(app, queues=["fast"])

    assert [j.id for j in result.completed] == [q.id]
    assert (await app.get_job(s.id)).state is JobState.AVAILABLE
    assert (await app.get_job(d.id)).state is JobState.AVAILABLE


async def test_drain_by_default_runs_the_queues_of_every_registered_task(app: App) -> None:
    """Without queues=, drain works the registered tasks' queues and 'default'."""

    @app.task(queue="emails")
    async def email() -> None: ...

    @app.task
    async def plain() -> None: ...

    jobs = [await email.defer(), await plain.defer()]
    result = await drain(app)

    assert sorted(j.id for j in result.completed) == [j.id for j in jobs]


async def test_drain_runs_jobs_deferred_by_the_jobs_it_runs(app: App) -> None:
    """A follow-up job enqueued by a running job (through its context's app) is drained in the same call."""

    @app.task
    async def child(n: int) -> int:
        return n

    @app.task
    async def parent(context: JobContext) -> None:
        await child.defer(n=context.job_id)

    p = await parent.defer()
    result = await drain(app)

    assert sorted(j.task for j in result.completed) == sorted([parent.name, child.name])
    (c,) = [j for j in result.completed if j.task == child.name]
    assert c.result == p.id


# --- isolated_schema -------------------------------------------------------------------------


async def test_isolated_schema_gives_a_fresh_migrated_schema_where_jobs_land(
    app: App, db: Connection, schema: str
) -> None:
    """Inside isolated_schema the app points at a new, migrated schema; jobs deferred there do not reach the old one."""

    @app.task
    async def work(n: int) -> int:
        return n

    async with isolated_schema(app) as isolated:
        assert isolated is app
        assert app.schema != schema
        assert app.schema.startswith("nw_test_")
        job = await work.defer(n=1)
        listed = await app.list_jobs()
        assert [j.id for j in listed] == [job.id]
        result = await drain(app)
        assert [j.result for j in result.completed] == [1]
        inner = app.schema
        rows = await query(db, "SELECT count(*) FROM {}.jobs".format(inner))  # noqa: UP032
        assert rows[0][0] == 1

    assert (await query(db, "SELECT count(*) FROM jobs"))[0][0] == 0


async def test_isolated_schema_drops_its_schema_and_restores_the_app(app: App, db: Connection, schema: str) -> None:
    """After the block the schema is gone from pg_namespace and the app uses its old schema again."""

    @app.task
    async def work() -> None: ...

    async with isolated_schema(app, prefix="iso") as isolated:
        inner = isolated.schema
        assert inner.startswith("iso_")
        rows = await query(db, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [inner])
        assert rows[0][0] == 1

    rows = await query(db, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [inner])
    assert rows[0][0] == 0
    assert app.schema == schema
    job = await work.defer()
    assert (await query(db, "SELECT id FROM jobs"))[0][0] == job.id


async def test_isolated_schema_drops_its_schema_when_the_block_raises(app: App, db: Connection, schema: str) -> None:
    """An exception in the block still drops the schema and restores the app, and propagates."""
    inner = ""
    with pytest.raises(RuntimeError, match="test failed"):
        async with isolated_schema(app) as isolated:
            inner = isolated.schema
            raise RuntimeError("test failed")

    rows = await query(db, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [inner])
    assert rows[0][0] == 0
    assert app.schema == schema


async def test_two_isolated_schemas_in_a_row_are_distinct_and_empty(app: App) -> None:
    """Each isolated_schema block starts from an empty schema of its own."""

    @app.task
    async def work() -> None: ...

    names = []
    for _ in range(2):
        async with isolated_schema(app):
            names.append(app.schema)
            assert await app.list_jobs() == []
            await work.defer()
    assert names[0] != names[1]


async def test_drain_raises_timeout_error_and_hands_a_stuck_job_back(app: App) -> None:
    """A drain past its timeout raises TimeoutError; the running job goes back to available, its attempt given back."""
    started = anyio.Event()

    @app.task
    async def stuck() -> None:
        started.set()
        await anyio.sleep(60)

    job = await stuck.defer()
    with pytest.raises(TimeoutError):
        await drain(app, timeout=0.5)

    assert started.is_set()
    after = await app.get_job(job.id)
    assert (after.state, after.attempt) == (JobState.AVAILABLE, 0)


# --- known bugs ------------------------------------------------------------------------------


async def test_run_task_passes_a_task_argument_named_context(app: App) -> None:
    """A task whose ordinary argument is called 'context' can be called through run_task."""

    @app.task
    async def render(context: str) -> str:
        return context.upper()

    assert await run_task(render, context="page") == "PAGE"
