"""Section: scale-out. No-op jobs worked off by ``nursery-worker run --processes 1, 2, 4`` on one database,
and by two supervisors side by side (2 × ``--processes 2``, as two hosts would run them).

Concurrency 50 per process. Every run starts the supervisor(s) on an empty queue and waits until
every child has registered (the ``workers`` table), then queues N jobs with one ``defer_many`` (one
commit: every child is woken by the same notification), so the children's staggered start-up does
not count. The figure is N / the database span (first claim to last completion), as in the
throughput section. Verified: all N jobs ``completed`` with ``attempt = 1`` (each ran exactly
once), and the most worker processes seen executing jobs at once (polled every 100 ms) is recorded.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from ._common import BACKENDS, Plan, Report, db_span, log, migrated_schema, truncate_jobs
from ._workers import cli_has_processes, start_cli, stop_cli
from .throughput import enqueue

SECTION = "scaling"
CONCURRENCY = 50
#: (figure name, processes per supervisor, one entry per supervisor)
LAYOUTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("1 process", (1,)),
    ("2 processes", (2,)),
    ("4 processes", (4,)),
    ("2 supervisors × 2 processes", (2, 2)),
)


def _scalar(dsn: str, query: sql.Composable) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


def _registered(dsn: str, schema: str) -> int:
    return int(_scalar(dsn, sql.SQL("SELECT count(*) FROM {}.workers").format(sql.Identifier(schema))))


def _progress(dsn: str, schema: str) -> tuple[bool, int]:
    """Is any job still available or executing, and how many workers are executing jobs right now?

    Both read only the partial indexes of available and executing jobs, so polling them is cheap.
    """
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM {}.jobs WHERE state = 'available'),"
                " (SELECT count(DISTINCT worker_id) FROM {}.jobs WHERE state = 'executing')"
            ).format(s, s)
        ).fetchone()
    assert row is not None
    return bool(row[0]) or int(row[1]) > 0, int(row[1])


def _audit(dsn: str, schema: str) -> dict[str, int]:
    """Counts of the finished run: all jobs, and those completed at their first attempt."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE state = 'completed' AND attempt = 1) FROM {}.jobs").format(
                sql.Identifier(schema)
            )
        ).fetchone()
    assert row is not None
    return {"jobs": int(row[0]), "completed_once": int(row[1])}


def one_run(dsn: str, schema: str, backend: str, layout: tuple[int, ...], n: int) -> tuple[float, dict[str, int]]:
    """Start the supervisor(s), queue *n* jobs once every child is up, wait until done; jobs/s and the audit."""
    truncate_jobs(dsn, schema)
    procs = [start_cli(dsn, schema, backend, CONCURRENCY, p) for p in layout]
    try:
        deadline = time.monotonic() + 120
        while _registered(dsn, schema) < sum(layout):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the workers did not all start ({_registered(dsn, schema)}/{sum(layout)})")
            time.sleep(0.1)
        enqueue(dsn, schema, n)
        deadline = time.monotonic() + 900
        busy_workers = 0
        while True:
            unfinished, executing = _progress(dsn, schema)
            busy_workers = max(busy_workers, executing)
            if not unfinished:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a supervisor ended early or the run timed out")
            time.sleep(0.1)
    finally:
        errors = []
        for p in procs:
            try:
                stop_cli(p)
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))
    return n / db_span(dsn, schema), {**_audit(dsn, schema), "workers": busy_workers}


def run(dsn: str, plan: Plan, report: Report) -> None:
    if not cli_has_processes():
        report.skip("scaling", "nursery-worker run has no --processes")
        return
    n = plan.scaling_jobs
    figs = {
        (name, backend): report.figure(
            section=SECTION,
            name=name,
            system="nursery-worker",
            backend=backend,
            unit="jobs/s",
            higher_is_better=True,
            extra={
                "jobs": n,
                "concurrency_per_process": CONCURRENCY,
                "processes": list(layout),
                "window": "database span, first claim to last completion",
            },
        )
        for name, layout in LAYOUTS
        for backend in BACKENDS
    }
    with migrated_schema(dsn) as schema:
        for rep in range(plan.reps):
            # Alternate the order of the layouts (and of the backends), so a drift in the machine's load
            # does not always favour the layouts measured last.
            for name, layout in LAYOUTS if rep % 2 == 0 else LAYOUTS[::-1]:
                for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                    fig = figs[name, backend]
                    try:
                        rate, audit = one_run(dsn, schema, backend, layout, n)
                    except Exception as exc:
                        report.verify(fig, False, str(exc))
                        continue
                    fig.reps.append(rate)
                    fig.extra.setdefault("most_workers_executing_at_once", []).append(audit["workers"])
                    report.verify(
                        fig,
                        audit["jobs"] == n and audit["completed_once"] == n,
                        f"expected {n} jobs completed at attempt 1, got {audit}",
                    )
                    busy = audit["workers"]
                    log(f"scaling {backend:7} {name}: {rate:,.0f} jobs/s (up to {busy} workers executing at once)")
    for backend in BACKENDS:
        one = figs[LAYOUTS[0][0], backend].median
        for name, _ in LAYOUTS:
            fig = figs[name, backend]
            fig.extra["speedup_vs_1_process"] = fig.median / one if fig.median and one else None
