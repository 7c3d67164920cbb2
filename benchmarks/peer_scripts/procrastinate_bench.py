"""Procrastinate workloads (PsycopgConnector), in the database given by --dsn.

Settings: its defaults (``PsycopgConnector`` pool, LISTEN/NOTIFY, ``fetch_job_polling_interval``),
``run_worker_async(concurrency=--concurrency, wait=False)``: it works off what is queued and returns.
Throughput window: first ``started`` to last ``succeeded`` row of ``procrastinate_events`` (its own
record); the call of ``run_worker_async`` to its return, and the process's CPU time over it, beside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procrastinate
from _cli import Window, emit, parse

logging.basicConfig(level=logging.WARNING)
a = parse()
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=a.dsn))
done = 0


@app.task(name="noop", queue="bench")
async def noop(i: int = 0) -> None:
    global done
    done += 1


async def count(sql: str) -> int:
    async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
        cur = await conn.execute(sql)
        row = await cur.fetchone()
        return int(row[0])


async def span_seconds() -> float | None:
    async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
        cur = await conn.execute(
            "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded')"
            " - min(at) FILTER (WHERE type = 'started')) FROM procrastinate_events"
        )
        row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None


async def execute(sql: str) -> None:
    async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
        await conn.execute(sql)


async def main() -> None:
    if a.workload == "version":
        emit(version=version("procrastinate"), driver=f"psycopg {version('psycopg')}")
    async with app.open_async():
        if a.workload == "setup":
            await app.schema_manager.apply_schema_async()
            emit(ok=True)
        await execute("TRUNCATE procrastinate_jobs CASCADE")
        n = a.n
        if a.workload == "enqueue-single":
            await noop.defer_async(i=-1)
            started = time.perf_counter()
            for i in range(n):
                await noop.defer_async(i=i)
            elapsed = time.perf_counter() - started
            c = await count("SELECT count(*) FROM procrastinate_jobs")
            emit(rate=n / elapsed, verified=c == n + 1, detail=f"{c} queued")
        if a.workload == "enqueue-bulk":
            await noop.defer_async(i=-1)
            started = time.perf_counter()
            await noop.batch_defer_async(*({"i": i} for i in range(n)))
            elapsed = time.perf_counter() - started
            c = await count("SELECT count(*) FROM procrastinate_jobs")
            emit(rate=n / elapsed, verified=c == n + 1, detail=f"{c} queued")
        for start in range(0, n, 50_000):
            await noop.batch_defer_async(*({"i": i} for i in range(start, min(n, start + 50_000))))
        if not a.no_analyze:
            await execute("ANALYZE procrastinate_jobs")
        window = Window()
        window.start()
        await app.run_worker_async(
            queues=["bench"], concurrency=a.concurrency, wait=False, install_signal_handlers=False
        )
        window.stop()
        ok = await count("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
        span = await span_seconds()
        emit(
            **window.fields(n, span),
            verified=ok == n and done == n,
            detail=f"{done} run, {ok} succeeded; concurrency={a.concurrency}",
        )


asyncio.run(main())
