"""`nursery-worker run` against a database that is not there (a closed port: a stopped server), with
``--wait-for-db``: a bounded number of retries with backoff, then one clear error line; never a busy
loop (the CPU time of the processes stays well below their wall time), never the password.

Without ``--wait-for-db`` the start fails at once; that case, and the password in the environment,
are in ``tests/integration/test_cli.py`` (``test_run_unreachable_database_*``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import LEDGER_APP, ROOT, free_port, worker_env

pytestmark = pytest.mark.slow

BACKENDS = [b.strip() for b in os.environ.get("NW_BACKENDS", "asyncio,trio").split(",") if b.strip()]
WAIT = 4.0


def _run_and_measure(argv: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, float, float, str]:
    """Run *argv* to its end (bounded); return its exit status, wall time, CPU time (its own and its
    children's, from wait4) and its output."""
    out = tmp_path / "output.txt"
    with out.open("w") as sink:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = started + 60
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < deadline, f"still running after 60s:\n{out.read_text()}"
            time.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    return proc.returncode, time.monotonic() - started, usage.ru_utime + usage.ru_stime, out.read_text()


@pytest.mark.parametrize(
    ("backend", "processes"), [*((b, 1) for b in BACKENDS), (BACKENDS[0], 2)], ids=lambda v: str(v)
)
def test_a_closed_port_is_retried_with_backoff_then_reported_without_the_password(
    tmp_path: Path, schema: str, backend: str, processes: int
) -> None:
    """With --wait-for-db the start retries a closed port with backoff, then exits 1 with one redacted error line."""
    port = free_port()
    dsn = f"postgresql://someone:s3cr3t-pw@127.0.0.1:{port}/x"
    argv = [
        sys.executable, "-m", "nursery_worker", "run", "--app", LEDGER_APP, "--dsn", dsn, "--wait-for-db", str(WAIT),
        "--backend", backend, "--processes", str(processes),
    ]  # fmt: skip
    env = worker_env("postgresql://unused@127.0.0.1:1/unused", schema)
    status, wall, cpu, output = _run_and_measure(argv, env, tmp_path)

    retries = output.count("waiting for the database")
    print(f"[{backend}, {processes} process(es)] exit {status} after {wall:.1f}s: {retries} retries, CPU {cpu:.2f}s")
    assert status == 1, output
    assert "s3cr3t-pw" not in output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and f"someone:***@127.0.0.1:{port}/x" in last and "Connection refused" in last
    assert wall >= WAIT * 0.9, "it gave up before --wait-for-db"
    # Bounded retries: backoff from 0.1 s doubling to 5 s is a handful per process, not a loop.
    assert processes * 2 <= retries <= processes * 20, output
    # A busy loop would burn about a CPU-second per second and per process; start-up costs under one.
    assert cpu < wall * 0.5 * processes, f"{cpu:.2f}s of CPU in {wall:.1f}s"
