"""Section 1, enqueue: single ``defer()`` (one producer, and 10 concurrent producers), ``defer_many()`` and the
lean ``task.defer_batch()``."""

from __future__ import annotations

import time
from typing import Any

import anyio

from ._common import BACKENDS, Plan, Report, count_states, log, migrated_schema, truncate_jobs
from .bench_app import build_app

SECTION = "enqueue"


async def _sequential(app: Any, n: int) -> float:
    task = app.get_task("bench.noop")
    await task.defer(i=-1)  # warm the pool: the first call opens it
    started = time.perf_counter()
    for i in range(n):
        await task.defer(i=i)
    return time.perf_counter() - started


async def _concurrent(app: Any, n: int, producers: int = 10) -> float:
    task = app.get_task("bench.noop")
    await task.defer(i=-1)
    per = n // producers

    async def produce(k: int) -> None:
        for i in range(per):
            await task.defer(i=k * per + i)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(producers):
            tg.start_soon(produce, k)
    return time.perf_counter() - started


async def _bulk(app: Any, n: int) -> float:
    task = app.get_task("bench.noop")
    await task.defer(i=-1)
    started = time.perf_counter()
    # What a user writes: build the specs (validated at the call site) and insert them in one call.
    jobs = await app.defer_many([task.job(i=i) for i in range(n)])
    elapsed = time.perf_counter() - started
    assert len(jobs) == n
    return elapsed


async def _bulk_prebuilt(app: Any, n: int) -> float:
    task = app.get_task("bench.noop")
    await task.defer(i=-1)
    # The insert alone, as peers' bulk calls are usually timed: the specs are built beforehand.
    specs = [task.job(i=i) for i in range(n)]
    started = time.perf_counter()
    jobs = await app.defer_many(specs)
    elapsed = time.perf_counter() - started
    assert len(jobs) == n
    return elapsed


async def _batch(app: Any, n: int) -> float:
    task = app.get_task("bench.noop")
    await task.defer(i=-1)
    started = time.perf_counter()
    # The lean path: one mapping of arguments per job, validated and encoded inside the timing;
    # ids come back, no JobSpec or Job objects are made.
    ids = await task.defer_batch([{"i": i} for i in range(n)])
    elapsed = time.perf_counter() - started
    assert len(ids) == n
    return elapsed


def run(dsn: str, plan: Plan, report: Report) -> None:
    workloads = (
        ("single defer(), sequential", _sequential, plan.seq_defers),
        ("single defer(), 10 concurrent producers", _concurrent, plan.conc_defers),
        (f"defer_many() of {plan.bulk_jobs:,} jobs", _bulk, plan.bulk_jobs),
        (f"defer_many() of {plan.bulk_jobs:,} jobs, specs built beforehand", _bulk_prebuilt, plan.bulk_jobs),
        (
            f"defer_batch() of {plan.bulk_jobs:,} jobs (lean path, ids only)",
            _batch,
            plan.bulk_jobs,
        ),
    )
    with migrated_schema(dsn) as schema:
        figs = {
            (name, backend): report.figure(
                section=SECTION,
                name=name,
                system="nursery-worker",
                backend=backend,
                unit="jobs/s",
                higher_is_better=True,
                extra={"jobs": n},
            )
            for name, _, n in workloads
            for backend in BACKENDS
        }
        for rep in range(plan.reps):
            # Alternate which backend goes first, so drift in the machine's load falls on both.
            for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                for name, fn, n in workloads:
                    truncate_jobs(dsn, schema)
                    app = build_app(dsn, schema)
                    try:
                        elapsed = anyio.run(fn, app, n, backend=backend)
                    finally:
                        app.close()
                    fig = figs[name, backend]
                    fig.reps.append(n / elapsed)
                    states = count_states(dsn, schema)
                    report.verify(fig, states == {"available": n + 1}, f"expected {n + 1} available jobs, got {states}")
                    log(f"enqueue {backend:7} {name}: {n / elapsed:,.0f} jobs/s")
