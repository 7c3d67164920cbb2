"""The embedded engine's figures, next to PostgreSQL's on the same machine: ``python -m benchmarks.sqlite_engine``.

    python -m benchmarks.sqlite_engine                 # about 3 minutes on 2 cores
    python -m benchmarks.sqlite_engine --quick         # a smoke run, one repetition of small N
    python -m benchmarks.sqlite_engine --engines sqlite --reps 5

For each engine (SQLite with ``synchronous=full``, the default; SQLite with ``synchronous=normal``;
PostgreSQL at ``--dsn``) and each loop (asyncio, trio), the median of ``--reps`` runs of:

- **enqueue**: ``defer_many`` of N jobs in one call, and N/10 sequential ``await defer()``; jobs/s.
- **throughput**: N no-op jobs queued first, then worked off by one worker process (``--once``,
  concurrency 50), and by two processes at once; jobs/s from the first worker RUNNING to the last
  STOPPED (their own wall clocks, same machine).
- **pickup latency**: an idle worker; probe jobs deferred one at a time, 2-5 ms apart; latency is
  the wall clock at the job's first line minus the producer's wall clock right after ``defer``
  returned. *Other process*: the producer is this process, the worker a subprocess (SQLite sees
  the job by its listener's poll). *Same process*: the worker runs on this process's event loop
  and the producer is a task beside it (SQLite's write wakes the listener at once).

Each SQLite run uses a fresh file in a temporary directory; each PostgreSQL run a fresh schema.
Prints one markdown table; ``--json PATH`` also writes every repetition.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from nursery_worker import App, open_worker

from . import bench_app
from ._common import DEFAULT_DSN, percentile
from ._workers import finish_runner, start_runner

BACKENDS = ("asyncio", "trio")
ENGINES = {
    "sqlite": "SQLite (synchronous=full)",
    "sqlite-normal": "SQLite (synchronous=normal)",
    "postgres": "PostgreSQL",
}


@contextmanager
def database(engine: str, pg_dsn: str) -> Iterator[tuple[str, str]]:
    """A fresh database of *engine*: (dsn, schema); dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    if engine == "postgres":
        app = App(dsn=pg_dsn, schema=schema)
        app.migrate_sync()
        try:
            yield pg_dsn, schema
        finally:
            anyio.run(app.driver.drop_schema)
            app.close()
        return
    with tempfile.TemporaryDirectory() as tmp:
        options = "?synchronous=normal" if engine == "sqlite-normal" else ""
        dsn = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}{options}"
        App(dsn=dsn, schema=schema).migrate_sync()
        yield dsn, schema


