"""The tasks the harness runs: a no-op, a sleeping job, a pickup-latency probe, and a job of durable
steps beside one of plain calls (the steps section).

``app`` (for ``nursery-worker run --app benchmarks.bench_app:app`` and ``benchmarks/_runner.py``)
takes its DSN and schema from ``$NURSERY_WORKER_DSN`` and ``$NURSERY_WORKER_SCHEMA``; the harness
itself calls :func:`build_app` with explicit ones.
"""

from __future__ import annotations

import json
import os
import time

import anyio

from nursery_worker import App, JobContext

QUEUE = "bench"

#: (seq, time.time() at the start of the job) of every probe job run by this process.
probe_starts: list[tuple[int, float]] = []


async def nothing() -> None:
    """What each step (or plain call) of the steps section runs."""


def build_app(dsn: str | None = None, schema: str | None = None, **options: object) -> App:
    app = App(dsn=dsn, schema=schema, **options)  # type: ignore[arg-type]

    @app.task(name="bench.noop", queue=QUEUE)
    async def noop(i: int = 0) -> None:
        return None

    @app.task(name="bench.sleep", queue=QUEUE)
    async def sleep(ms: float, i: int = 0) -> None:
        await anyio.sleep(ms / 1000)

    @app.task(name="bench.probe", queue=QUEUE)
    async def probe(seq: int) -> None:
        # The first thing the job does: take the wall clock. The producer takes the same clock
        # (same machine) right after its defer() returned, i.e. after the commit was acknowledged.
        probe_starts.append((seq, time.time()))

    # The steps section: the same job, its n calls durable steps or plain awaits. Both take the
    # context, so the steps are the only difference.
    @app.task(name="bench.steps", queue=QUEUE)
    async def steps(context: JobContext, n: int = 10, i: int = 0) -> None:
        for k in range(n):
            await context.step(f"s{k}", nothing)

    @app.task(name="bench.calls", queue=QUEUE)
    async def calls(context: JobContext, n: int = 10, i: int = 0) -> None:
        for _ in range(n):
            await nothing()

    @app.on_shutdown
    async def dump_probes() -> None:
        path = os.environ.get("NW_BENCH_PROBE_FILE")
        if path and probe_starts:
            with open(path, "w", encoding="utf-8") as fh:  # noqa: ASYNC230 - once, at shutdown
                json.dump(probe_starts, fh)

    return app


app = build_app()
