"""A worker process killed with SIGKILL mid-job: a live peer rescues the job within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from nursery_worker import App, JobState, open_worker

from .helpers import fast, wait_for_state, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

VICTIM_APP = """\
import anyio

from nursery_worker import App

app = App(schema={schema!r})


@app.task(name="crash.target", max_attempts=3)
async def target(n: int) -> None:
    await anyio.sleep(60)  # still running when the process is killed
"""


async def test_jobs_of_a_killed_worker_process_are_rescued_and_run_by_a_peer(
    app: App, dsn: str, schema: str, tmp_path: Path
) -> None:
    """SIGKILL leaves a job executing; a peer rescues it once the heartbeat lapses and runs it again."""
    (tmp_path / "victim.py").write_text(VICTIM_APP.format(schema=schema))
    job = (await app.defer_many([app.job_by_name("crash.target", {"n": 1}, max_attempts=3)]))[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = dsn
    victim = await anyio.open_process(
        [sys.executable, "-m", "nursery_worker", "run", "--app", "victim:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with victim:
        try:
            claimed = await wait_for_state(app, job.id, JobState.EXECUTING, within=30)
        finally:
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
    assert claimed.worker_id is not None and claimed.attempt == 1

    ran: list[int] = []

    @app.task(name="crash.target", max_attempts=3)
    async def target(n: int) -> None:
        ran.append(n)

    async with open_worker(app, **fast(rescue_after=1.0)):
        done = await wait_for_state(app, job.id, JobState.COMPLETED, within=20)
        await wait_until(lambda: ran)
    assert ran == [1]
    assert done.attempt == 2
    (lost,) = done.errors
    assert lost.type == "WorkerLost" and lost.attempt == 1
    assert claimed.worker_id in lost.message