def enqueue(dsn: str, schema: str, backend: str, n: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        async with bench_app.build_app(dsn, schema) as app:
            noop = app.get_task("bench.noop")
            await noop.defer(i=-1)  # connect first
            specs = [noop.job(i=i) for i in range(n)]
            started = time.perf_counter()
            await app.defer_many(specs)
            bulk = n / (time.perf_counter() - started)
            started = time.perf_counter()
            for i in range(n // 10):
                await noop.defer(i=i)
            single = (n // 10) / (time.perf_counter() - started)
        return {"defer_many jobs/s": bulk, "sequential defer() jobs/s": single}

    return anyio.run(main, backend=backend)


def throughput(dsn: str, schema: str, backend: str, n: int, processes: int) -> float:
    app = bench_app.build_app(dsn, schema)
    try:
        noop = app.get_task("bench.noop")
        app.defer_many_sync([noop.job(i=i) for i in range(n)])
    finally:
        app.close()
    procs = [start_runner(dsn, schema, backend, 50, once=True) for _ in range(processes)]
    results = [finish_runner(p) for p in procs]
    processed = sum(int(r["processed"]) for r in results)
    if processed != n:
        raise RuntimeError(f"processed {processed} of {n} jobs")
    return n / (max(r["t_stopped"] for r in results) - min(r["t_running"] for r in results))


def _probe_times(app: App, samples: int, defer: Callable[[int], Any]) -> dict[int, float]:
    sent: dict[int, float] = {}
    rng = random.Random(1)
    for seq in range(samples):
        defer(seq)
        sent[seq] = time.time()
        time.sleep(rng.uniform(0.002, 0.005))
    return sent


def latency_other_process(dsn: str, schema: str, backend: str, samples: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = Path(tmp) / "probes.json"
        proc = start_runner(dsn, schema, backend, 10, once=False, env={"NW_BENCH_PROBE_FILE": str(probe_file)})
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError(f"worker did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.3)
        app = bench_app.build_app(dsn, schema)
        try:
            probe = app.get_task("bench.probe")
            probe.defer_sync(seq=-1)
            time.sleep(0.1)
            sent = _probe_times(app, samples, lambda seq: probe.defer_sync(seq=seq))
            time.sleep(0.5)
        finally:
            app.close()
            proc.send_signal(2)
            proc.communicate(timeout=60)
        started = dict(json.loads(probe_file.read_text()))
    return [started[str(s)] - t if str(s) in started else started[s] - t for s, t in sent.items()]


def latency_same_process(dsn: str, schema: str, backend: str, samples: int) -> list[float]:
    async def main() -> list[float]:
        bench_app.probe_starts.clear()
        async with bench_app.build_app(dsn, schema) as app:
            probe = app.get_task("bench.probe")
            sent: dict[int, float] = {}
            async with open_worker(app, queues=[bench_app.QUEUE], concurrency=10):
                await probe.defer(seq=-1)
                await anyio.sleep(0.3)
                rng = random.Random(1)
                for seq in range(samples):
                    await probe.defer(seq=seq)
                    sent[seq] = time.time()
                    await anyio.sleep(rng.uniform(0.002, 0.005))
                await anyio.sleep(0.5)
        started = dict(bench_app.probe_starts)
        return [started[s] - t for s, t in sent.items()]

    return anyio.run(main, backend=backend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sqlite_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, one repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated: {', '.join(ENGINES)}")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="the PostgreSQL DSN for the postgres engine")
    parser.add_argument("--json", default=None, help="also write every repetition here")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    n = 500 if args.quick else 5000
    samples = 30 if args.quick else 200
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    raw: dict[str, dict[str, dict[str, list[float]]]] = {}
    for engine in engines:
        for backend in BACKENDS:
            figures: dict[str, list[float]] = {}
            for rep in range(reps):
                print(f"{engine} {backend} repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
                with database(engine, args.dsn) as (dsn, schema):
                    for name, value in enqueue(dsn, schema, backend, n).items():
                        figures.setdefault(name, []).append(value)
                with database(engine, args.dsn) as (dsn, schema):
                    figures.setdefault("throughput, 1 process, jobs/s", []).append(
                        throughput(dsn, schema, backend, n, 1)
                    )
                with database(engine, args.dsn) as (dsn, schema):
                    figures.setdefault("throughput, 2 processes, jobs/s", []).append(
                        throughput(dsn, schema, backend, n, 2)
                    )
                for label, measure in (
                    ("pickup, other process", latency_other_process),
                    ("pickup, same process", latency_same_process),
                ):
                    with database(engine, args.dsn) as (dsn, schema):
                        values = measure(dsn, schema, backend, samples)
                    figures.setdefault(f"{label}, p50 ms", []).append(1000 * percentile(values, 50))
                    figures.setdefault(f"{label}, p99 ms", []).append(1000 * percentile(values, 99))
            raw.setdefault(engine, {})[backend] = figures
    columns = [(e, b) for e in engines for b in BACKENDS]
    rows = list(next(iter(next(iter(raw.values())).values())))
    print(f"\nmedians of {reps}; N = {n} jobs (enqueue, throughput), {samples} probes (pickup)\n")
    print("| | " + " | ".join(f"{ENGINES[e]}, {b}" for e, b in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for row in rows:
        cells = []
        for e, b in columns:
            value = statistics.median(raw[e][b][row])
            cells.append(f"{value:,.1f}" if "ms" in row else f"{value:,.0f}")
        print(f"| {row} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": n, "samples": samples, "reps": reps, "figures": raw}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
