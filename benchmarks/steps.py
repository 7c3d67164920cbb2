"""The steps section (issue 22): what a durable step costs over a plain call.

    python -m benchmarks --only steps              # 2,000 jobs per run, 3 repetitions
    python -m benchmarks --only steps --quick      # 200 jobs per run, one repetition

Two tasks of ``benchmarks/bench_app.py`` make the same 10 calls of a no-op coroutine:
``bench.steps`` makes each a durable step (``await context.step(f"s{k}", nothing)``: the job's
steps are read once, then each step is one write guarded by the attempt's lease), ``bench.calls``
awaits it directly (``await nothing()``). For each engine (PostgreSQL at ``--dsn``; SQLite in a
file of a temporary directory, ``synchronous=full``, its default) and each loop, ``plan.step_jobs``
jobs of one task are queued in a fresh database and worked off by one worker process (``--once``,
concurrency 50); then the same for the other task (which goes first alternates between
repetitions). The figures, medians of the repetitions:

- jobs/s of each task, over the worker's own window (RUNNING to STOPPED);
- the step overhead, wall clock: ``(t_steps - t_plain) / (jobs × 10)`` in µs per step, from the
  two runs of one repetition: the time a step adds to a run at concurrency 50, where a job's steps
  follow one another and 50 jobs run at once (one job waits about 50 times longer per step);
- the step overhead in the worker's CPU: the worker process's extra CPU time per step, in µs.

Every run is verified in its database: all jobs completed, and the steps task stored jobs × 10
completed steps (the plain one none).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from psycopg import sql

from ._common import BACKENDS, Figure, Plan, Report, log
from ._workers import run_once
from .bench_app import build_app
from .sqlite_engine import database

SECTION = "steps"
STEPS_PER_JOB = 10
CONCURRENCY = 50
#: The engines measured: name -> the label the figures carry.
ENGINES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}
#: The two tasks: variant -> task name.
VARIANTS = {"calls": "bench.calls", "steps": "bench.steps"}


def figure_names(engine: str) -> dict[str, str]:
    """The names of the section's four figures for *engine* (each measured on both loops)."""
    label = ENGINES[engine]
    return {
        "calls": f"{label}: job of {STEPS_PER_JOB} plain calls",
        "steps": f"{label}: job of {STEPS_PER_JOB} steps",
        "wall": f"{label}: step overhead, wall clock",
        "cpu": f"{label}: step overhead, worker CPU",
    }


def _enqueue(engine: str, dsn: str, schema: str, task: str, n: int) -> None:
    app = build_app(dsn, schema)
    try:
        t = app.get_task(task)
        app.defer_many_sync([t.job(n=STEPS_PER_JOB, i=i) for i in range(n)])
    finally:
        app.close()
    if engine == "postgres":
        # As the throughput section does: the shared test server runs without autovacuum.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ANALYZE {}.jobs").format(sql.Identifier(schema)))


def _counts(engine: str, dsn: str, schema: str) -> tuple[dict[str, int], int]:
    """The jobs by state and the completed steps, read from the database."""
    if engine == "postgres":
        with psycopg.connect(dsn, autocommit=True) as conn:
            s = sql.Identifier(schema)
            states = conn.execute(sql.SQL("SELECT state, count(*) FROM {}.jobs GROUP BY state").format(s)).fetchall()
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}.steps WHERE state = 'completed'").format(s)).fetchone()
    else:
        path = dsn.removeprefix("sqlite:///").partition("?")[0]
        conn3 = sqlite3.connect(path)
        try:
            states = conn3.execute(f'SELECT state, count(*) FROM "{schema}_jobs" GROUP BY state').fetchall()
            row = conn3.execute(f"SELECT count(*) FROM \"{schema}_steps\" WHERE state = 'completed'").fetchone()
        finally:
            conn3.close()
    return {str(state): int(n) for state, n in states}, int(row[0]) if row else 0


def _one_run(pg_dsn: str, engine: str, backend: str, variant: str, n: int) -> dict[str, Any]:
    """Queue *n* jobs of *variant* in a fresh database, work them off with one worker process, count."""
    with database(engine, pg_dsn) as (dsn, schema):
        _enqueue(engine, dsn, schema, VARIANTS[variant], n)
        result = run_once(dsn, schema, backend, CONCURRENCY)
        states, steps = _counts(engine, dsn, schema)
    return {
        "seconds": result["t_stopped"] - result["t_running"],
        "cpu_seconds": result["cpu_stopped"] - result["cpu_running"],
        "states": states,
        "steps": steps,
    }


def run(dsn: str, plan: Plan, report: Report) -> None:
    n = plan.step_jobs
    figs: dict[tuple[str, str, str], Figure] = {}
    for engine in ENGINES:
        names = figure_names(engine)
        for backend in BACKENDS:
            extra = {"engine": engine, "jobs": n, "steps_per_job": STEPS_PER_JOB, "concurrency": CONCURRENCY}
            for variant in VARIANTS:
                figs[engine, backend, variant] = report.figure(
                    section=SECTION,
                    name=names[variant],
                    system="nursery-worker",
                    backend=backend,
                    unit="jobs/s",
                    higher_is_better=True,
                    extra={**extra, "window": "the worker's own window, RUNNING to STOPPED"},
                )
            for kind, formula in (
                ("wall", "(t_steps - t_plain) / (jobs × steps per job), the worker's windows"),
                ("cpu", "(cpu_steps - cpu_plain) / (jobs × steps per job), the worker process"),
            ):
                figs[engine, backend, kind] = report.figure(
                    section=SECTION,
                    name=names[kind],
                    system="nursery-worker",
                    backend=backend,
                    unit="µs/step",
                    higher_is_better=False,
                    extra={**extra, "formula": formula},
                )
    total_steps = n * STEPS_PER_JOB
    for rep in range(plan.reps):
        # Alternate the order of the loops and of the two tasks, so drift in the machine's load falls on both.
        order = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
        for engine in ENGINES:
            for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                runs: dict[str, dict[str, Any]] = {}
                for variant in order:
                    out = runs[variant] = _one_run(dsn, engine, backend, variant, n)
                    fig = figs[engine, backend, variant]
                    expected_steps = total_steps if variant == "steps" else 0
                    report.verify(
                        fig,
                        out["states"] == {"completed": n} and out["steps"] == expected_steps,
                        f"expected {n} completed jobs and {expected_steps} completed steps, "
                        f"got {out['states']} and {out['steps']}",
                    )
                    fig.reps.append(n / out["seconds"])
                    fig.extra.setdefault("cpu_seconds", []).append(out["cpu_seconds"])
                wall = (runs["steps"]["seconds"] - runs["calls"]["seconds"]) / total_steps * 1e6
                cpu = (runs["steps"]["cpu_seconds"] - runs["calls"]["cpu_seconds"]) / total_steps * 1e6
                figs[engine, backend, "wall"].reps.append(wall)
                figs[engine, backend, "cpu"].reps.append(cpu)
                plain_rate, steps_rate = (figs[engine, backend, v].reps[-1] for v in ("calls", "steps"))
                log(
                    f"steps {ENGINES[engine]:10} {backend:7} (N={n:,}): plain {plain_rate:,.0f} jobs/s, "
                    f"steps {steps_rate:,.0f} jobs/s; {wall:,.1f} µs/step wall clock, {cpu:,.1f} µs/step worker CPU"
                )
