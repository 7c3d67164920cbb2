"""`nursery-worker run` still exits when a job ignores its cancellation: the exit watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nursery_worker import App

pytestmark = pytest.mark.slow

APP_MODULE = """\
import anyio

from nursery_worker import App

app = App(schema={schema!r})


@app.task(name="stubborn")
async def stubborn() -> None:
    while True:
        try:
            await anyio.sleep(0.05)
        except anyio.get_cancelled_exc_class():
            continue  # swallows every cancellation: the worker can never finish this task
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_job_that_ignores_cancellation_cannot_keep_the_cli_from_exiting(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """After SIGTERM the watchdog ends the process at its deadline, names the stuck job, and leaves it for rescue."""
    (tmp_path / "stubborn_app.py").write_text(APP_MODULE.format(schema=schema))
    (job,) = app.defer_many_sync([app.job_by_name("stubborn", {})])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = dsn
    err_path = tmp_path / "err.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nursery_worker",
                "run",
                "--app",
                "stubborn_app:app",
                "--backend",
                backend,
                "--shutdown-timeout",
                "0.5",
                "--cancel-grace",
                "0.5",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while db.execute("SELECT state FROM jobs WHERE id = %s", [job.id]).fetchone() != ("executing",):
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err_path.read_text()
    assert status == 1, stderr
    assert elapsed < 0.5 + 0.5 + 15 + 10, elapsed
    assert "did not stop within" in stderr and f"{job.id} (stubborn)" in stderr, stderr
    # Not written back by a worker that cannot vouch for it: peers rescue it once its heartbeat lapses.
    assert db.execute("SELECT state FROM jobs WHERE id = %s", [job.id]).fetchone() == ("executing",)
