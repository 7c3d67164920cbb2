"""Section 2, throughput: N jobs already queued, worked off by one worker process (``--once``).

The figure is N / the database span: the first claim (``min(attempted_at)``) to the last
completion (``max(finished_at)``) as recorded in the jobs table. Every peer is timed the same way
from its own tables (PgQueuer: first ``picked`` to last ``successful`` log row; Procrastinate:
first ``started`` to last ``succeeded`` event; oban: ``attempted_at`` / ``completed_at``), so
start-up, the first empty fetch, the stop and how each system notices the queue is empty weigh on
no one. The in-process window (ours: worker RUNNING to STOPPED, taken inside the worker; the peers':
the call that runs the worker to its return) is kept beside it as a cross-check. Beside each figure,
"worker CPU per job" is the worker process's CPU time (user and system, every thread) over its own
window, divided by N, in µs; the peers report theirs the same way. Every system's queue table is
analyzed once the jobs are queued (the shared test server runs without autovacuum; PgQueuer's
dequeue sorts the whole backlog when its table has no statistics). The headline figure
(concurrency 50) runs ``plan.headline_jobs`` jobs (100,000 in the full plan), as PgQueuer's does.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ._common import (
    BACKENDS,
    Plan,
    Report,
    count_states,
    cpu_ms_per_job,
    db_span,
    log,
    migrated_schema,
    truncate_jobs,
)
from ._workers import run_once
from .bench_app import build_app

SECTION = "throughput"
HEADLINE = "no-op, concurrency 50"


def cpu_figure_name(name: str) -> str:
    """The name of the "worker CPU per job" figure beside the throughput figure *name*."""
    return f"worker CPU per job (µs), {name}"


def enqueue(dsn: str, schema: str, n: int, task: str = "bench.noop", *, analyze: bool = False, **args: float) -> None:
    """Queue *n* jobs of *task*; with *analyze*, then ANALYZE the jobs table.

    The shared test server runs without autovacuum, so a table just filled has no statistics; every
    system's queue table is analyzed after queuing (what autovacuum would do to a table that grew).
    """
    app = build_app(dsn, schema)
    try:
        t = app.get_task(task)
        for start in range(0, n, 50_000):
            app.defer_many_sync([t.job(i=i, **args) for i in range(start, min(n, start + 50_000))])
    finally:
        app.close()
    if analyze:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ANALYZE {}.jobs").format(sql.Identifier(schema)))


def record(report: Report, fig_name: str, backend: str, n: int, span: float, results: list[dict[str, Any]]) -> float:
    """Keep the cross-checks of one repetition in the figure's extra; return the headline rate (N / span)."""
    fig = report.find(SECTION, fig_name, backend=backend)
    assert fig is not None
    window = max(r["t_stopped"] for r in results) - min(r["t_running"] for r in results)
    fig.extra.setdefault("process_window_jobs_per_s", []).append(n / window)
    fig.extra.setdefault("db_span_s", []).append(span)
    cpu = report.find(SECTION, cpu_figure_name(fig_name), backend=backend)
    per_job = cpu_ms_per_job(results, n)
    if cpu is not None and per_job is not None:
        cpu.reps.append(per_job * 1000)
    return n / span


def measure(
    report: Report,
    fig_name: str,
    dsn: str,
    schema: str,
    backend: str,
    concurrency: int,
    n: int,
    task: str = "bench.noop",
    **args: float,
) -> float:
    """One repetition: queue *n* jobs, work them off, verify, return jobs/s over the database span."""
    truncate_jobs(dsn, schema)
    enqueue(dsn, schema, n, task, analyze=True, **args)
    result = run_once(dsn, schema, backend, concurrency)
    states = count_states(dsn, schema)
    fig = report.find(SECTION, fig_name, backend=backend)
    assert fig is not None
    report.verify(fig, states == {"completed": n}, f"expected {n} completed jobs, got {states}")
    return record(report, fig_name, backend, n, db_span(dsn, schema), [result])


def run(dsn: str, plan: Plan, report: Report) -> None:
    configs: list[tuple[str, int, int, str, dict[str, float]]] = []
    for c in plan.concurrencies:
        n = plan.headline_jobs if c == 50 else plan.throughput_jobs
        configs.append((f"no-op, concurrency {c}", c, n, "bench.noop", {}))
    configs.append(("1 ms sleep, concurrency 50", 50, plan.sleep_jobs, "bench.sleep", {"ms": 1.0}))
    configs.append(("10 ms sleep, concurrency 50", 50, plan.sleep_jobs, "bench.sleep", {"ms": 10.0}))
    with migrated_schema(dsn) as schema:
        for name, c, jobs, *_ in configs:
            for backend in BACKENDS:
                report.figure(
                    section=SECTION,
                    name=name,
                    system="nursery-worker",
                    backend=backend,
                    unit="jobs/s",
                    higher_is_better=True,
                    extra={"jobs": jobs, "concurrency": c, "window": "database span, first claim to last completion"},
                )
                report.figure(
                    section=SECTION,
                    name=cpu_figure_name(name),
                    system="nursery-worker",
                    backend=backend,
                    unit="µs/job",
                    higher_is_better=False,
                    extra={"jobs": jobs, "concurrency": c, "window": "the worker's own window, RUNNING to STOPPED"},
                )
        for rep in range(plan.reps):
            for name, c, jobs, task, args in configs:
                for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                    rate = measure(report, name, dsn, schema, backend, c, jobs, task, **args)
                    fig = report.find(SECTION, name, backend=backend)
                    assert fig is not None
                    fig.reps.append(rate)
                    cpu = report.find(SECTION, cpu_figure_name(name), backend=backend)
                    log(
                        f"throughput {backend:7} {name} (N={jobs:,}): {rate:,.0f} jobs/s over the database span, "
                        f"{fig.extra['process_window_jobs_per_s'][-1]:,.0f} over the worker's window, "
                        f"{cpu.reps[-1] if cpu and cpu.reps else float('nan'):.0f} µs CPU/job"
                    )
