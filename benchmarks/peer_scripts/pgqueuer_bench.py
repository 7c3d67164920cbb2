"""PgQueuer workloads (asyncpg driver, default durability), in the database given by --dsn."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncpg
from _cli import emit, parse
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode


async def main() -> None:
    a = parse()
    if a.workload == "version":
        emit(version=version("pgqueuer"), driver=f"asyncpg {version('asyncpg')}")
    conn = await asyncpg.connect(a.dsn)
    queries = Queries(AsyncpgDriver(conn))
    if a.workload == "setup":
        await queries.install()
        emit(ok=True)
    await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
    n = a.n
    if a.workload == "enqueue-single":
        await queries.enqueue("noop", b"-1", 0)
        started = time.perf_counter()
        for i in range(n):
            await queries.enqueue("noop", str(i).encode(), 0)
        elapsed = time.perf_counter() - started
        count = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        emit(rate=n / elapsed, verified=count == n + 1, detail=f"{count} queued")
    if a.workload == "enqueue-bulk":
        await queries.enqueue("noop", b"-1", 0)
        started = time.perf_counter()
        await queries.enqueue(["noop"] * n, [str(i).encode() for i in range(n)], [0] * n)
        elapsed = time.perf_counter() - started
        count = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        emit(rate=n / elapsed, verified=count == n + 1, detail=f"{count} queued")
    # throughput: n queued no-op jobs, one QueueManager draining them at concurrency a.concurrency
    for start in range(0, n, 50_000):
        k = min(n, start + 50_000) - start
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    await conn.execute("TRUNCATE pgqueuer_log")
    wconn = await asyncpg.connect(a.dsn)
    qm = QueueManager(Queries(AsyncpgDriver(wconn)))
    done = 0

    @qm.entrypoint("noop")
    async def noop(job: object) -> None:
        nonlocal done
        done += 1

    batch = max(1, a.concurrency // 2)
    started = time.perf_counter()
    await qm.run(
        mode=QueueExecutionMode.drain,
        batch_size=batch,
        max_concurrent_tasks=a.concurrency,
        dequeue_timeout=timedelta(seconds=1),
    )
    elapsed = time.perf_counter() - started
    left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
    ok = await conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
    emit(
        rate=n / elapsed,
        verified=left == 0 and ok == n and done == n,
        detail=f"{done} run, {ok} logged successful, {left} left; "
        f"batch_size={batch}, max_concurrent_tasks={a.concurrency}",
    )


asyncio.run(main())
