"""oban-py workloads (psycopg AsyncConnectionPool), in the database given by --dsn.

Settings: its defaults but one queue of --concurrency. oban has no "work off what is queued and
exit" mode: the script starts an Oban instance, waits (checking every 20 ms) until its jobs have
all run in this process, then until the table shows every job completed, and stops it. Throughput
window: first ``attempted_at`` to last ``completed_at`` of ``oban_jobs`` (its own record); start()
to the last job seen completed, and the process's CPU time over it, beside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import Window, emit, parse
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
    if not a.no_analyze:
        async with pool.connection() as conn:
            await conn.execute("ANALYZE oban_jobs")
    oban = Oban(pool=pool, queues={"bench": a.concurrency}, name="worker")
    window = Window()
    window.start()
    await oban.start()
    deadline = time.perf_counter() + 900
    # First the in-process count (no query while the jobs run), then the table (the last acks).
    while done < n and time.perf_counter() < deadline:  # noqa: ASYNC110 - a counter, polled as the table is
        await asyncio.sleep(0.02)
    while await scalar(pool, "SELECT count(*) FROM oban_jobs WHERE state = 'completed'") < n:
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.02)
    window.stop()
    await oban.stop()
    ok = await scalar(pool, "SELECT count(*) FROM oban_jobs WHERE state = 'completed'")
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) FROM oban_jobs")
        row = await cur.fetchone()
    span = float(row[0]) if row and row[0] is not None else None
    await pool.close()
    emit(
        **window.fields(n, span),
        verified=ok == n and done == n,
        detail=f"{done} run, {ok} completed; queue concurrency={a.concurrency}",
    )


asyncio.run(main())
