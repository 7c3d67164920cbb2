"""Operator experience (no silent surprises), the same on every engine: retry refusals, queue names
the database has never seen, limit changes that keep what they were not given, workers that serve
their app's queues, and the command line's notices."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from nursery_worker import App, JobState, JobStateError, open_worker

from ..integration.helpers import fast

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))

APP_MODULE = """\
from nursery_worker import App

app = App(schema={schema!r})


@app.task(name="mail.send", queue="emails")
def send(to: str) -> str:
    return to


@app.task(name="plain")
def plain() -> None:
    return None
"""


def _cli(
    args: Sequence[str], *, cwd: Path, dsn: str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    if dsn is not None:
        clean["NURSERY_WORKER_DSN"] = dsn
    clean.update(env or {})
    return subprocess.run([CONSOLE_SCRIPT, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=TIMEOUT)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture
def app_dir(tmp_path: Path, engine_schema: str) -> Path:
    """A directory holding ``opapp.py``: an app with a task on queue ``emails`` and one on ``default``."""
    (tmp_path / "opapp.py").write_text(APP_MODULE.format(schema=engine_schema))
    return tmp_path


# --- jobs retry -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_retry_of_a_completed_job_names_its_state_and_what_can_be_retried(app: App) -> None:
    """Retrying a completed job says it is completed and that only a discarded or cancelled job can be retried."""

    @app.task
    async def work() -> None: ...

    job = await work.defer()
    async with open_worker(app, **fast(once=True)) as worker:
        await worker.wait_stopped()
    assert (await app.get_job(job.id)).state is JobState.COMPLETED
    with pytest.raises(JobStateError) as caught:
        await app.retry(job.id)
    assert str(caught.value) == (
        f"job {job.id} is completed: only a failed (discarded) or cancelled job can be retried"
    )


@pytest.mark.anyio
async def test_retry_of_an_available_job_says_it_is_already_queued(app: App) -> None:
    """Retrying an available job says it is available and already queued."""

    @app.task
    async def waiting() -> None: ...

    job = await waiting.defer()
    with pytest.raises(JobStateError, match=rf"job {job.id} is available \(it is already queued\): only a failed"):
        await app.retry(job.id)
