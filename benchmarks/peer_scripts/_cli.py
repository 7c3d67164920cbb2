"""Argument parsing, timing and output shared by the peer scripts (standard library only)."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

WORKLOADS = ["version", "setup", "enqueue-single", "enqueue-bulk", "throughput", "latency", "latency-worker"]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    # Settings a peer may take (the others ignore them); defaults are the harness's production choice.
    parser.add_argument("--batch-size", type=int, default=0, help="PgQueuer: jobs per dequeue (0: the harness's)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="PgQueuer's event loop")
    parser.add_argument("--log-aggregation", type=float, default=30.0, help="PgQueuer: log_aggregation_interval, s")
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="throughput: skip the ANALYZE of the queue table after queuing (the shared test server runs "
        "without autovacuum, so the planner would have no statistics of the freshly filled table)",
    )
    parser.add_argument("--probe-file", default="", help="latency-worker: where to write the probes' start times")
    return parser.parse_args()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Window:
    """The in-process window of a throughput run: wall clock and CPU from start() to stop()."""

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0

    def start(self) -> None:
        self.cpu0 = cpu_seconds()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.t1 = time.perf_counter()
        self.cpu1 = cpu_seconds()

    def fields(self, n: int, db_span: float | None) -> dict[str, Any]:
        """The figures every peer reports: the database span is the headline window (as for nursery-worker)."""
        process_s = self.t1 - self.t0
        return {
            "rate": n / db_span if db_span else n / process_s,
            "rate_process": n / process_s,
            "db_span_s": db_span,
            "process_s": process_s,
            "cpu_s": self.cpu1 - self.cpu0,
            "cpu_ms_per_job": (self.cpu1 - self.cpu0) * 1000 / n if n else None,
        }


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation (as benchmarks/_common.py)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def emit(**data: Any) -> None:
    print(json.dumps(data), flush=True)
    sys.exit(0)
