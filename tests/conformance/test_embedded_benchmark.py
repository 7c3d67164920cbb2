"""Smoke test of ``python -m benchmarks.sqlite_engine``: it runs on a small N on the embedded engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_embedded_engine_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    """The quick benchmark of the embedded engine runs on both loops and reports every figure."""
    output = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "benchmarks.sqlite_engine", "--quick", "--engines", "sqlite", "--json", str(output)]
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(output.read_text(encoding="utf-8"))
    figures = report["figures"]["sqlite"]
    assert set(figures) == {"asyncio", "trio"}
    for backend in figures.values():
        assert len(backend) == 8 and all(len(values) == 1 and values[0] > 0 for values in backend.values())
    assert "| throughput, 1 process, jobs/s |" in proc.stdout
