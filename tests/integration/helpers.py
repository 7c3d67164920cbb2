"""Small helpers shared by the worker integration tests (no fixtures, no mocks)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import psycopg

from nursery_worker import App, Job, JobState

Connection = psycopg.Connection[tuple[Any, ...]]

#: Small intervals that keep worker tests fast; override per test with ``fast(...)``.
FAST: dict[str, Any] = {
    "poll_interval": 0.1,
    "heartbeat_interval": 0.2,
    "rescue_after": 1.0,
    "reap_interval": 0.2,
    "promote_interval": 0.1,
    "shutdown_timeout": 2.0,
}


def fast(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of ``open_worker`` for a fast test, with *overrides* applied."""
    return {**FAST, **overrides}


async def wait_until(predicate: Callable[[], Any], within: float = 10.0, interval: float = 0.02) -> Any:
    """Poll *predicate* (sync or async) until it returns something truthy, and return that.

    Raises:
        TimeoutError: the condition did not hold within *within* seconds.
    """
    with anyio.fail_after(within):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)


async def wait_for_state(app: App, job_id: int, *states: JobState, within: float = 10.0) -> Job:
    """Wait until job *job_id* is in one of *states*; return that snapshot."""

    async def reached() -> Job | None:
        job = await app.get_job(job_id)
        return job if job.state in states else None

    result: Job = await wait_until(reached, within=within)
    return result


async def query(db: Connection, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run a SELECT on the test's connection in a thread (the event loop keeps running)."""
    return await anyio.to_thread.run_sync(lambda: db.execute(statement, params).fetchall())


async def execute(db: Connection, statement: Any, params: Sequence[Any] | None = None) -> int:
    """Run a statement that returns no rows on the test's connection in a thread; return its rowcount."""
    return await anyio.to_thread.run_sync(lambda: db.execute(statement, params).rowcount)


async def executing_count(db: Connection, worker_id: str | None = None) -> int:
    """How many jobs are executing (on *worker_id*, when given)."""
    if worker_id is None:
        rows = await query(db, "SELECT count(*) FROM jobs WHERE state = 'executing'")
    else:
        rows = await query(db, "SELECT count(*) FROM jobs WHERE state = 'executing' AND worker_id = %s", [worker_id])
    return int(rows[0][0])


async def worker_ids(db: Connection) -> list[str]:
    """The ids in the workers table."""
    return [str(r[0]) for r in await query(db, "SELECT id FROM workers ORDER BY id")]
