"""The hot statements (a one-job insert, the claim, the batched completion, reading a job) run from the
event loop on an idle pooled connection, with no thread hop; without one they take a thread. Both ways
give the same results and the same errors."""

from __future__ import annotations

from typing import Any

import attrs
import psycopg
import pytest

from nursery_worker import App, DatabaseError, JobState, SchemaNotReady, open_worker

from .helpers import fast, query, wait_for_state

pytestmark = pytest.mark.anyio


def _refuse_hops(app: App, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every thread hop of the driver fail the test; return the list of hops attempted."""
    hops: list[str] = []
    driver: Any = app.driver

    async def no_hop(fn: Any) -> Any:
        hops.append(repr(fn))
        raise AssertionError("a hot statement took a thread hop")

    monkeypatch.setattr(driver, "_hop", no_hop)
    return hops


async def test_defer_get_claim_and_complete_take_no_thread_hop(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the pool is open, a job is deferred, read, claimed and completed without a worker thread."""

    @app.task
    async def work(n: int) -> int:
        return n * 2

    warm = await work.defer(n=0)  # opens the pool; its connection goes back idle
    hops = _refuse_hops(app, monkeypatch)

    job = await work.defer(n=21)
    assert (await app.get_job(job.id)).state is JobState.AVAILABLE
    jobs = await app.defer_many([work.job(n=i) for i in range(3)])  # a small batch: one statement too
    claimed = await app.driver.fetch_jobs(worker_id="w", queues=["default"], limit=10)
    assert sorted(j.id for j in claimed) == sorted([warm.id, job.id, *(j.id for j in jobs)])
    assert hops == []


async def test_a_worker_runs_jobs_with_the_direct_path_and_with_thread_hops(app: App) -> None:
    """Switching the direct path off (every statement through a thread) changes no outcome."""

    @app.task
    async def work(n: int) -> int:
        return n + 1

    for direct in (True, False):
        app.driver.direct = direct  # type: ignore[attr-defined]
        jobs = await app.defer_many([work.job(n=i) for i in range(20)])
        async with open_worker(app, **fast(concurrency=5, once=True)) as worker:
            await worker.wait_stopped()
        for job in jobs:
            done = await wait_for_state(app, job.id, JobState.COMPLETED)
            assert done.result == job.args["n"] + 1


async def test_without_an_idle_pooled_connection_the_statement_takes_a_thread(
    app: App, monkeypatch: pytest.MonkeyPatch, db: psycopg.Connection[Any]
) -> None:
    """When the pool has no idle connection the event loop never waits for one: the call hops instead."""

    @app.task
    async def work(n: int) -> None: ...

    await app.driver.open()
    driver: Any = app.driver
    pool = driver._pool
    monkeypatch.setattr(pool, "get_stats", lambda: {"pool_available": 0})
    hop = driver._hop
    hops: list[object] = []

    async def counting_hop(fn: Any) -> Any:
        hops.append(fn)
        return await hop(fn)

    monkeypatch.setattr(driver, "_hop", counting_hop)
    job = await work.defer(n=1)

    assert len(hops) == 1
    assert await query(db, "SELECT id, state FROM jobs") == [(job.id, "available")]


async def test_errors_on_the_direct_path_are_translated(dsn: str, schema: str) -> None:
    """A missing schema is SchemaNotReady and a refused value is a non-transient DatabaseError."""
    app = App(dsn=dsn, schema=schema)

    @app.task
    async def work(n: int) -> None: ...

    try:
        with pytest.raises(SchemaNotReady, match="migrate"):
            await work.defer(n=0)  # opens the pool (a thread hop)
        with pytest.raises(SchemaNotReady, match="migrate"):
            await work.defer(n=1)  # on the direct path
        await app.migrate()
        too_big = attrs.evolve(work.job(n=1), priority=2**40)  # past the call-site check: int4 refuses it
        with pytest.raises(DatabaseError, match="out of range") as caught:
            await app.driver.insert_jobs([too_big])
        assert caught.value.transient is False
        assert (await work.defer(n=2)).state is JobState.AVAILABLE  # the connection went back usable
    finally:
        await app.aclose()


async def test_a_single_defer_prepares_its_statement_again_when_the_server_dropped_it(dsn: str, schema: str) -> None:
    """After DEALLOCATE ALL on the pooled connection, the next defer prepares its statement again and succeeds."""
    app = App(dsn=dsn, schema=schema, pool_min_size=1, pool_max_size=1)
    await app.migrate()

    @app.task
    async def work(n: int) -> None: ...

    try:
        await work.defer(n=0)  # opens the pool (a thread hop)
        await work.defer(n=1)  # prepares our statement on the one pooled connection
        with app.driver._get_pool().connection() as conn:  # type: ignore[attr-defined]
            conn.execute("DEALLOCATE ALL")
        job = await work.defer(n=2)
        assert (await app.get_job(job.id)).args == {"n": 2}
    finally:
        await app.aclose()


async def test_a_single_defer_stores_text_unchanged_under_another_client_encoding(dsn: str, schema: str) -> None:
    """With a client encoding other than UTF-8, a single defer stores non-ASCII arguments unchanged."""
    app = App(dsn=f"{dsn}?client_encoding=LATIN1", schema=schema)
    await app.migrate()

    @app.task
    async def greet(name: str) -> None: ...

    try:
        await greet.defer(name="warm")
        job = await greet.defer(name="Zoë, café")
        with psycopg.connect(dsn) as conn:  # read back in UTF-8
            row = conn.execute(f'SELECT args FROM "{schema}".jobs WHERE id = %s', [job.id]).fetchone()
        assert row is not None and row[0] == {"name": "Zoë, café"}
    finally:
        await app.aclose()
