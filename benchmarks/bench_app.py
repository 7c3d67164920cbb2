"""The tasks the harness runs: a no-op, a sleeping job, and a pickup-latency probe.

``app`` (for ``nursery-worker run --app benchmarks.bench_app:app`` and ``benchmarks/_runner.py``)
takes its DSN and schema from ``$NURSERY_WORKER_DSN`` and ``$NURSERY_WORKER_SCHEMA``; the harness
itself calls :func:`build_app` with explicit ones.
"""

from __future__ import annotations

import json
import os
import time

import anyio

from nursery_worker import App

QUEUE = "bench"

#: (seq, time.time() at the start of the job) of every probe job run by this process.
probe_starts: list[tuple[int, float]] = []


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

    @app.on_shutdown
    async def dump_probes() -> None:
        path = os.environ.get("NW_BENCH_PROBE_FILE")
        if path and probe_starts:
            with open(path, "w", encoding="utf-8") as fh:  # noqa: ASYNC230 - once, at shutdown
                json.dump(probe_starts, fh)

    return app


app = build_app()
