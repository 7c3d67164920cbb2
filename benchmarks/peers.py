"""Section 5a, the peers: PgQueuer, Procrastinate and oban-py on the same workloads, same run, same server.

They are installed by the harness into a venv of their own (``benchmarks/.peers-venv``, not a
dependency of nursery-worker; oban-py needs Python >= 3.12, so the venv uses the newest of
``$NW_BENCH_PEERS_PYTHON``, ``python3.13``, ``python3.12`` and this interpreter). Each peer runs in a
database of its own, created for the run and dropped after it; each workload runs in a fresh
process of that venv's Python (``benchmarks/peer_scripts/<peer>_bench.py``) and verifies its result in the
database. A peer that cannot be installed or set up is skipped with a one-line reason.

Throughput is timed as nursery-worker's: N / the span from the first claim to the last completion
in the peer's own tables, with the in-process window and the worker process's CPU time per job
beside it (``benchmarks/throughput.py``). PgQueuer runs at ``SETTINGS`` and also measures its
pickup latency (an idle worker, LISTEN, the latency section's probe method), so our latency and
single ``defer()`` targets compare with it in the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ._common import BENCH_DIR, Plan, Report, log
from .throughput import cpu_figure_name

SECTION = "peers"
VENV = BENCH_DIR / ".peers-venv"
PEERS = {"pgqueuer": ["pgqueuer", "asyncpg"], "procrastinate": ["procrastinate"], "oban": ["oban"]}
CONCURRENCY = 50
#: Each peer's settings beyond its defaults (the harness's production choice, printed in the tables).
#: PgQueuer: ``pgq run`` runs on uvloop (a dependency of PgQueuer outside Windows); batch_size 25
#: is the most max_concurrent_tasks=50 allows (it must be at least twice the batch), the tuning
#: guide's advice for short jobs ("increase batch_size"), and measured fastest here at concurrency 50.
SETTINGS: dict[str, list[str]] = {"pgqueuer": ["--loop", "uvloop", "--batch-size", "25"]}
LATENCY_PEERS = ("pgqueuer",)


def _python_candidates() -> list[str]:
    """Interpreters to build the venv with, best first: the first one >= 3.12 that works is taken."""
    found = [os.environ.get("NW_BENCH_PEERS_PYTHON", "")]
    found += [shutil.which(name) or "" for name in ("python3.13", "python3.12")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += sorted((str(p) for p in pyenv.glob("3.1[2-9]*/bin/python3")), reverse=True)
    usable = []
    for candidate in filter(None, found):
        proc = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"], capture_output=True, text=True
        )
        if proc.returncode == 0 and proc.stdout.strip() == "True":
            usable.append(candidate)
    return [*usable, sys.executable]


def peer_dsn(dsn: str, dbname: str) -> str:
    """*dsn* pointed at *dbname*, as a URL (asyncpg takes URLs only)."""
    p = conninfo_to_dict(dsn)
    auth = quote(str(p.get("user", "postgres")))
    if p.get("password"):
        auth += ":" + quote(str(p["password"]))
    return f"postgresql://{auth}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{dbname}"


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> tuple[dict[str, str], str]:
    """Create the venv (once) and install what can be installed; return {peer: problem} and the Python version."""
    problems: dict[str, str] = {}
    if not _venv_python().exists():
        for candidate in _python_candidates():
            proc = subprocess.run([candidate, "-m", "venv", str(VENV)], capture_output=True, text=True)
            if proc.returncode == 0:
                break
        else:
            return {p: "cannot create a venv" for p in PEERS}, "?"
    py = str(_venv_python())
    pyver = subprocess.run(
        [py, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True
    ).stdout.strip()
    for peer, packages in PEERS.items():
        check = subprocess.run([py, "-c", f"import {peer}"], capture_output=True, text=True)
        if check.returncode == 0:
            continue
        log(f"peers: installing {' '.join(packages)} into {VENV}")
        proc = subprocess.run([py, "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()
            problems[peer] = f"pip install {' '.join(packages)} failed (Python {pyver}): {(lines or ['?'])[-1][:200]}"
    return problems, pyver


def _call(peer: str, dsn: str, workload: str, n: int = 0, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    script = BENCH_DIR / "peer_scripts" / f"{peer}_bench.py"
    proc = subprocess.run(
        [
            str(_venv_python()),
            str(script),
            "--dsn",
            dsn,
            "--workload",
            workload,
            "--n",
            str(n),
            "--concurrency",
            str(concurrency),
            *SETTINGS.get(peer, []),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=str(BENCH_DIR / "peer_scripts"),
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{workload} failed (exit {proc.returncode}): {tail[:300]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _database(dsn: str, name: str, create: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def workloads(plan: Plan, peer: str) -> list[tuple[str, str, str, int]]:
    """(section, figure name, workload, n): the same names as nursery-worker's figures.

    Throughput runs the headline N (as nursery-worker's concurrency-50 figure) but for the peers
    too slow for it (``plan.slow_peer_jobs``: at about 100 jobs/s, 100,000 jobs would take 15 min).
    """
    return [
        ("enqueue", "single defer(), sequential", "enqueue-single", plan.seq_defers),
        ("enqueue", f"defer_many() of {plan.bulk_jobs:,} jobs", "enqueue-bulk", plan.bulk_jobs),
        (
            "throughput",
            f"no-op, concurrency {CONCURRENCY}",
            "throughput",
            plan.slow_peer_jobs.get(peer, plan.headline_jobs),
        ),
    ]


def _latency(peer: str, url: str, plan: Plan, report: Report, version: str | None) -> None:
    """Pickup latency of an idle worker with its LISTEN path: p50/p95/p99 per run, as the latency section."""
    figs = {
        p: report.figure(
            section="latency",
            name=f"pickup p{p}, LISTEN/NOTIFY",
            system=peer,
            backend="asyncio",
            unit="ms",
            higher_is_better=False,
            extra={"samples": plan.latency_samples, "version": version},
        )
        for p in (50, 95, 99)
    }
    for _ in range(plan.reps):
        try:
            out = _call(peer, url, "latency", plan.latency_samples)
        except Exception as exc:
            for fig in figs.values():
                report.verify(fig, False, str(exc))
            continue
        for p, fig in figs.items():
            fig.reps.append(out[f"p{p}"])
            fig.notes = out.get("detail", "")
            report.verify(fig, bool(out["verified"]), out.get("detail", ""))
        log(f"peers: {peer} pickup p50 {out['p50']:.2f} ms, p99 {out['p99']:.2f} ms ({out.get('detail', '')})")


def run(dsn: str, plan: Plan, report: Report) -> dict[str, Any]:
    problems, pyver = ensure_venv()
    info: dict[str, Any] = {"python": pyver, "venv": str(VENV), "peers": {}}
    for peer in PEERS:
        if peer in problems:
            report.skip(peer, problems[peer])
            info["peers"][peer] = {"skipped": problems[peer]}
            continue
        db = f"nwb_{peer}_{uuid.uuid4().hex[:8]}"
        url = peer_dsn(dsn, db)
        try:
            _database(dsn, db, create=True)
            meta = _call(peer, url, "version")
            _call(peer, url, "setup")
        except Exception as exc:
            report.skip(peer, f"could not set up: {exc}")
            info["peers"][peer] = {"skipped": str(exc)}
            _database(dsn, db, create=False)
            continue
        info["peers"][peer] = meta
        log(f"peers: {peer} {meta.get('version')} ({meta.get('driver')})")
        try:
            figs = {
                w: report.figure(
                    section=section,
                    name=name,
                    system=peer,
                    backend="asyncio",
                    unit="jobs/s",
                    higher_is_better=True,
                    extra={"jobs": n, "version": meta.get("version")},
                )
                for section, name, w, n in workloads(plan, peer)
            }
            cpu_fig = report.figure(
                section="throughput",
                name=cpu_figure_name(f"no-op, concurrency {CONCURRENCY}"),
                system=peer,
                backend="asyncio",
                unit="µs/job",
                higher_is_better=False,
                extra={"version": meta.get("version"), "window": "the call that runs the worker to its return"},
            )
            for _ in range(plan.reps):
                for _section, name, w, n in workloads(plan, peer):
                    fig = figs[w]
                    try:
                        out = _call(peer, url, w, n)
                    except Exception as exc:
                        report.verify(fig, False, str(exc))
                        continue
                    fig.reps.append(out["rate"])
                    fig.notes = out.get("detail", "")
                    if w == "throughput":
                        fig.extra["window"] = "database span, first claim to last completion (its own tables)"
                        fig.extra.setdefault("process_window_jobs_per_s", []).append(out.get("rate_process"))
                        fig.extra.setdefault("db_span_s", []).append(out.get("db_span_s"))
                        if "tenths_s" in out:
                            # Seconds from the first claim until each tenth of the jobs was done.
                            fig.extra.setdefault("tenths_s", []).append(out["tenths_s"])
                        if out.get("cpu_ms_per_job") is not None:
                            cpu_fig.reps.append(out["cpu_ms_per_job"] * 1000)
                            cpu_fig.extra["jobs"] = n
                    report.verify(fig, bool(out["verified"]), out.get("detail", ""))
                    log(f"peers: {peer} {name}: {out['rate']:,.0f} jobs/s ({out.get('detail', '')})")
            if peer in LATENCY_PEERS:
                _latency(peer, url, plan, report, meta.get("version"))
        finally:
            _database(dsn, db, create=False)
    return info
