"""A zombie: a worker process frozen (SIGSTOP) past the rescue window while it runs a job, whose job is
rescued and completed by a peer, and which then wakes up (SIGCONT) and finishes the same job late.

Its late completion must change nothing: the ledger shows that both attempts ran to their end, and
the jobs row keeps the rescuer's attempt, result and finish time. (The same guard is exercised
in-process, with the heartbeat row aged by hand, in ``tests/integration/test_worker_resilience.py``;
here the process really stops and resumes.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nursery_worker import App, JobState, open_worker

from ..integration.helpers import fast, wait_for_state, wait_until
from .helpers import WorkerProcess, rows, scalar, worker_env
from .ledger_app import Ledger, register

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_frozen_workers_late_completion_changes_nothing(
    app: App, ledger: Ledger, db: psycopg.Connection[Any], dsn: str, schema: str, tmp_path: Path, anyio_backend: str
) -> None:
    """A worker frozen past the rescue window finishes its job after a peer re-ran it; the row keeps the peer's run."""
    (job,) = await app.defer_many([app.job_by_name("ledger.work", {"first_seconds": 3.0, "seconds": 0.0})])
    zombie = await WorkerProcess.start(
        tmp_path,
        worker_env(dsn, schema),
        "--backend", anyio_backend, "--heartbeat-interval", "0.2", "--rescue-after", "1", "--poll-interval", "0.2",
    )  # fmt: skip
    try:
        first = "SELECT pid FROM ledger WHERE job_id = %s AND attempt = 1"
        await wait_until(lambda: rows(db, first, [job.id]), within=60)
        zombie.signal(signal.SIGSTOP)
        claimed = await app.get_job(job.id)
        assert (claimed.state, claimed.attempt) == (JobState.EXECUTING, 1)

        # A peer (this process) rescues the frozen worker's job once its heartbeat lapses, and re-runs it.
        register(app, ledger)
        async with open_worker(app, **fast(rescue_after=1.0, reap_interval=0.2)):
            done = await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
        assert done.attempt == 2 and done.result == {"pid": os.getpid(), "attempt": 2}

        zombie.signal(signal.SIGCONT)
        # It wakes up, its job's sleep is long over: the attempt ends, and the completer writes it (late).
        ended = "SELECT 1 FROM ledger WHERE job_id = %s AND attempt = 1 AND ended_at IS NOT NULL"
        await wait_until(lambda: rows(db, ended, [job.id]), within=30)
        await wait_until(lambda: "was declared dead by a peer" in zombie.stderr, within=30)
        # A graceful stop drains its completer: once it has exited, every late write has been tried.
        zombie.signal(signal.SIGTERM)
        status = await zombie.wait(within=60)
    finally:
        await zombie.aclose()

    assert status == 0, zombie.stderr
    after = await app.get_job(job.id)
    assert after == done, "the zombie's late completion changed the row"
    (lost,) = after.errors
    assert (lost.type, lost.attempt) == ("WorkerLost", 1)
    assert f":{zombie.pid}:" in lost.message
    ran = await rows(db, "SELECT attempt, pid, outcome FROM ledger WHERE job_id = %s ORDER BY attempt", [job.id])
    assert ran == [(1, zombie.pid, "ok"), (2, os.getpid(), "ok")]
    assert await scalar(db, "SELECT count(*) FROM jobs WHERE state = 'executing'") == 0
