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
