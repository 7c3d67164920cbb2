"""Smoke test of the soak (``python -m benchmarks.soak``): a few seconds of it run, kill and audit clean.

No timed assertions: only that it produced, killed, and that its own audit (nothing lost, nothing
stuck, every rerun explained by a kill) passed and was written as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKEND = os.environ.get("NW_BACKENDS", "asyncio").split(",")[0].strip() or "asyncio"


@pytest.mark.slow
def test_a_short_soak_kills_restarts_and_audits_clean(tmp_path: Path, dsn: str) -> None:
    """A six-second soak with a kill about every second exits 0 and reports no lost, stuck or unexplained job."""
    output = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "soak", "--seconds", "6", "--rate", "60", "--kill-every", "1",
            "--rolling-every", "4", "--backend", BACKEND, "--dsn", dsn, "--output", str(output), "--seed", "3",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(output.read_text(encoding="utf-8"))
    figures = report["figures"]
    assert figures["jobs"] > 0 and figures["kills"] >= 1
    assert (figures["lost"], figures["stuck"], figures["unexplained"]) == (0, 0, 0)
    assert figures["duplicates"] <= figures["duplicate_bound"]
    assert report["states"] == {"completed": figures["jobs"]}
    assert "| lost | 0 |" in proc.stdout
