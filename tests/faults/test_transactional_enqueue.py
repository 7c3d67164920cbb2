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

    def in_a_transaction(conn: psycopg.Connection[Any], n: int) -> None:
        """A sync caller: its own transaction block, defer_sync on its connection."""
        with conn.transaction():
            conn.execute(insert_order, [n])
            fulfil.configure(connection=conn).defer_sync(n=n)
            if not commit[n]:
                raise psycopg.Rollback()

    async with open_worker(app, **fast(concurrency=20)):
        with psycopg.connect(dsn, autocommit=True) as sync_conn, psycopg.connect(dsn) as implicit:
            aconn = await psycopg.AsyncConnection.connect(dsn) if anyio_backend == "asyncio" else None
            try:
                for n in range(TRANSACTIONS):
                    kind = n % 3
                    if kind == 0:
                        await anyio.to_thread.run_sync(in_a_transaction, sync_conn, n)
                    elif kind == 1 or aconn is None:
                        # An async caller on a sync connection's implicit transaction, ended by commit or rollback.
                        await anyio.to_thread.run_sync(implicit.execute, insert_order, [n])
                        await fulfil.configure(connection=implicit).defer(n=n)
                        await anyio.to_thread.run_sync(implicit.commit if commit[n] else implicit.rollback)
                    else:
                        # asyncio's native connection; a rollback here is an error escaping the block.
                        try:
                            async with aconn.transaction():
                                await aconn.execute(insert_order, [n])
                                await fulfil.configure(connection=aconn).defer(n=n)
                                if not commit[n]:
                                    raise _Refused(n)
                        except _Refused:
                            pass
            finally:
                if aconn is not None:
                    await aconn.close()
        committed = sorted(n for n in range(TRANSACTIONS) if commit[n])
        await wait_until(lambda: len(ran) >= len(committed), within=60)
        await anyio.sleep(0.5)  # anything more would be a job that should not exist

    assert 400 < len(committed) < 600
    assert sorted(ran) == committed
    assert [r[0] for r in await rows(db, "SELECT n FROM orders ORDER BY n")] == committed
    jobs = await rows(db, "SELECT (args->>'n')::int, state, attempt FROM jobs ORDER BY 1")
    assert jobs == [(n, "completed", 1) for n in committed]
    assert await scalar(db, "SELECT count(*) FROM jobs") == len(committed)
