"""The database goes away under a running worker process: a PostgreSQL restart (on a private server
the test starts itself, never the shared one), and its backends terminated again and again.

Work resumes within seconds after the database is back, a job deferred afterwards is picked up
promptly (the listener is back), the process does not spin while it waits, and the ledger shows
nothing lost and nothing run twice. The in-process cases (one termination of every connection, the
listener's reconnection) are in ``tests/integration/test_worker_resilience.py``.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
from psycopg import sql

from nursery_worker import App, DatabaseError

from ..integration.helpers import wait_until
from .helpers import PrivateServer, WorkerProcess, cpu_seconds, named, rows, scalar, terminate_backends, worker_env
from .ledger_app import Ledger, audit

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

OUTAGE = 3.0


class Database:
    """Queries on a fresh connection each time (the server may have restarted in between)."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    async def rows(self, statement: str, params: list[Any] | None = None) -> list[Any]:
        def run() -> list[Any]:
            with self._connect() as conn:
                return conn.execute(statement, params).fetchall()

        return await anyio.to_thread.run_sync(run)

    async def scalar(self, statement: str, params: list[Any] | None = None) -> Any:
        (row,) = await self.rows(statement, params)
        return row[0]

    async def audit(self, expected: list[int]) -> Any:
        def run() -> Any:
            with self._connect() as conn:
                return audit(conn, expected=expected, killed=())

        return await anyio.to_thread.run_sync(run)


@pytest.fixture
def private_schema(private_server: PrivateServer) -> Iterator[str]:
    """A migrated schema with a ledger on the private server; dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    App(dsn=private_server.dsn, schema=name).migrate_sync()
    private_server.create_schema_with_ledger(name)
    yield name
    if not private_server.running:
        private_server.start()
    with psycopg.connect(private_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


async def _listening(db: Any, application_name: str) -> bool:
    found = await db.rows(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN %%'", [application_name]
    )
    return bool(found)


async def _pickup_latency(app: App, db: Any) -> float:
    """Defer one job, wait for it to complete; return attempted_at - scheduled_at by the database's clock."""
    spec = app.job_by_name("ledger.work", {"n": -1})
    try:
        (job,) = await app.defer_many([spec])
    except DatabaseError:
        # The producer's idle pooled connection died with the server: its first call fails, and
        # nothing was written (docs/guarantees.md); the pool has dropped its dead connections.
        (job,) = await app.defer_many([spec])
    await wait_until(lambda: db.scalar("SELECT state = 'completed' FROM jobs WHERE id = %s", [job.id]), within=30)
    return float(
        await db.scalar("SELECT extract(epoch FROM attempted_at - scheduled_at) FROM jobs WHERE id = %s", [job.id])
    )


async def test_work_resumes_after_a_postgresql_restart(
    private_server: PrivateServer, private_schema: str, tmp_path: Path, anyio_backend: str
) -> None:
    """A worker outlives a restart of its PostgreSQL server: it resumes, picks up new jobs fast, loses nothing."""
    schema, server = private_schema, private_server
    name = f"nw-{schema}"
    db = Database(server.dsn, schema)
    async with App(dsn=server.dsn, schema=schema) as app:
        jobs = await app.defer_many([app.job_by_name("ledger.work", {"n": n, "seconds": 0.05}) for n in range(400)])
        worker = await WorkerProcess.start(
            tmp_path, worker_env(named(server.dsn, name), schema), "--backend", anyio_backend, "--concurrency", "10"
        )
        try:
            await wait_until(lambda: db.scalar("SELECT count(*) >= 60 FROM jobs WHERE state = 'completed'"), within=60)
            await anyio.to_thread.run_sync(server.stop)
            cpu = cpu_seconds(worker.pid)
            await anyio.sleep(OUTAGE)
            cpu = cpu_seconds(worker.pid) - cpu
            assert worker.alive(), worker.stderr
            await anyio.to_thread.run_sync(server.start)
            back = anyio.current_time()
            left = await db.scalar("SELECT count(*) FROM jobs WHERE state <> 'completed'")
            await wait_until(lambda: db.scalar("SELECT count(*) = 0 FROM jobs WHERE state <> 'completed'"), within=90)
            resumed = anyio.current_time() - back
            await wait_until(lambda: _listening(db, name), within=30)
            latency = await _pickup_latency(app, db)
            worker.signal(signal.SIGTERM)
            status = await worker.wait()
        finally:
            await worker.aclose()

    result = await db.audit([j.id for j in jobs])
    print(
        f"[{anyio_backend}] restart: {left} job(s) left when the server came back, all done {resumed:.1f}s later; "
        f"CPU {cpu:.2f}s during the {OUTAGE:g}s outage; pickup after recovery {latency * 1000:.0f} ms; {result}"
    )
    assert status == 0, worker.stderr
    assert left > 0, "the jobs ran out before the restart; add more"
    assert (result.lost, result.stuck, result.duplicates, result.unexplained) == (0, 0, 0, ())
    assert cpu < OUTAGE / 2, f"the worker burnt {cpu:.2f}s of CPU while the database was down for {OUTAGE}s"
    assert latency < 5.0
    assert "Traceback" not in worker.stderr


async def test_work_goes_on_while_the_workers_backends_are_terminated(
    app: App, ledger: Ledger, db: psycopg.Connection[Any], dsn: str, schema: str, tmp_path: Path, anyio_backend: str
) -> None:
    """Its listener and pooled connections terminated five times mid-run, a worker loses nothing and wakes on NOTIFY."""
    name = f"nw-{schema}"  # only this test's worker has it: no other backend of the shared cluster is touched
    jobs = await app.defer_many([app.job_by_name("ledger.work", {"n": n, "seconds": 0.02}) for n in range(600)])
    worker = await WorkerProcess.start(
        tmp_path,
        worker_env(named(dsn, name), schema),
        "--backend", anyio_backend, "--concurrency", "10", "--poll-interval", "30",
    )  # fmt: skip
    terminated = 0
    try:
        await wait_until(lambda: scalar(db, "SELECT count(*) >= 50 FROM jobs WHERE state = 'completed'"), within=60)
        for round_ in range(5):
            terminated += await terminate_backends(db, name)
            if round_ == 0:
                left = await scalar(db, "SELECT count(*) FROM jobs WHERE state <> 'completed'")
            await anyio.sleep(0.4)
        await wait_until(lambda: scalar(db, "SELECT count(*) = 0 FROM jobs WHERE state <> 'completed'"), within=120)
        # Polling is 30 s away: only a reconnected listener picks up a new job within seconds.
        listening = "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN %%'"
        await wait_until(lambda: rows(db, listening, [name]), within=30)
        (job,) = await app.defer_many([app.job_by_name("ledger.work", {"n": -1})])
        await wait_until(lambda: scalar(db, "SELECT state = 'completed' FROM jobs WHERE id = %s", [job.id]), within=20)
        worker.signal(signal.SIGTERM)
        status = await worker.wait()
    finally:
        await worker.aclose()

    result = await anyio.to_thread.run_sync(lambda: audit(db, expected=[j.id for j in jobs], killed=()))
    print(f"[{anyio_backend}] {terminated} backends terminated with {left} job(s) left; {result}")
    assert status == 0, worker.stderr
    assert terminated >= 5 and left > 0
    assert (result.lost, result.stuck, result.duplicates, result.unexplained) == (0, 0, 0, ())
