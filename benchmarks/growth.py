"""Section 4, growth: throughput with 0, 100k and 1M finished jobs in the table; worker RSS over many jobs.

Finished rows are added with one ``INSERT ... SELECT generate_series`` into the jobs table of a
schema migrated through the public ``App.migrate_sync()``, followed by ``VACUUM ANALYZE`` (the state
autovacuum would leave a long-lived table in). Then N new no-op jobs are queued and worked off by
one worker process at concurrency 50, as in the throughput section.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from ._common import BACKENDS, Plan, Report, log, migrated_schema, percentile, truncate_jobs
from ._workers import run_once
from .throughput import enqueue

SECTION = "growth"
CONCURRENCY = 50

_FILL = """
INSERT INTO {s}.jobs (task, queue, args, state, attempt, scheduled_at, inserted_at, attempted_at, finished_at)
SELECT 'bench.noop', 'bench', jsonb_build_object('i', g), 'completed', 1,
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, %s) AS g
"""


def _fill(dsn: str, schema: str, rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if rows:
            conn.execute(sql.SQL(_FILL).format(s=sql.Identifier(schema)), [rows])
        conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(sql.Identifier(schema)))
    return time.perf_counter() - started


def _max_id(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT coalesce(max(id), 0) FROM {}.jobs").format(sql.Identifier(schema))
        ).fetchone()
    return int(row[0]) if row else 0


def _states_after(dsn: str, schema: str, min_id: int) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT state, count(*) FROM {}.jobs WHERE id > %s GROUP BY state").format(sql.Identifier(schema)),
            [min_id],
        ).fetchall()
    return {str(s): int(n) for s, n in rows}


def _delete_after(dsn: str, schema: str, min_id: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {}.jobs WHERE id > %s").format(sql.Identifier(schema)), [min_id])
        conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(sql.Identifier(schema)))


def run_throughput(dsn: str, plan: Plan, report: Report) -> None:
    n = plan.growth_jobs
    with migrated_schema(dsn) as schema:
        filled = 0
        for target in plan.growth_fills:
            secs = _fill(dsn, schema, target - filled)
            log(f"growth: table filled to {target:,} finished jobs in {secs:.1f}s")
            filled = target
            figs = {
                b: report.figure(
                    section=SECTION,
                    name=f"no-op, concurrency {CONCURRENCY}, {target:,} finished jobs in the table",
                    system="nursery-worker",
                    backend=b,
                    unit="jobs/s",
                    higher_is_better=True,
                    extra={"jobs": n, "finished_rows": target, "fill_seconds": secs},
                )
                for b in BACKENDS
            }
            base = _max_id(dsn, schema)
            for rep in range(plan.reps):
                for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                    enqueue(dsn, schema, n)
                    result = run_once(dsn, schema, backend, CONCURRENCY)
                    rate = n / (result["t_stopped"] - result["t_running"])
                    fig = figs[backend]
                    fig.reps.append(rate)
                    states = _states_after(dsn, schema, base)
                    report.verify(fig, states == {"completed": n}, f"expected {n} new completed jobs, got {states}")
                    _delete_after(dsn, schema, base)
                    log(f"growth {backend:7} {target:,} finished rows: {rate:,.0f} jobs/s")


def run_rss(dsn: str, plan: Plan, report: Report) -> None:
    n = plan.rss_jobs
    with migrated_schema(dsn) as schema:
        for backend in BACKENDS:
            truncate_jobs(dsn, schema)
            enqueue(dsn, schema, n)
            result = run_once(dsn, schema, backend, CONCURRENCY, rss=True)
            samples = result["rss"]  # (time, processed, rss bytes)
            warm = next((s for s in samples if s[1] >= n * 0.1), samples[0])
            end = samples[-1]
            peak = max(s[2] for s in samples)
            ratio = end[2] / warm[2]
            mib = 1024 * 1024
            fig = report.figure(
                section=SECTION,
                name=f"worker RSS end / after the first 10% of {n:,} jobs",
                system="nursery-worker",
                backend=backend,
                unit="ratio",
                higher_is_better=False,
                reps=[ratio],
                extra={
                    "jobs": n,
                    "rss_first_mib": samples[0][2] / mib,
                    "rss_warm_mib": warm[2] / mib,
                    "rss_end_mib": end[2] / mib,
                    "rss_max_mib": peak / mib,
                    "rss_p50_mib": percentile([s[2] for s in samples], 50) / mib,
                    "samples": len(samples),
                    "curve_mib": [(round(s[1]), round(s[2] / mib, 1)) for s in samples[:: max(1, len(samples) // 20)]],
                },
            )
            report.verify(fig, result["completed"] == n, f"worker completed {result['completed']} of {n}")
            log(
                f"growth {backend:7} RSS over {n:,} jobs: warm {warm[2] / mib:.1f} MiB, end {end[2] / mib:.1f} MiB, "
                f"max {peak / mib:.1f} MiB (ratio {ratio:.3f})"
            )


def run(dsn: str, plan: Plan, report: Report) -> None:
    run_throughput(dsn, plan, report)
    run_rss(dsn, plan, report)
