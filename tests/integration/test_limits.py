"""Global concurrency and rate limits, per task (optionally partitioned) and per queue: enforced
where jobs are claimed, across workers, without using attempts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from nursery_worker import App, ConfigurationError, JobState, open_worker

from .helpers import Connection, LimitedClaims, fast, query, wait_for_state

pytestmark = pytest.mark.anyio


def _ledger(db: Connection) -> None:
    db.execute(
        "CREATE TABLE ledger (job_id bigint, key text, started timestamptz DEFAULT clock_timestamp(), "
        "ended timestamptz)"
    )


def _start(db: Connection, job_id: int, key: str = "") -> None:
    db.execute("INSERT INTO ledger (job_id, key) VALUES (%s, %s)", [job_id, key])


def _end(db: Connection, job_id: int) -> None:
    db.execute("UPDATE ledger SET ended = clock_timestamp() WHERE job_id = %s", [job_id])


async def _max_overlap(db: Connection, key: str | None = None) -> int:
    """The most ledger intervals (of *key*, or all) open at any start instant."""
    rows = await query(
        db,
        """
        SELECT max(n) FROM (
            SELECT (SELECT count(*) FROM ledger o
                    WHERE o.started <= l.started AND (o.ended IS NULL OR o.ended > l.started)
                      AND (%(key)s::text IS NULL OR o.key = %(key)s::text)) AS n
            FROM ledger l WHERE %(key)s::text IS NULL OR l.key = %(key)s::text
        ) AS x
        """,
        {"key": key},  # type: ignore[arg-type]
    )
    return int(rows[0][0] or 0)


@contextlib.asynccontextmanager
async def _workers(app: App, n: int, **options: Any) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            await stack.enter_async_context(open_worker(app, **fast(**options)))
        yield


async def test_max_concurrency_two_never_runs_three_jobs_at_once_across_three_workers(app: App, db: Connection) -> None:
    """With max_concurrency=2 and three workers of spare capacity, the ledger never shows three jobs running."""
    _ledger(db)

    from nursery_worker import JobContext

    @app.task(name="limited", max_concurrency=2)
    async def limited(n: int, ctx: JobContext) -> None:
        _start(db, ctx.job.id)
        await anyio.sleep(0.05)
        _end(db, ctx.job.id)

    jobs = await app.defer_many([limited.job(n=i) for i in range(30)])
    async with _workers(app, 3, concurrency=5):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
    assert await _max_overlap(db) == 2
    assert {(await app.get_job(j.id)).attempt for j in jobs} == {1}


async def test_a_partitioned_limit_counts_each_key_separately(app: App, db: Connection) -> None:
    """limit_by gives each customer its own max_concurrency=1, so two customers run side by side, never more."""
    _ledger(db)
    from nursery_worker import JobContext

    @app.task(max_concurrency=1, limit_by="customer")
    async def sync_account(customer: str, ctx: JobContext) -> None:
        _start(db, ctx.job.id, customer)
        await anyio.sleep(0.05)
        _end(db, ctx.job.id)

    jobs = await app.defer_many([sync_account.job(customer=c) for c in ["a", "b"] * 8])
    async with _workers(app, 2, concurrency=4):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
    assert await _max_overlap(db, "a") == 1
    assert await _max_overlap(db, "b") == 1
    assert await _max_overlap(db) == 2


async def test_a_rate_limit_holds_within_one_job_over_a_window_while_capacity_is_spare(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rate_limit='10/s' starts at most 10 * W + 1 jobs in any W seconds and refuses no claim once a slot is free."""

    @app.task(rate_limit="10/s")
    async def ping(n: int) -> None:
        pass

    await app.defer_many([ping.job(n=i) for i in range(200)])
    # Judged from what happened, not from how much got done in a stretch of this machine's time: a
    # loaded machine may ask for the next slot late, and a late ask loses that slot by design. The
    # workers poll often, so that many of their claims come when a slot is free.
    claims = LimitedClaims.record(app, monkeypatch, enough=31)
    async with _workers(app, 2, concurrency=20, poll_interval=0.03):
        with anyio.fail_after(60):  # only bounds a hang: 31 starts take three seconds or more
            await claims.enough.wait()
    starts = claims.starts()
    # Any window of W seconds holds at most 10 * W starts, within one job, checked from every start
    # the database stamped.
    for window in (1.0, 2.0, 3.0):
        worst = max(sum(1 for t in starts if s <= t < s + window) for s in starts)
        assert worst <= 10 * window + 1, (window, starts[:40])
    # And the limit is used: no claim made once the next slot had surely opened came back empty.
    assert claims.refused_with_a_free_slot(0.1) == [], claims.calls


