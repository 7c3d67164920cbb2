"""Smoke test of the benchmark harness (``python -m benchmarks``): it runs on a small N and verifies.

No timed assertions: only that every section ran, wrote its figures, and that the harness's own
checks in the database (every job really completed) passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_harness_runs_and_verifies(tmp_path: Path, dsn: str) -> None:
    """`--quick --no-peers` runs every section (the scaling curve too) and every figure verifies in the database."""
    output = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-peers", "--dsn", dsn, "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["mode"] == "quick"
    assert report["verification"] == {"passed": True, "failures": []}
    env = report["environment"]
    assert env["cpu_count"] >= 1 and env["postgresql"] and env["packages"]["psycopg"]
    sections = {f["section"] for f in report["figures"]}
    assert sections - {"bloat"} == {"enqueue", "throughput", "latency", "scaling", "growth", "baseline", "steps"}
    # The bloat section needs a private PostgreSQL server (initdb): without one it says why it skipped.
    assert "bloat" in sections or any(s["what"] == "bloat" for s in report["skipped"])
    assert all(f["verified"] and f["reps"] and f["median"] is not None for f in report["figures"])
    assert {f["backend"] for f in report["figures"] if f["system"] == "nursery-worker"} == {"asyncio", "trio"}
    scaling = {(f["name"], f["backend"]): f for f in report["figures"] if f["section"] == "scaling"}
    assert {name for name, _ in scaling} == {"1 process", "2 processes", "4 processes", "2 supervisors × 2 processes"}
    assert scaling["2 supervisors × 2 processes", "trio"]["extra"]["processes"] == [2, 2]
    assert all(f["extra"]["speedup_vs_1_process"] is not None for f in scaling.values())
    names = {(f["name"], f["backend"]): f for f in report["figures"] if f["section"] == "throughput"}
    for backend in ("asyncio", "trio"):
        assert names["no-op, concurrency 50", backend]["extra"]["process_window_jobs_per_s"]
        assert names["worker CPU per job (µs), no-op, concurrency 50", backend]["median"] > 0
    assert report["levers"] and all(lv["median"] is not None for lv in report["levers"])
    cpu = [f for f in report["figures"] if f["name"] == "worker CPU per job (µs), no-op, concurrency 50"]
    assert {f["backend"] for f in cpu} == {"asyncio", "trio"} and all(f["unit"] == "µs/job" for f in cpu)
    assert any(t["target"].startswith("worker CPU per no-op job") for t in report["targets"])
    assert any(t["target"].startswith("trio within 15%") for t in report["targets"])
    assert "| target |" in proc.stdout
    assert "### Scaling" in proc.stdout


@pytest.mark.slow
def test_steps_section_measures_both_tasks_on_both_engines_and_loops(tmp_path: Path, dsn: str) -> None:
    """`--only steps` runs both jobs on PostgreSQL and SQLite under both loops, verifies them and prints its table."""
    output = tmp_path / "steps.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--only",
            "steps",
            "--quick",
            "--step-jobs",
            "20",
            "--dsn",
            dsn,
            "--output",
            str(output),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["plan"]["step_jobs"] == 20
    assert report["verification"] == {"passed": True, "failures": []}
    figures = {(f["name"], f["backend"]): f for f in report["figures"]}
    assert {f["section"] for f in report["figures"]} == {"steps"}
    for engine in ("PostgreSQL", "SQLite"):
        for backend in ("asyncio", "trio"):
            for name in ("job of 10 plain calls", "job of 10 steps"):
                fig = figures[f"{engine}: {name}", backend]
                assert fig["unit"] == "jobs/s" and fig["verified"] and fig["median"] > 0
            for name in ("step overhead, wall clock", "step overhead, worker CPU"):
                fig = figures[f"{engine}: {name}", backend]
                assert fig["unit"] == "µs/step" and fig["median"] is not None
    assert "### Durable steps" in proc.stdout
    assert "| SQLite, trio |" in proc.stdout


def test_unknown_section_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nope"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown section" in proc.stderr
