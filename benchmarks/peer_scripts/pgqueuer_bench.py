"""PgQueuer workloads (asyncpg driver, default durability), in the database given by --dsn.

Settings: the event loop is uvloop unless ``--loop asyncio`` (``pgq run`` runs on uvloop whenever
it is installed, and PgQueuer depends on it outside Windows); ``QueueManager.run`` gets
``batch_size=--batch-size`` (PgQueuer's default is 10), ``max_concurrent_tasks=--concurrency``
(the cap comparable to a worker's concurrency; PgQueuer requires it to be at least twice the batch)
and its defaults otherwise (``dequeue_timeout`` 30 s, heartbeats, log aggregation every 30 s). The
worker uses one ``AsyncpgDriver`` connection, as PgQueuer's tuning guide recommends.

Throughput: N no-op jobs queued, the queue table analyzed (what autovacuum does to a table that
just grew; the shared test server runs without it), one ``QueueManager`` in ``drain`` mode works
them off. The
headline window is PgQueuer's own record: first ``picked`` to last ``successful`` row of
``pgqueuer_log``; the in-process window (``run()`` called to returned) and the process's CPU time
over it are reported beside it. Latency: an idle worker in a child process, probes enqueued one at
a time a few ms apart; latency = the job's first ``time.time()`` − ``time.time()`` right after
``enqueue`` returned, as in the harness's latency section.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from datetime import timedelta
from importlib.metadata import version
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncpg
from _cli import Window, emit, parse, percentile
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

a = parse()
SCRIPT = os.path.abspath(__file__)
BATCH = a.batch_size or 10


def settings() -> str:
    aggregation = "" if a.log_aggregation == 30 else f", log_aggregation_interval={a.log_aggregation:g} s"
    return f"{a.loop}, batch_size={BATCH}, max_concurrent_tasks={a.concurrency}{aggregation}"


async def db_span(conn: asyncpg.Connection) -> float | None:
    value = await conn.fetchval(
        "SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful')"
        " - min(created) FILTER (WHERE status = 'picked')) FROM pgqueuer_log"
    )
    return float(value) if value is not None else None


async def tenths(conn: asyncpg.Connection, n: int) -> list[float]:
    """Seconds from the first pick until each tenth of the N jobs was logged successful (how the rate moves)."""
    rows = await conn.fetch(
        "SELECT extract(epoch FROM s.created - p.t0)::float8 FROM"
        " (SELECT created, row_number() OVER (ORDER BY created, id) AS k FROM pgqueuer_log"
        "  WHERE status = 'successful') s,"
        " (SELECT min(created) AS t0 FROM pgqueuer_log WHERE status = 'picked') p"
        " WHERE s.k % $1 = 0 ORDER BY s.k",
        max(1, n // 10),
    )
    return [round(float(r[0]), 3) for r in rows]


async def throughput(conn: asyncpg.Connection, queries: Queries, n: int) -> None:
    for start in range(0, n, 50_000):
        k = min(n, start + 50_000) - start
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    await conn.execute("TRUNCATE pgqueuer_log")
    if not a.no_analyze:
        await conn.execute("ANALYZE pgqueuer")
    wconn = await asyncpg.connect(a.dsn)
    qm = QueueManager(Queries(AsyncpgDriver(wconn)))
    done = 0

    @qm.entrypoint("noop")
    async def noop(job: object) -> None:
        nonlocal done
        done += 1

    window = Window()
    window.start()
    await qm.run(
        mode=QueueExecutionMode.drain,
        batch_size=BATCH,
        max_concurrent_tasks=a.concurrency,
        log_aggregation_interval=timedelta(seconds=a.log_aggregation),
    )
    window.stop()
    left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
    ok = await conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
    picked = await conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'picked'")
    emit(
        **window.fields(n, await db_span(conn)),
        tenths_s=await tenths(conn, n),
        verified=left == 0 and ok == n and picked == n and done == n,
        detail=f"{done} run, {ok} logged successful, {picked} picked, {left} left; {settings()}",
    )


async def latency_worker() -> None:
    """An idle QueueManager (continuous mode, LISTEN) until SIGTERM; writes the probes' start times."""
    starts: list[tuple[int, float]] = []
    wconn = await asyncpg.connect(a.dsn)
    qm = QueueManager(Queries(AsyncpgDriver(wconn)))

    @qm.entrypoint("probe")
    async def probe(job: Any) -> None:
        starts.append((int(job.payload), time.time()))

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    print("READY", flush=True)
    await qm.run(batch_size=BATCH, max_concurrent_tasks=a.concurrency)
    with open(a.probe_file, "w", encoding="utf-8") as fh:  # noqa: ASYNC230 - once, after the run
        json.dump(starts, fh)


async def wait_successful(conn: asyncpg.Connection, count: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        ok = int(await conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"))
        if ok >= count or time.monotonic() > deadline:
            return ok
        await asyncio.sleep(0.05)


async def latency(conn: asyncpg.Connection, queries: Queries, n: int) -> None:
    await conn.execute("TRUNCATE pgqueuer_log")
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = os.path.join(tmp, "probes.json")
        argv = [sys.executable, SCRIPT, "--dsn", a.dsn, "--workload", "latency-worker", "--probe-file", probe_file]
        argv += ["--concurrency", str(a.concurrency), "--batch-size", str(BATCH), "--loop", a.loop]
        # Started before any timing; the producer below is the only thing measured.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
        sent: dict[int, float] = {}
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "READY":
                raise RuntimeError("the PgQueuer worker did not start")
            # Warm up: one probe, picked up once the worker listens.
            await queries.enqueue("probe", b"-1", 0)
            if await wait_successful(conn, 1, 30) < 1:
                raise RuntimeError("the warm-up probe was not run")
            await asyncio.sleep(0.05)
            rng = random.Random(1)
            for seq in range(n):
                await queries.enqueue("probe", str(seq).encode(), 0)
                sent[seq] = time.time()
                await asyncio.sleep(rng.uniform(0.002, 0.005))
            ok = await wait_successful(conn, n + 1, 10)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        with open(probe_file, encoding="utf-8") as fh:  # noqa: ASYNC230 - once, after the run
            starts = {int(s): float(t) for s, t in json.load(fh)}
    lat = [(starts[seq] - sent[seq]) * 1000 for seq in sent if seq in starts]
    emit(
        p50=percentile(lat, 50),
        p95=percentile(lat, 95),
        p99=percentile(lat, 99),
        samples=len(lat),
        verified=len(lat) == n and ok == n + 1,
        detail=f"{len(lat)}/{n} probes timed, {ok} logged successful; {settings()}",
    )


async def main() -> None:
    if a.workload == "version":
        loop = f", uvloop {version('uvloop')}" if a.loop == "uvloop" else ""
        emit(version=version("pgqueuer"), driver=f"asyncpg {version('asyncpg')}{loop}", settings=settings())
    if a.workload == "latency-worker":
        await latency_worker()
        return
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
    if a.workload == "latency":
        await latency(conn, queries, n)
    await throughput(conn, queries, n)


def run(coro: Coroutine[Any, Any, None]) -> None:
    if a.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


run(main())
