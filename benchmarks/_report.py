"""The targets of issue 21 (performance) and the printed tables."""

from __future__ import annotations

import statistics
from typing import Any

from ._common import Figure, Report
from .baseline import PLAIN_SQL_LIMIT

PEER_SYSTEMS = ("pgqueuer", "procrastinate", "oban")


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:
        return "n/a"
    if abs(value) < 10 or unit == "ratio":
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _median(fig: Figure | None) -> float | None:
    return fig.median if fig is not None else None


def _target(name: str, measured: float | None, goal: float, *, at_least: bool, unit: str, basis: str) -> dict[str, Any]:
    if measured is None:
        return {
            "target": name,
            "measured": None,
            "goal": goal,
            "met": None,
            "ratio": None,
            "unit": unit,
            "basis": basis + " (not measured in this run)",
        }
    ratio = measured / goal if at_least else (goal / measured if measured else None)
    met = measured >= goal if at_least else measured <= goal
    return {
        "target": name,
        "measured": measured,
        "goal": goal,
        "met": met,
        "ratio": ratio,
        "unit": unit,
        "basis": basis,
    }


def _against_pgqueuer(
    name: str, ours: float | None, theirs: float | None, *, at_least: bool, basis: str, needs: str
) -> dict[str, Any]:
    """A target measured as our figure over PgQueuer's in the same run (goal 1×)."""
    measured = ours / theirs if ours is not None and theirs else None
    return _target(
        name, measured, 1.0, at_least=at_least, unit="× PgQueuer's", basis=basis if theirs else f"needs {needs}"
    )


