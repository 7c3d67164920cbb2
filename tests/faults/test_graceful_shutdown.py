"""SIGTERM to a busy `nursery-worker run` process, with a mix of jobs, checked against the ledger.

The single-job cases (a short job finishes, a long one is handed back, a second signal stops at
once, an abandoned sync job does not hold the exit) are in ``tests/integration/test_cli_signals.py``;
an async job that swallows every cancellation is ended by the exit watchdog, with exit status 1, in
``tests/integration/test_cli_watchdog.py``. Here all kinds run at once, as in production, and the
ledger shows which code ran to its end.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from nursery_worker import App

from ..integration.helpers import wait_until
from .helpers import WorkerProcess, rows, scalar, worker_env
from .ledger_app import Ledger

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SHUTDOWN_TIMEOUT = 2.0
#: With a second signal the grace is long: the hard stop must not wait for it.
LONG_SHUTDOWN_TIMEOUT = 60.0
SHORT, COOPERATIVE, BLOCKING, SHIELDED = 12, 3, 2, 1


async def _defer_mix(app: App) -> dict[str, list[int]]:
    """Jobs that finish within the grace, cooperative long ones, blocking sync ones, and one that shields itself."""
    kinds = {
        "short": [app.job_by_name("ledger.work", {"n": n, "seconds": 0.5}) for n in range(SHORT)],
        "cooperative": [app.job_by_name("ledger.work", {"n": n, "seconds": 60}) for n in range(COOPERATIVE)],
        "blocking": [app.job_by_name("ledger.blocking", {"seconds": 20}) for _ in range(BLOCKING)],
        # Ignores its cancellation for 3 s after the 2 s grace: it delays the exit and then completes.
        "shielded": [app.job_by_name("ledger.shielded", {"seconds": 4}) for _ in range(SHIELDED)],
    }
    return {kind: [j.id for j in await app.defer_many(specs)] for kind, specs in kinds.items()}


async def _states(db: psycopg.Connection[Any], ids: list[int]) -> list[tuple[str, int]]:
    found = await rows(db, "SELECT state, attempt FROM jobs WHERE id = ANY(%s) ORDER BY id", [ids])
    return [(str(s), int(a)) for s, a in found]


async def _ledger(db: psycopg.Connection[Any], ids: list[int]) -> Counter[str]:
    """How the ledger rows of *ids* ended: ``ok``, ``cancelled``, or ``running`` (no end written)."""
    found = await rows(db, "SELECT coalesce(outcome, 'running') FROM ledger WHERE job_id = ANY(%s)", [ids])
    return Counter(str(r[0]) for r in found)


@pytest.mark.parametrize("second_signal", [False, True], ids=["sigterm", "sigterm-twice"])
async def test_a_graceful_stop_finishes_short_jobs_and_hands_back_the_rest(
    app: App,
    ledger: Ledger,
    db: psycopg.Connection[Any],
    dsn: str,
    schema: str,
    tmp_path: Path,
    anyio_backend: str,
    second_signal: bool,
) -> None:
    """After SIGTERM (and again after a second one) no job stays executing and the process exits 0."""
    jobs = await _defer_mix(app)
    everything = [i for ids in jobs.values() for i in ids]
    grace = LONG_SHUTDOWN_TIMEOUT if second_signal else SHUTDOWN_TIMEOUT
    worker = await WorkerProcess.start(
        tmp_path, worker_env(dsn, schema), "--backend", anyio_backend, "--concurrency", "20", "--shutdown-timeout",
        str(grace),
    )  # fmt: skip
    try:

        async def all_started() -> bool:
            assert worker.alive(), worker.stderr
            return await scalar(db, "SELECT count(*) FROM ledger") == len(everything)

        await wait_until(all_started, within=60)
        signalled = anyio.current_time()
        worker.signal(signal.SIGTERM)
        if second_signal:
            await wait_until(lambda: "stopping gracefully" in worker.stderr, within=30)
            worker.signal(signal.SIGTERM)
        status = await worker.wait(within=60)
        elapsed = anyio.current_time() - signalled
    finally:
        await worker.aclose()

    stderr = worker.stderr
    assert status == 0, stderr
    assert "Traceback" not in stderr, stderr
    print(f"[{anyio_backend}] exit {elapsed:.1f}s after the signal{'s' if second_signal else ''}")
    assert await scalar(db, "SELECT count(*) FROM jobs WHERE state = 'executing'") == 0
    assert await scalar(db, "SELECT count(*) FROM workers") == 0
    # Cooperative long jobs were cancelled (their code saw it) and went back to the queue unused.
    assert await _states(db, jobs["cooperative"]) == [("available", 0)] * COOPERATIVE
    assert await _ledger(db, jobs["cooperative"]) == {"cancelled": COOPERATIVE}
    # A blocking sync job cannot be interrupted: it is handed back and its thread abandoned, still running.
    assert await _states(db, jobs["blocking"]) == [("available", 0)] * BLOCKING
    assert await _ledger(db, jobs["blocking"]) == {"running": BLOCKING}
    assert "abandoned sync job thread(s) still running" in stderr
    if second_signal:
        # Stopped without waiting out the grace (only for the job that shields itself, 4 s): whatever had
        # not finished went back to the queue with its attempt unused.
        assert elapsed < LONG_SHUTDOWN_TIMEOUT / 2, f"exit took {elapsed:.1f}s after the second signal"
    else:
        assert await _states(db, jobs["short"]) == [("completed", 1)] * SHORT
        assert await _ledger(db, jobs["short"]) == {"ok": SHORT}
        # It ignored its cancellation and was waited for: it ran to its end and is recorded completed.
        assert await _states(db, jobs["shielded"]) == [("completed", 1)] * SHIELDED
        assert await _ledger(db, jobs["shielded"]) == {"ok": SHIELDED}
    assert set(await _states(db, everything)) <= {("completed", 1), ("available", 0)}
