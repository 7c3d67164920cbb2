"""A crash storm: a supervisor of three worker processes works through 2,000 jobs while the test
SIGKILLs its busiest child again and again. The ledger and the jobs table then show that no job was
lost or left executing, and that every attempt beyond the first is explained by one of the kills.

The supervisor runs in the test's own task tree (``run_supervisor``), which lets the test give the
children a short reap interval (the CLI has no option for it): a killed child's jobs are rescued
within about ``rescue_after + reap_interval`` = 1.3 s instead of the default 15 + 5 s.
"""

from __future__ import annotations

import functools
import os
import random
import signal
from typing import Any

import anyio
import psycopg
import pytest

from nursery_worker import App, Supervisor, run_supervisor

from ..integration.helpers import wait_until
from .helpers import LEDGER_APP, rows, scalar
from .ledger_app import Ledger, audit

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SHORT_JOBS = 2_000
SLOW_JOBS = 40
PROCESSES = 3
CONCURRENCY = 10
#: A kill each time the completed share passes one of these.
KILL_AT = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75)

STORM: dict[str, Any] = {
    "processes": PROCESSES,
    "concurrency": CONCURRENCY,
    "heartbeat_interval": 0.2,
    "rescue_after": 1.0,
    "reap_interval": 0.3,
    "poll_interval": 0.2,
    "promote_interval": 0.2,
    "restart_delay": 0.2,
    "max_restart_delay": 2.0,
    "max_restarts": 100,
    # The storm's only killer is the test: a child slow to report under CI load must not be killed too.
    "health_timeout": 60.0,
    "shutdown_timeout": 10.0,
    "status_interval": 3600.0,
    "log_level": "warning",
    "handle_signals": False,
}


async def _busiest_child(db: psycopg.Connection[Any], supervisor: Supervisor) -> int | None:
    """The pid of a current child with the most executing jobs, or None if no child holds one."""
    children = {c.pid for c in supervisor.children() if c.pid is not None and c.state == "running"}
    busy = await rows(
        db,
        "SELECT w.pid, count(*) FROM jobs AS j JOIN workers AS w ON w.id = j.worker_id "
        "WHERE j.state = 'executing' GROUP BY w.pid ORDER BY count(*) DESC",
    )
    for pid, _ in busy:
        if pid in children:
            return int(pid)
    return None


async def test_every_job_completes_and_every_rerun_is_explained_by_a_kill(
    app: App,
    ledger: Ledger,
    db: psycopg.Connection[Any],
    dsn: str,
    schema: str,
    anyio_backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under repeated SIGKILLs of busy children every job completes, none stays executing, and reruns stay bounded."""
    monkeypatch.setenv("NURSERY_WORKER_SCHEMA", schema)  # the children import the ledger app from the environment
    monkeypatch.setenv("NURSERY_WORKER_DSN", dsn)
    rng = random.Random(5)
    specs = [app.job_by_name("ledger.work", {"n": n, "seconds": 0.005}) for n in range(SHORT_JOBS)]
    for n in range(SLOW_JOBS):
        specs.insert(rng.randrange(len(specs)), app.job_by_name("ledger.work", {"n": -n, "seconds": 1.5}))
    total = len(specs)
    killed: list[int] = []

    async def completed(at_least: float) -> bool:
        return bool(await scalar(db, "SELECT count(*) >= %s FROM jobs WHERE state = 'completed'", [at_least]))

    async with anyio.create_task_group() as tg:
        supervisor: Supervisor = await tg.start(
            functools.partial(run_supervisor, LEDGER_APP, dsn=dsn, backend=anyio_backend, **STORM)
        )
        jobs = await app.defer_many(specs)
        with anyio.fail_after(240):
            for share in KILL_AT:
                await wait_until(lambda share=share: completed(share * total), within=240)
                victim = await _busiest_child(db, supervisor)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
            await wait_until(lambda: completed(total), within=240, interval=0.1)
            restarts = sum(c.restarts for c in supervisor.children())
            supervisor.stop()
            await supervisor.wait_stopped()

    result = await anyio.to_thread.run_sync(lambda: audit(db, expected=[j.id for j in jobs], killed=killed))
    print(
        f"[{anyio_backend}] jobs={result.jobs} kills={len(killed)} restarts={restarts} "
        f"attempts={result.attempts} duplicates={result.duplicates} lost={result.lost} stuck={result.stuck}"
    )
    assert len(killed) >= len(KILL_AT) - 1, f"only {len(killed)} kill(s) found a busy child"
    assert restarts >= len(killed)
    assert result.states == {"completed": total}
    assert (result.lost, result.stuck) == (0, 0)
    assert result.unexplained == (), "\n".join(result.unexplained[:20])
    # A killed child held at most CONCURRENCY running jobs plus at most CONCURRENCY finished ones whose
    # outcomes were not yet written (the claim overlaps the completer's write): both run again.
    assert result.duplicates <= len(killed) * 2 * CONCURRENCY
    assert await scalar(db, "SELECT count(*) FROM jobs WHERE attempt > 1") > 0, "no kill interrupted a job"
    assert await scalar(db, "SELECT count(*) FROM workers") == 0
