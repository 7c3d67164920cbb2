"""One worker process for the harness: ``python -m benchmarks._runner --backend trio --concurrency 50 --once``.

Runs :func:`nursery_worker.open_worker` on the app of ``benchmarks/bench_app.py`` (DSN and schema
from ``$NURSERY_WORKER_DSN`` / ``$NURSERY_WORKER_SCHEMA``) and prints one JSON line at the end:
wall-clock times (process start, worker RUNNING, worker STOPPED), the process's CPU time (all its
threads: ``time.process_time``) at RUNNING and at STOPPED, the worker's stats and, with
``--rss``, the process's resident set size sampled every 100 ms. Without ``--once`` it prints
``READY`` when the worker is running and stops gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_PROCESS = time.time()

import anyio  # noqa: E402

from nursery_worker import _fetcher, _worker, open_worker  # noqa: E402

from .bench_app import QUEUE, app  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def main(args: argparse.Namespace) -> dict[str, object]:
    if os.environ.get("NURSERY_WORKER_BENCH_THREAD_HOPS") == "1":
        # The lever experiment: every statement through a worker thread, as before the direct path.
        app.driver.direct = False
    if os.environ.get("NURSERY_WORKER_BENCH_ANYIO_JOBS") == "1":
        # The lever experiment: jobs in an anyio task group, under anyio scopes, on trio and asyncio (as before).
        _worker._trio_running = lambda: False
        _worker._ASYNCIO_TASK_GROUP = False
    if os.environ.get("NURSERY_WORKER_BENCH_NO_COMBINE") == "1":
        # The lever experiment: the completer writes outcomes only; every claim is the fetch loop's own.
        _fetcher._COMBINE = False
    if "NURSERY_WORKER_BENCH_OVERLAP" in os.environ:
        # The lever experiment: 0 frees a slot only once its outcome is written (the serial cycle).
        _fetcher._OVERLAP = int(os.environ["NURSERY_WORKER_BENCH_OVERLAP"])
    samples: list[tuple[float, int, int]] = []
    result: dict[str, object] = {"t_process": T_PROCESS}
    async with anyio.create_task_group() as tg:
        async with open_worker(
            app,
            queues=[QUEUE],
            concurrency=args.concurrency,
            once=args.once,
            listen=not args.no_listen,
            poll_interval=args.poll_interval,
        ) as worker:
            result["t_running"] = time.time()
            result["cpu_running"] = time.process_time()
            if args.rss:

                async def sample() -> None:
                    while True:
                        samples.append((time.time(), worker.stats().processed, rss_bytes()))
                        await anyio.sleep(0.1)

                tg.start_soon(sample)
            if args.once:
                await worker.wait_stopped()
            else:
                print("READY", flush=True)
                await worker.serve_until_signalled()
        result["t_stopped"] = time.time()
        result["cpu_stopped"] = time.process_time()
        tg.cancel_scope.cancel()
    stats = worker.stats()
    result["processed"] = stats.processed
    result["completed"] = stats.completed
    result["failed"] = stats.failed
    if args.rss:
        samples.append((time.time(), stats.processed, rss_bytes()))
        result["rss"] = samples
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--no-listen", action="store_true")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--rss", action="store_true")
    ns = parser.parse_args()
    out = anyio.run(main, ns, backend=ns.backend)
    app.close()
    print(json.dumps(out), flush=True)
    sys.exit(0)
