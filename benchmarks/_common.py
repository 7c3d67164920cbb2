"""Shared pieces of the harness: plans, the environment record, statistics, scratch schemas."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DSN = os.environ.get(
    "NURSERY_WORKER_BENCH_DSN", os.environ.get("NURSERY_WORKER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
)
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"
QUEUE = "bench"
BACKENDS = ("asyncio", "trio")


@dataclass(frozen=True)
class Plan:
    """How much work each section does."""

    name: str
    reps: int
    seq_defers: int  # single sequential defer()
    conc_defers: int  # defer() shared by 10 producers
    bulk_jobs: int  # one defer_many() call
    throughput_jobs: int  # no-op jobs per throughput run (concurrency 10 and 200)
    headline_jobs: int  # no-op jobs of the headline run (concurrency 50), nursery-worker and PgQueuer alike
    slow_peer_jobs: dict[str, int]  # the headline run's N for the peers too slow for headline_jobs
    scaling_jobs: int  # no-op jobs per run of the scaling section
    concurrencies: tuple[int, ...]
    sleep_jobs: int  # jobs per 1 ms / 10 ms sleeping run
    latency_samples: int
    growth_fills: tuple[int, ...]
    growth_jobs: int
    rss_jobs: int
    baseline_rows: int
    lever_rows: int
    step_jobs: int  # jobs per run of the steps section (each of 10 steps, or of 10 plain calls)


FULL = Plan(
    name="full",
    reps=3,
    seq_defers=2_000,
    conc_defers=4_000,
    bulk_jobs=50_000,
    throughput_jobs=10_000,
    headline_jobs=100_000,
    slow_peer_jobs={"procrastinate": 2_000, "oban": 20_000},
    scaling_jobs=50_000,
    concurrencies=(10, 50, 200),
    sleep_jobs=5_000,
    latency_samples=200,
    growth_fills=(0, 100_000, 1_000_000),
    growth_jobs=10_000,
    rss_jobs=100_000,
    baseline_rows=100_000,
    lever_rows=20_000,
    step_jobs=2_000,
)
QUICK = Plan(
    name="quick",
    reps=1,
    seq_defers=200,
    conc_defers=400,
    bulk_jobs=5_000,
    throughput_jobs=1_000,
    headline_jobs=1_000,
    slow_peer_jobs={"procrastinate": 300, "oban": 1_000},
    scaling_jobs=1_000,
    concurrencies=(50,),
    sleep_jobs=300,
    latency_samples=30,
    growth_fills=(0, 10_000),
    growth_jobs=1_000,
    rss_jobs=3_000,
    baseline_rows=5_000,
    lever_rows=2_000,
    step_jobs=200,
)


@dataclass
class Figure:
    """One measured figure: every repetition and the median."""

    section: str
    name: str
    system: str  # nursery-worker, pgqueuer, procrastinate, oban, plain-sql
    backend: str  # asyncio, trio, or "-"
    unit: str
    higher_is_better: bool
    reps: list[float] = field(default_factory=list)
    verified: bool = True
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.reps) if self.reps else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["median"] = self.median
        return data


class Report:
    """Collects figures, skips and lever results; written as JSON at the end."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.skipped: list[dict[str, str]] = []
        self.levers: list[dict[str, Any]] = []
        self.verification_failures: list[str] = []

    def figure(self, **kwargs: Any) -> Figure:
        fig = Figure(**kwargs)
        self.figures.append(fig)
        return fig

    def find(self, section: str, name: str, system: str = "nursery-worker", backend: str = "asyncio") -> Figure | None:
        for f in self.figures:
            if (f.section, f.name, f.system, f.backend) == (section, name, system, backend):
                return f
        return None

    def skip(self, what: str, why: str) -> None:
        print(f"  skipped {what}: {why}", file=sys.stderr)
        self.skipped.append({"what": what, "why": why})

    def verify(self, fig: Figure, ok: bool, message: str) -> None:
        if not ok:
            fig.verified = False
            self.verification_failures.append(f"{fig.system}/{fig.backend} {fig.section} {fig.name}: {message}")
            print(f"  VERIFICATION FAILED: {message}", file=sys.stderr)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def new_schema_name(prefix: str = "bench") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def migrated_schema(dsn: str, prefix: str = "bench") -> Iterator[str]:
    """A fresh schema migrated through the public ``App(...).migrate_sync()``; dropped afterwards."""
    from nursery_worker import App

    schema = new_schema_name(prefix)
    app = App(dsn=dsn, schema=schema)
    try:
        app.migrate_sync()
    finally:
        app.close()
    try:
        yield schema
    finally:
        drop_schema(dsn, schema)


def truncate_jobs(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # CASCADE: the durable steps (migration 11) reference their jobs.
        conn.execute(
            sql.SQL("TRUNCATE {}.jobs, {}.workers CASCADE").format(sql.Identifier(schema), sql.Identifier(schema))
        )


def count_states(dsn: str, schema: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT state, count(*) FROM {}.jobs GROUP BY state").format(sql.Identifier(schema))
        ).fetchall()
    return {str(state): int(n) for state, n in rows}


def cpu_ms_per_job(results: list[dict[str, Any]], n: int) -> float | None:
    """CPU milliseconds per job of the worker process(es): CPU seconds from RUNNING to STOPPED / *n*."""
    if not n or not results or any("cpu_stopped" not in r for r in results):
        return None
    return sum(r["cpu_stopped"] - r["cpu_running"] for r in results) * 1000 / n


def db_span(dsn: str, schema: str, min_id: int = 0) -> float:
    """Seconds from the first claim to the last finish of the completed jobs with id > *min_id*."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT extract(epoch FROM max(finished_at) - min(attempted_at)) FROM {}.jobs "
                "WHERE state = 'completed' AND id > %s"
            ).format(sql.Identifier(schema)),
            [min_id],
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else float("nan")


def _version_of(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def environment(dsn: str) -> dict[str, Any]:
    """The machine and the versions, recorded with every run."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pg = conn.execute("SELECT version()").fetchone()
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('shared_buffers', 'synchronous_commit', 'fsync', 'max_connections', 'wal_level', 'work_mem')"
            ).fetchall()
        )
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_total = int(line.split()[1]) * 1024
    git = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": mem_total,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "postgresql": pg[0] if pg else None,
        "postgresql_settings": settings,
        "packages": {
            name: _version_of(name)
            for name in ("nursery-worker", "anyio", "trio", "psycopg", "psycopg-binary", "psycopg-pool")
        },
        "psycopg_impl": psycopg.pq.__impl__,
        "libpq": psycopg.pq.version(),
        "git_commit": git,
        "loadavg_start": loadavg(),
    }


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def dump_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