def targets(report: Report) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    find = report.find
    peer_best = max(
        (
            (f.median, f.system)
            for f in report.figures
            if f.section == "throughput" and f.name == "no-op, concurrency 50" and f.system in PEER_SYSTEMS and f.reps
        ),
        default=(None, None),
    )
    base = find("baseline", "claim 100 + complete 100, SKIP LOCKED, one connection", "plain-sql", "-")
    limit = find("baseline", PLAIN_SQL_LIMIT, "plain-sql", "-")
    for backend in ("asyncio", "trio"):
        ours = _median(find("throughput", "no-op, concurrency 50", backend=backend))
        if peer_best[0] is not None and ours is not None:
            rows.append(
                _target(
                    f"throughput ≥ 3× the fastest peer ({backend})",
                    ours / peer_best[0],
                    3.0,
                    at_least=True,
                    unit="×",
                    basis=f"concurrency 50 vs {peer_best[1]} {_fmt(peer_best[0])} jobs/s",
                )
            )
        else:
            rows.append(
                _target(
                    f"throughput ≥ 3× the fastest peer ({backend})",
                    None,
                    3.0,
                    at_least=True,
                    unit="×",
                    basis="needs the peers section",
                )
            )
        if limit is not None and limit.reps and ours is not None:
            rows.append(
                _target(
                    f"throughput ≥ 25% of the plain-SQL limit ({backend})",
                    ours / limit.median,
                    0.25,
                    at_least=True,
                    unit="fraction",
                    basis=f"limit {_fmt(limit.median)} rows/s (one statement claims and completes 100, 2 connections)",
                )
            )
    minimal = find("baseline", "claim 100 + complete 100, minimal table (id, state, args)", "plain-sql", "-")
    rows.append(
        _target(
            "plain-SQL claim-and-complete on our table ≥ 60% of the minimal table",
            base.median / minimal.median
            if base is not None and minimal is not None and base.reps and minimal.reps and minimal.median
            else None,
            0.60,
            at_least=True,
            unit="fraction",
            basis="the baseline loop (claim 100, complete 100, one connection) on each table, medians",
        )
    )
    for f in report.figures:
        if f.system != "nursery-worker":
            continue
        if f.section == "enqueue" and f.name.startswith("defer_batch"):
            rows.append(
                _target(
                    f"lean bulk enqueue (defer_batch) ≥ 100,000 jobs/s ({f.backend})",
                    f.median,
                    100_000,
                    at_least=True,
                    unit="jobs/s",
                    basis=f.name,
                )
            )
        if f.section == "latency" and f.name == "pickup p50, LISTEN/NOTIFY":
            rows.append(
                _target(
                    f"pickup p50 with LISTEN ≤ 1.5 ms ({f.backend})",
                    f.median,
                    1.5,
                    at_least=False,
                    unit="ms",
                    basis="median of the runs' p50",
                )
            )
        if f.section == "latency" and f.name == "pickup p99, LISTEN/NOTIFY":
            rows.append(
                _target(
                    f"pickup p99 with LISTEN ≤ 4 ms ({f.backend})",
                    f.median,
                    4.0,
                    at_least=False,
                    unit="ms",
                    basis="median of the runs' p99",
                )
            )
        if f.section == "growth" and f.unit == "ratio":
            rows.append(
                {
                    **_target(
                        f"worker RSS flat ±10% ({f.backend})",
                        f.median,
                        1.10,
                        at_least=False,
                        unit="×",
                        basis=f"{f.extra.get('rss_warm_mib', 0):.1f} → {f.extra.get('rss_end_mib', 0):.1f} MiB",
                    ),
                    "met": f.median is not None and 0.9 <= f.median <= 1.1,
                }
            )
    pgq_p50 = _median(find("latency", "pickup p50, LISTEN/NOTIFY", "pgqueuer"))
    pgq_single = _median(find("enqueue", "single defer(), sequential", "pgqueuer"))
    for backend in ("asyncio", "trio"):
        cpu = _median(find("throughput", "worker CPU per job (µs), no-op, concurrency 50", backend=backend))
        rows.append(
            _target(
                f"worker CPU per no-op job ≤ 30 µs ({backend})",
                cpu,
                30.0,
                at_least=False,
                unit="µs",
                basis="the worker process's CPU time from RUNNING to STOPPED / jobs, concurrency 50",
            )
        )
        rows.append(
            _against_pgqueuer(
                f"pickup p50 with LISTEN below PgQueuer's ({backend})",
                _median(find("latency", "pickup p50, LISTEN/NOTIFY", backend=backend)),
                pgq_p50,
                at_least=False,
                basis=f"PgQueuer's p50 {_fmt(pgq_p50, 'ms')} ms in the same run",
                needs="the latency and peers sections",
            )
        )
        rows.append(
            _against_pgqueuer(
                f"single defer() ≥ PgQueuer's ({backend})",
                _median(find("enqueue", "single defer(), sequential", backend=backend)),
                pgq_single,
                at_least=True,
                basis=f"PgQueuer {_fmt(pgq_single)} jobs/s in the same run",
                needs="the enqueue and peers sections",
            )
        )
    growth = [f for f in report.figures if f.section == "growth" and f.unit == "jobs/s"]
    for backend in ("asyncio", "trio"):
        mine = sorted((f for f in growth if f.backend == backend), key=lambda f: f.extra.get("finished_rows", 0))
        if len(mine) >= 2 and mine[0].median and mine[-1].median:
            rows.append(
                _target(
                    f"throughput with {mine[-1].extra['finished_rows']:,} finished rows "
                    f"within 20% of empty ({backend})",
                    mine[-1].median / mine[0].median,
                    0.8,
                    at_least=True,
                    unit="fraction",
                    basis=f"{_fmt(mine[-1].median)} vs {_fmt(mine[0].median)} jobs/s",
                )
            )
    # Under a 60 s long transaction at a steady offered load (benchmarks/bloat.py).
    during = find("bloat", "rate during / clean")
    if during is not None:
        rows.append(
            _target(
                "under a long transaction: rate ≥ 90% of clean",
                _median(during),
                0.9,
                at_least=True,
                unit="of clean",
                basis="completed jobs/s while the transaction is open, over the clean phase",
            )
        )
        back = find("bloat", "return to clean rate")
        lower_bound = back is not None and bool(back.extra.get("lower_bound"))
        rows.append(
            _target(
                "back to the clean rate within 10 s of its end",
                _median(back),
                10.0,
                at_least=False,
                unit="s",
                basis="3 s mean ≥ 90% of clean and the backlog back to its clean level"
                + ("; a lower bound: not back while the load ran" if lower_bound else ""),
            )
        )
    # trio within 15% of asyncio on every figure measured on both.
    worst: tuple[float, str] | None = None
    pairs = []
    for f in report.figures:
        if f.system != "nursery-worker" or f.backend != "trio" or not f.reps:
            continue
        a = find(f.section, f.name, backend="asyncio")
        if a is None or not a.reps or f.unit == "ratio":
            continue
        ratio = f.median / a.median if f.higher_is_better else a.median / f.median
        pairs.append({"figure": f"{f.section}: {f.name}", "trio_vs_asyncio": ratio})
        if worst is None or ratio < worst[0]:
            worst = (ratio, f"{f.section}: {f.name}")
    if worst is not None:
        row = _target(
            "trio within 15% of asyncio on every figure (worst)",
            worst[0],
            0.85,
            at_least=True,
            unit="trio/asyncio",
            basis=worst[1],
        )
        row["pairs"] = pairs
        row["failing"] = [p for p in pairs if p["trio_vs_asyncio"] < 0.85]
        rows.append(row)
    return rows


