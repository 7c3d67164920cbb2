"""Smoke test of the database-layer benchmark (``benchmarks/db_layer.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_runs_and_writes_json(tmp_path: Path, dsn: str) -> None:
    """`python -m benchmarks.db_layer --quick` exits 0 and writes a JSON report with every figure."""
    output = tmp_path / "db_layer.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.db_layer", "--quick", "--dsn", dsn, "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["mode"] == "quick"
    assert report["environment"]["nproc"] >= 1
    candidates = {(f["candidate"], f["backend"]) for f in report["statements"]}
    assert candidates == {
        ("hop", "trio"),
        ("hop", "asyncio"),
        ("native", "asyncio"),
        ("blocking", "trio"),
        ("blocking", "asyncio"),
    }
    assert all(f["median"] > 0 for f in report["statements"] + report["notify"])
    assert len(report["notify"]) == 2 * 5  # p50 and p99 of five waiters
    assert "| workload |" in proc.stdout
