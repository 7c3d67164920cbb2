"""Migration 11 (durable steps) on a schema of version 10 that holds jobs in every state: they are all
still there afterwards, with no progress, wait or steps, and a job that was queued before it runs
durable steps afterwards."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from nursery_worker import App, JobContext, JobState, open_worker

from .helpers import fast, wait_for_state
from .test_migration_10 import _SEED, migrate_to

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]


async def test_migration_11_keeps_every_job_and_a_queued_one_runs_durable_steps(
    dsn: str, schema: str, db: Conn
) -> None:
    """Jobs of every state written at version 10 are all there after migration 11, with no durable
    state; the available one then runs its steps and stores them."""
    migrate_to(db, schema, 10)
    db.execute(_SEED)
    db.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), 8)")
    async with App(dsn=dsn, schema=schema) as app:
        assert await app.migrate() == [11]
        for job_id in range(1, 9):
            job = await app.get_job(job_id)
            assert (job.progress, job.waiting) == (None, None)
            assert await app.get_steps(job_id) == []

        @app.task(name="mig.work")
        async def work(context: JobContext, n: int) -> int:
            await context.progress(1, 1)
            return int(await context.step("double", lambda: n * 2))

        async with open_worker(app, **fast(queues=["default"])):
            done = await wait_for_state(app, 1, JobState.COMPLETED)
        assert done.result == 2 and done.progress is not None
        assert [(s.name, s.result) for s in await app.get_steps(1)] == [("double", 2)]
        del work