def _median_of(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _headline_details(figures: list[dict[str, Any]]) -> list[str]:
    """The headline throughput of every system: N, both windows and the worker's CPU per job."""
    rows = [f for f in figures if f["section"] == "throughput" and f["name"] == "no-op, concurrency 50" and f["reps"]]
    if not rows:
        return []
    cpu = {
        (f["system"], f["backend"]): f["median"]
        for f in figures
        if f["section"] == "throughput" and f["name"] == "worker CPU per job (µs), no-op, concurrency 50"
    }
    out = [
        "| no-op, concurrency 50 | N | jobs/s, database span (headline) | jobs/s, worker's own window "
        "| worker CPU per job (µs) | settings |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for f in rows:
        extra = f["extra"]
        label = f["system"] if f["system"] != "nursery-worker" else f"nursery-worker/{f['backend']}"
        ours = f["system"] == "nursery-worker"
        settings = f"concurrency 50, {f['backend']}" if ours else f["notes"].split("; ", 1)[-1]
        out.append(
            f"| {label} | {extra.get('jobs', 0):,} | {_fmt(f['median'])} "
            f"| {_fmt(_median_of(extra.get('process_window_jobs_per_s', [])))} "
            f"| {_fmt(cpu.get((f['system'], f['backend'])))} | {settings} |"
        )
    out.append("")
    return out


def _scaling(figures: list[dict[str, Any]]) -> list[str]:
    """The scaling section as a table and a small text curve (bars scaled to the fastest figure)."""
    rows = [f for f in figures if f["section"] == "scaling" and f["reps"]]
    if not rows:
        return []
    names = list(dict.fromkeys(f["name"] for f in rows))
    backends = list(dict.fromkeys(f["backend"] for f in rows))
    by = {(f["name"], f["backend"]): f for f in rows}
    jobs = rows[0]["extra"].get("jobs", 0)
    out = [
        f"\n### Scaling: no-op jobs, concurrency 50 per process, N = {jobs:,} (jobs/s, speed-up vs 1 process)\n",
        "| layout | " + " | ".join(f"{b} jobs/s | {b} speed-up" for b in backends) + " |",
        "|---|" + "---:|---:|" * len(backends),
    ]
    for name in names:
        cells = []
        for b in backends:
            f = by.get((name, b))
            speedup = f["extra"].get("speedup_vs_1_process") if f else None
            cells.append(f"{_fmt(f['median']) if f else 'n/a'} | {_fmt(speedup, 'ratio')}x")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    top = max(f["median"] for f in rows) or 1.0
    out.append("\n```")
    for b in backends:
        for name in names:
            f = by.get((name, b))
            if f is None:
                continue
            bar = "#" * max(1, round(40 * f["median"] / top))
            out.append(f"{b:7} {name:>28} | {bar:<40} {f['median']:>8,.0f} jobs/s")
    out.append("```")
    return out


def _steps(figures: list[dict[str, Any]]) -> list[str]:
    """The steps section as one table: per engine and loop, both tasks' jobs/s and the overheads per step."""
    rows = [f for f in figures if f["section"] == "steps" and f["reps"]]
    if not rows:
        return []
    by = {(f["extra"]["engine"], f["backend"], f["name"].split(": ", 1)[1]): f for f in rows}
    first = rows[0]["extra"]
    per_job = first.get("steps_per_job", 10)
    out = [
        f"\n### Durable steps: a job of {per_job} steps against a job of {per_job} plain calls "
        f"(N = {first.get('jobs', 0):,} jobs per run, concurrency {first.get('concurrency')})\n",
        "| engine, loop | plain calls (jobs/s) | steps (jobs/s) | overhead, wall clock (µs/step) "
        "| overhead, worker CPU (µs/step) |",
        "|---|---:|---:|---:|---:|",
    ]
    for engine, backend in dict.fromkeys((f["extra"]["engine"], f["backend"]) for f in rows):
        label = next(f["name"].split(": ", 1)[0] for f in rows if f["extra"]["engine"] == engine)
        cells = []
        for suffix in (
            f"job of {per_job} plain calls",
            f"job of {per_job} steps",
            "step overhead, wall clock",
            "step overhead, worker CPU",
        ):
            f = by.get((engine, backend, suffix))
            cells.append(_fmt(f["median"]) if f else "n/a")
        out.append(f"| {label}, {backend} | " + " | ".join(cells) + " |")
    return out


def print_tables(data: dict[str, Any]) -> None:
    env = data["environment"]
    out: list[str] = []
    out.append(f"\n## nursery-worker benchmarks ({data['mode']}, {data['plan']['reps']} repetition(s), medians)\n")
    out.append(
        f"{env['cpu_count']} CPUs ({env['cpu_model']}), Linux {env['kernel']}, Python {env['python']}, "
        f"{(env['postgresql'] or '').split(' on ')[0]}, psycopg {env['packages'].get('psycopg')}, "
        f"anyio {env['packages'].get('anyio')}, trio {env['packages'].get('trio')}; "
        f"load average {env['loadavg_start']} -> {env.get('loadavg_end')}\n"
    )
    figures = data["figures"]
    # Side by side: the workloads the peers run too.
    systems = ["nursery-worker/asyncio", "nursery-worker/trio", *PEER_SYSTEMS]
    present = [s for s in systems if any(f"{f['system']}/{f['backend']}" == s or f["system"] == s for f in figures)]
    shared = []
    for f in figures:
        if f["system"] in PEER_SYSTEMS and (f["section"], f["name"]) not in shared:
            shared.append((f["section"], f["name"]))
    if shared:
        out.append("| workload (median) | " + " | ".join(present) + " |")
        out.append("|---|" + "---:|" * len(present))
        for section, name in shared:
            cells = []
            for s in present:
                system, _, backend = s.partition("/")
                match = [
                    f
                    for f in figures
                    if (f["section"], f["name"], f["system"]) == (section, name, system)
                    and (not backend or f["backend"] == backend)
                ]
                cells.append(_fmt(match[0]["median"], match[0]["unit"]) if match else "n/a")
            unit = next(f["unit"] for f in figures if (f["section"], f["name"]) == (section, name))
            out.append(f"| {section}: {name} ({unit}) | " + " | ".join(cells) + " |")
        out.append("")
        out.extend(_headline_details(figures))
        for f in figures:
            if f["system"] == "plain-sql":
                out.append(f"- plain-SQL baseline, {f['name']}: {_fmt(f['median'])} rows/s")
        out.append("")
    for skipped in data["skipped"]:
        out.append(f"- skipped {skipped['what']}: {skipped['why']}")
    out.append("\n| section | figure | system | backend | median | unit | repetitions | verified |")
    out.append("|---|---|---|---|---:|---|---|---|")
    for f in figures:
        reps = ", ".join(_fmt(r, f["unit"]) for r in f["reps"])
        out.append(
            f"| {f['section']} | {f['name']} | {f['system']} | {f['backend']} | {_fmt(f['median'], f['unit'])} "
            f"| {f['unit']} | {reps} | {'yes' if f['verified'] else 'NO'} |"
        )
    out.extend(_scaling(figures))
    out.extend(_steps(figures))
    if data["targets"]:
        out.append("\n| target | measured | goal | ratio | met | basis |")
        out.append("|---|---:|---:|---:|---|---|")
        for t in data["targets"]:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
            out.append(
                f"| {t['target']} | {_fmt(t['measured'], 'ms')} {t['unit']} | {_fmt(t['goal'], 'ms')} "
                f"| {_fmt(t['ratio'], 'ratio')} | {met} | {t['basis']} |"
            )
    if data["levers"]:
        out.append("\n| lever | variant | median | unit | notes |")
        out.append("|---|---|---:|---|---|")
        for lv in data["levers"]:
            out.append(f"| {lv['lever']} | {lv['variant']} | {_fmt(lv['median'])} | {lv['unit']} | {lv['notes']} |")
    out.append(f"\nverification: {'all passed' if data['verification']['passed'] else 'FAILED'}")
    print("\n".join(out), flush=True)


__all__ = ["print_tables", "statistics", "targets"]
