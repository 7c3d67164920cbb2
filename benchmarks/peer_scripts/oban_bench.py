"""oban-py workloads (psycopg AsyncConnectionPool), in the database given by --dsn.

oban has no "work off what is queued and exit" mode: the script starts an Oban instance with one
queue of the given concurrency, polls the table every 20 ms until every job is completed, and
stops it. The figure is N / (time from start() returning to the last job seen completed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import emit, parse
from oban import Oban, worker
from oban.schema import install
from psycopg_pool import AsyncConnectionPool

logging.basicConfig(level=logging.WARNING)
done = 0


@worker(queue="bench")
class Noop:
    async def process(self, job: object) -> None:
        global done
        done += 1


async def scalar(pool: AsyncConnectionPool, sql: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
        return int(row[0])


async def main() -> None:
    a = parse()
    if a.workload == "version":
        emit(version=version("oban"), driver=f"psycopg {version('psycopg')}")
    pool = AsyncConnectionPool(conninfo=a.dsn, min_size=2, max_size=10, open=False)
    await pool.open()
    if a.workload == "setup":
        await install(pool)
        emit(ok=True)
    async with pool.connection() as conn:
        await conn.execute("TRUNCATE oban_jobs")
    n = a.n
    if a.workload in ("enqueue-single", "enqueue-bulk"):
        async with Oban(pool=pool) as oban:  # client mode: no queues
            await oban.enqueue(Noop.new({"i": -1}))
            started = time.perf_counter()
            if a.workload == "enqueue-single":
                for i in range(n):
                    await oban.enqueue(Noop.new({"i": i}))
            else:
                await oban.enqueue_many([Noop.new({"i": i}) for i in range(n)])
            elapsed = time.perf_counter() - started
        c = await scalar(pool, "SELECT count(*) FROM oban_jobs")
        await pool.close()
        emit(rate=n / elapsed, verified=c == n + 1, detail=f"{c} queued")
    async with Oban(pool=pool) as client:
        for start in range(0, n, 10_000):
            await client.enqueue_many([Noop.new({"i": i}) for i in range(start, min(n, start + 10_000))])
    oban = Oban(pool=pool, queues={"bench": a.concurrency}, name="worker")
    await oban.start()
    started = time.perf_counter()
    deadline = started + 600
    while await scalar(pool, "SELECT count(*) FROM oban_jobs WHERE state = 'completed'") < n:
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    await oban.stop()
    ok = await scalar(pool, "SELECT count(*) FROM oban_jobs WHERE state = 'completed'")
    await pool.close()
    emit(rate=n / elapsed, verified=ok == n and done == n, detail=f"{done} run, {ok} completed")


asyncio.run(main())
