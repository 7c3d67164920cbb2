"""Durable steps under SIGKILL (issue 22): a job of four steps whose worker process is killed inside
each step in turn, on PostgreSQL and on SQLite.

The job's steps write a ledger file (``steps_app``) and hold until the test releases them, so the
test knows which step each worker is inside when it kills it: the first worker is killed inside
step 1; the test then releases step 1 and starts a second worker, which rescues the job (once the
dead worker's heartbeat has lapsed), runs step 1 again to its end and is killed inside step 2; and
so on, until the fifth worker completes the job. Every attempt must run exactly the step it was
killed in again and the next one, never a step that completed before: the whole ledger is known in
advance, line by line.
"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from nursery_worker import App, JobState

from ..conformance.conftest import app, engine, engine_dsn, engine_schema, make_app
from ..integration.helpers import wait_for_state, wait_until

__all__ = ["app", "engine", "engine_dsn", "engine_schema", "make_app"]  # the conformance suite's fixtures
from .helpers import WorkerProcess, worker_env
from .steps_app import TASK, read_ledger, release

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

STEPS_APP = "tests.faults.steps_app:app"
STEPS = 4
#: A dead worker's job is rescued within about ``rescue_after + reap_interval``. The rescue window
#: is ten heartbeats, so that a live worker slowed down by a loaded machine is never rescued (that
#: would run its held step a second time, which no kill explains).
WORKER_OPTIONS = (
    "--heartbeat-interval", "0.2", "--rescue-after", "2", "--reap-interval", "0.2", "--poll-interval", "0.2",
    "--promote-interval", "0.1", "--shutdown-timeout", "5",
)  # fmt: skip


async def _inside_step(worker: WorkerProcess, ledger: Path, step: int) -> None:
    """Wait until *worker* has written the start of *step*: it is inside it, held there until released."""

    def started() -> bool:
        assert worker.alive(), f"the worker exited ({worker.process.returncode}):\n{worker.stderr}"
        return any(line[:2] == ("start", step) and line[3] == worker.pid for line in read_ledger(ledger))

    try:
        await wait_until(started, within=60)
    except TimeoutError:
        raise AssertionError(
            f"the worker did not start step {step}; ledger: {read_ledger(ledger)}\n{worker.stderr}"
        ) from None


def _expected_ledger(pids: list[int]) -> list[tuple[str, int, int, int]]:
    """The ledger of attempts 1..STEPS+1 in processes *pids*: attempt *a* reruns step a-1, is killed inside step a."""
    lines = []
    for attempt, pid in enumerate(pids, start=1):
        if attempt > 1:
            lines += [("start", attempt - 1, attempt, pid), ("done", attempt - 1, attempt, pid)]
        if attempt <= STEPS:
            lines.append(("start", attempt, attempt, pid))
    return lines


async def test_a_job_killed_inside_each_step_in_turn_runs_each_step_to_its_end_once(
    app: App, engine: str, engine_dsn: str, engine_schema: str, tmp_path: Path, anyio_backend: str
) -> None:
    """A job whose worker is SIGKILLed inside each step in turn completes, each step's work done and stored once."""
    ledger = tmp_path / "steps"
    ledger.mkdir()
    (job,) = await app.defer_many([app.job_by_name(TASK, {"directory": str(ledger), "steps": STEPS})])
    env = worker_env(engine_dsn, engine_schema)
    workers: list[WorkerProcess] = []

    async def start_worker() -> WorkerProcess:
        worker = await WorkerProcess.start(
            tmp_path, env, "--backend", anyio_backend, *WORKER_OPTIONS, name=f"worker-{len(workers) + 1}", app=STEPS_APP
        )
        workers.append(worker)
        return worker

    try:
        for step in range(1, STEPS + 1):
            worker = await start_worker()
            await _inside_step(worker, ledger, step)
            worker.signal(signal.SIGKILL)
            assert await worker.wait() == -signal.SIGKILL
            release(ledger, step)  # the next attempt runs this step to its end, and is held in the next one
        last = await start_worker()
        try:
            done = await wait_for_state(app, job.id, JobState.COMPLETED, JobState.DISCARDED, within=60)
        except TimeoutError:
            raise AssertionError(
                f"the job did not finish: {await app.get_job(job.id)}; ledger: {read_ledger(ledger)}\n{last.stderr}"
            ) from None
        last.signal(signal.SIGTERM)
        assert await last.wait() == 0, last.stderr
    finally:
        for worker in workers:
            await worker.aclose()

    pids = [w.pid for w in workers]
    lines = read_ledger(ledger)
    assert (done.state, done.attempt) == (JobState.COMPLETED, STEPS + 1), (done, lines)
    # The work of each step ended exactly once; each step began twice: killed inside it once, then to its end.
    assert Counter(step for event, step, _, _ in lines if event == "done") == dict.fromkeys(range(1, STEPS + 1), 1)
    assert Counter(step for event, step, _, _ in lines if event == "start") == dict.fromkeys(range(1, STEPS + 1), 2)
    # And in exactly this order: no attempt ran a step that an earlier attempt had completed.
    assert lines == _expected_ledger(pids)

    results = [{"step": step, "attempt": step + 1, "pid": pids[step]} for step in range(1, STEPS + 1)]
    assert done.result == results
    steps = await app.get_steps(job.id)
    assert [(s.name, s.position, s.state, s.runs, s.attempt, s.error) for s in steps] == [
        (f"step-{step}", step - 1, "completed", 1, step + 1, None) for step in range(1, STEPS + 1)
    ]
    assert [s.result for s in steps] == results
    # Every attempt but the last was lost with the process the test killed.
    assert [(e.attempt, e.type) for e in done.errors] == [(a, "WorkerLost") for a in range(1, STEPS + 1)]
    for error, pid in zip(done.errors, pids[:STEPS], strict=True):
        assert f":{pid}:" in error.message, (error, pid)
    if engine == "sqlite":
        path = engine_dsn.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
