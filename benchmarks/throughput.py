"""Section 2, throughput: N jobs already queued, worked off by one worker process (``--once``).

The figure is N / (time the worker was RUNNING until it STOPPED), taken inside the worker process,
so interpreter start-up, imports, connecting and registering are not counted, while the tail (the
last completion write, the empty fetch that ends ``--once``, deregistering) is. The span in the
database (first ``attempted_at`` to last ``finished_at``) is kept beside it as a cross-check.

Beside each one-process figure, "worker CPU per job" is the worker process's CPU time (user and
system, every thread: ``time.process_time``) over the same span, divided by N, in µs: what the
worker spends per job, whatever else the machine was doing meanwhile.
"""

from __future__ import annotations

from ._common import BACKENDS, Plan, Report, count_states, db_span, log, migrated_schema, truncate_jobs
from ._workers import cli_has_processes, finish_runner, run_cli_processes, run_once, start_runner
from .bench_app import build_app

SECTION = "throughput"


def cpu_figure_name(name: str) -> str:
    """The name of the "worker CPU per job" figure beside the throughput figure *name*."""
    return f"worker CPU per job (µs), {name}"


def enqueue(dsn: str, schema: str, n: int, task: str = "bench.noop", **args: float) -> None:
    app = build_app(dsn, schema)
    try:
        t = app.get_task(task)
        for start in range(0, n, 50_000):
            app.defer_many_sync([t.job(i=i, **args) for i in range(start, min(n, start + 50_000))])
    finally:
        app.close()


def measure(
    report: Report,
    fig_name: str,
    dsn: str,
    schema: str,
    backend: str,
    concurrency: int,
    n: int,
    task: str = "bench.noop",
    processes: int = 1,
    **args: float,
) -> float:
    """One repetition: queue *n* jobs, work them off, verify, return jobs/s."""
    truncate_jobs(dsn, schema)
    enqueue(dsn, schema, n, task, **args)
    if processes > 1 and cli_has_processes():
        run_cli_processes(dsn, schema, backend, concurrency, processes, n)
        rate_wall = n / db_span(dsn, schema)
    elif processes > 1:
        # Stand-in for the supervisor: N independent worker processes side by side.
        procs = [start_runner(dsn, schema, backend, concurrency, once=True) for _ in range(processes)]
        results = [finish_runner(p) for p in procs]
        rate_wall = n / (max(r["t_stopped"] for r in results) - min(r["t_running"] for r in results))
    else:
        result = run_once(dsn, schema, backend, concurrency)
        rate_wall = n / (result["t_stopped"] - result["t_running"])
        cpu = report.find(SECTION, cpu_figure_name(fig_name), backend=backend)
        if cpu is not None:
            cpu.reps.append((result["cpu_stopped"] - result["cpu_running"]) / n * 1e6)
    span = db_span(dsn, schema)
    states = count_states(dsn, schema)
    fig = report.find(SECTION, fig_name, backend=backend)
    assert fig is not None
    report.verify(fig, states == {"completed": n}, f"expected {n} completed jobs, got {states}")
    fig.extra.setdefault("db_span_jobs_per_s", []).append(n / span if span else None)
    return rate_wall


def run(dsn: str, plan: Plan, report: Report) -> None:
    n = plan.throughput_jobs
    two = (
        "2 processes (nursery-worker run --processes 2)"
        if cli_has_processes()
        else ("2 worker processes side by side (stand-in: no --processes yet)")
    )
    configs: list[tuple[str, int, int, str, dict[str, float], int]] = []
    for c in plan.concurrencies:
        configs.append((f"no-op, concurrency {c}", c, n, "bench.noop", {}, 1))
    configs.append((f"no-op, concurrency 50, {two}", 50, n, "bench.noop", {}, 2))
    configs.append(("1 ms sleep, concurrency 50", 50, plan.sleep_jobs, "bench.sleep", {"ms": 1.0}, 1))
    configs.append(("10 ms sleep, concurrency 50", 50, plan.sleep_jobs, "bench.sleep", {"ms": 10.0}, 1))
    with migrated_schema(dsn) as schema:
        for name, c, jobs, _, _, processes in configs:
            for backend in BACKENDS:
                report.figure(
                    section=SECTION,
                    name=name,
                    system="nursery-worker",
                    backend=backend,
                    unit="jobs/s",
                    higher_is_better=True,
                    extra={"jobs": jobs, "concurrency": c},
                )
                if processes == 1:
                    report.figure(
                        section=SECTION,
                        name=cpu_figure_name(name),
                        system="nursery-worker",
                        backend=backend,
                        unit="µs/job",
                        higher_is_better=False,
                        extra={"jobs": jobs, "concurrency": c},
                    )
        for rep in range(plan.reps):
            for name, c, jobs, task, args, processes in configs:
                for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                    rate = measure(report, name, dsn, schema, backend, c, jobs, task, processes, **args)
                    fig = report.find(SECTION, name, backend=backend)
                    assert fig is not None
                    fig.reps.append(rate)
                    log(f"throughput {backend:7} {name}: {rate:,.0f} jobs/s")