async def test_jobs_deferred_by_a_producer_unaware_of_the_limit_are_still_limited(
    app: App, db: Connection, dsn: str, schema: str
) -> None:
    """A job deferred by name from an app that does not register the task is held to the worker's limit."""
    _ledger(db)
    from nursery_worker import JobContext

    @app.task(name="report.build", max_concurrency=1)
    async def build(n: int, ctx: JobContext) -> None:
        _start(db, ctx.job.id)
        await anyio.sleep(0.05)
        _end(db, ctx.job.id)

    producer = App(dsn=dsn, schema=schema)
    try:
        jobs = await producer.defer_many([producer.job_by_name("report.build", {"n": i}) for i in range(6)])
    finally:
        await producer.aclose()
    async with _workers(app, 2, concurrency=4):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
    assert await _max_overlap(db) == 1


async def test_jobs_held_back_by_a_limit_use_no_attempt(app: App) -> None:
    """A job waiting behind a limit stays available with attempt 0."""
    gate = anyio.Event()

    @app.task(max_concurrency=1)
    async def hold(n: int) -> None:
        await gate.wait()

    first, second = await app.defer_many([hold.job(n=1), hold.job(n=2)])
    async with open_worker(app, **fast(concurrency=5)):
        await wait_for_state(app, first.id, JobState.EXECUTING)
        await anyio.sleep(0.5)
        waiting = await app.get_job(second.id)
        assert waiting.state is JobState.AVAILABLE
        assert waiting.attempt == 0
        gate.set()
        await wait_for_state(app, second.id, JobState.COMPLETED)


async def test_queue_limits_are_stored_and_enforced_for_every_worker(app: App, db: Connection) -> None:
    """set_queue_limits(max_concurrency=1) holds two workers to one job of that queue at a time."""
    _ledger(db)
    from nursery_worker import JobContext

    @app.task(queue="reports")
    async def report(n: int, ctx: JobContext) -> None:
        _start(db, ctx.job.id)
        await anyio.sleep(0.05)
        _end(db, ctx.job.id)

    info = await app.set_queue_limits("reports", max_concurrency=1, rate_limit="1000/m")
    assert info.max_concurrency == 1
    assert info.rate_limit == "1000/60s"
    jobs = await app.defer_many([report.job(n=i) for i in range(8)])
    async with _workers(app, 2, concurrency=4, queues=["reports"]):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
    assert await _max_overlap(db) == 1
    lifted = await app.set_queue_limits("reports")
    assert lifted.max_concurrency is None and lifted.rate_limit is None


async def test_a_worker_without_the_tasks_limits_leaves_its_jobs_alone(app: App, dsn: str, schema: str) -> None:
    """A worker whose app does not know a limited task does not claim its jobs (it cannot honour the limit)."""

    @app.task(name="limited.task", max_concurrency=1)
    async def limited() -> None:
        pass

    job = await limited.defer()
    other = App(dsn=dsn, schema=schema)
    try:
        async with open_worker(other, **fast(once=True)) as worker:
            await worker.wait_stopped()
        assert (await app.get_job(job.id)).state is JobState.AVAILABLE
    finally:
        await other.aclose()


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("max_concurrency", 0, "max_concurrency=0"),
        ("max_concurrency", True, "max_concurrency=True"),
        ("rate_limit", "10 per second", "'10 per second'"),
        ("rate_limit", "0/s", "'0/s'"),
        ("rate_limit", "5/fortnight", "'5/fortnight'"),
        ("limit_by", "no such", "'no such'"),
    ],
)
async def test_invalid_limits_are_refused_at_registration(app: App, option: str, value: Any, match: str) -> None:
    """A bad limit option raises ConfigurationError naming the value."""
    extra = {"max_concurrency": 1} if option == "limit_by" else {}
    with pytest.raises(ConfigurationError, match=match):

        @app.task(**{option: value, **extra})
        async def f() -> None:
            pass


async def test_limit_by_naming_a_missing_argument_is_refused_at_defer(app: App) -> None:
    """limit_by naming an argument the job does not pass raises at the call site, before any write."""

    @app.task(max_concurrency=1, limit_by="customer")
    async def f(customer: str = "x") -> None:
        pass

    with pytest.raises(ConfigurationError, match="customer"):
        f.job()


async def test_rate_limit_forms_are_parsed(app: App) -> None:
    """'100/m', '30/10s', '5/h' and (count, seconds) are accepted and shown as count/period."""
    from nursery_worker._flow import parse_rate_limit

    assert str(parse_rate_limit("100/m", where="t")) == "100/60s"
    assert str(parse_rate_limit("30/10s", where="t")) == "30/10s"
    assert str(parse_rate_limit("5/h", where="t")) == "5/3600s"
    assert str(parse_rate_limit((3, 2.5), where="t")) == "3/2.5s"
