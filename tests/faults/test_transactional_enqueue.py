"""Transactional enqueue under load: a thousand transactions each write an order and defer its job
while a worker runs; about half of them roll back. Exactly the committed jobs run, each once.

The single-transaction cases (visible after commit, gone after rollback, on each kind of
connection) are in ``tests/integration/test_enqueue.py``.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
from psycopg import sql

from nursery_worker import App, open_worker

from ..integration.helpers import fast, wait_until
from .helpers import rows, scalar

pytestmark = pytest.mark.anyio

TRANSACTIONS = 1_000


class _Refused(Exception):
    """Raised inside a transaction to roll it back by an error rather than on purpose."""


async def test_exactly_the_committed_jobs_run_once_each(
    app: App, db: psycopg.Connection[Any], dsn: str, schema: str, anyio_backend: str
) -> None:
    """Of 1,000 transactions deferring a job beside an order, half roll back; exactly the committed jobs run."""
    await anyio.to_thread.run_sync(
        lambda: db.execute(sql.SQL("CREATE TABLE {}.orders (n int PRIMARY KEY)").format(sql.Identifier(schema)))
    )
    insert_order = sql.SQL("INSERT INTO {}.orders (n) VALUES (%s)").format(sql.Identifier(schema))
    ran: list[int] = []

    @app.task(name="txn.fulfil")
    async def fulfil(n: int) -> None:
        ran.append(n)

    rng = random.Random(1)
    commit = [rng.random() < 0.5 for _ in range(TRANSACTIONS)]

    async def sync_caller(ns: list[int]) -> None:
        """A sync caller in a thread: a transaction block per order, defer_sync on its connection."""

        def run() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for n in ns:
                    with conn.transaction():
                        conn.execute(insert_order, [n])
                        fulfil.configure(connection=conn).defer_sync(n=n)
                        if not commit[n]:
                            raise psycopg.Rollback()

        await anyio.to_thread.run_sync(run)

    async def async_caller_on_a_sync_connection(ns: list[int]) -> None:
        """An async caller on a sync connection's implicit transaction, ended by commit or rollback."""
        conn = await anyio.to_thread.run_sync(psycopg.connect, dsn)
        try:
            for n in ns:
                await anyio.to_thread.run_sync(conn.execute, insert_order, [n])
                await fulfil.configure(connection=conn).defer(n=n)
                await anyio.to_thread.run_sync(conn.commit if commit[n] else conn.rollback)
        finally:
            await anyio.to_thread.run_sync(conn.close)

    async def async_caller_on_an_async_connection(ns: list[int]) -> None:
        """asyncio's native connection; a rollback here is an error escaping the transaction block."""
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            for n in ns:
                try:
                    async with aconn.transaction():
                        await aconn.execute(insert_order, [n])
                        await fulfil.configure(connection=aconn).defer(n=n)
                        if not commit[n]:
                            raise _Refused(n)
                except _Refused:
                    pass

    callers = [sync_caller, async_caller_on_a_sync_connection]
    if anyio_backend == "asyncio":
        callers.append(async_caller_on_an_async_connection)
    async with open_worker(app, **fast(concurrency=20)):
        # Concurrent producers, while the worker runs: a job is visible to it only once committed.
        async with anyio.create_task_group() as producers:
            for i, caller in enumerate(callers):
                producers.start_soon(caller, list(range(i, TRANSACTIONS, len(callers))))
        committed = sorted(n for n in range(TRANSACTIONS) if commit[n])
        await wait_until(lambda: len(ran) >= len(committed), within=60)
        await anyio.sleep(0.5)  # anything more would be a job that should not exist

    assert 400 < len(committed) < 600
    assert sorted(ran) == committed
    assert [r[0] for r in await rows(db, "SELECT n FROM orders ORDER BY n")] == committed
    jobs = await rows(db, "SELECT (args->>'n')::int, state, attempt FROM jobs ORDER BY 1")
    assert jobs == [(n, "completed", 1) for n in committed]
    assert await scalar(db, "SELECT count(*) FROM jobs") == len(committed)
