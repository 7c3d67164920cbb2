"""An embedded worker stops on SIGTERM/SIGINT when its program opts in with serve_until_signalled()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from nursery_worker import App, JobState

from .helpers import wait_for_state

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROGRAM = """\
import sys

import anyio

from nursery_worker import App, open_worker

app = App(schema={schema!r})


@app.task(name="embedded.long")
async def long() -> None:
    await anyio.sleep(60)


async def main() -> None:
    async with open_worker(app, shutdown_timeout=30) as worker:
        await worker.serve_until_signalled()
    print("stopped", worker.state.value, worker.stats().released, flush=True)


anyio.run(main, backend=sys.argv[1])
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_two_signals_stop_an_embedded_worker_and_hand_its_job_back(
    app: App, dsn: str, schema: str, tmp_path: Path, backend: str, signum: signal.Signals
) -> None:
    """A first signal starts a graceful stop, a second stops at once; the job goes back, the exit is clean."""
    (tmp_path / "program.py").write_text(PROGRAM.format(schema=schema))
    (job,) = await app.defer_many([app.job_by_name("embedded.long")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = dsn
    async with await anyio.open_process(
        [sys.executable, "program.py", backend], cwd=tmp_path, env=env, stderr=subprocess.STDOUT
    ) as proc:
        await wait_for_state(app, job.id, JobState.EXECUTING, within=30)
        proc.send_signal(signum)
        await anyio.sleep(0.5)  # the graceful stop is waiting for the 60 s job (shutdown_timeout=30)
        assert proc.returncode is None
        proc.send_signal(signum)
        with anyio.fail_after(15):
            await proc.wait()
        assert proc.stdout is not None
        output = b"".join([chunk async for chunk in proc.stdout]).decode()
    assert proc.returncode == 0, output
    assert "stopped stopped 1" in output
    back = await app.get_job(job.id)
    assert (back.state, back.attempt, back.worker_id) == (JobState.AVAILABLE, 0, None)
