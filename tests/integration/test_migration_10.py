"""Migration 10 (jobs_task_idx leaves the executing jobs out) on a schema of version 9 that holds jobs
in every state: they are all still there afterwards, reads by task still find every one of them,
and they still run, release their dependents, hold their unique keys and are rescued."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg
import pytest
from psycopg import sql

from nursery_worker import App, JobFilter, JobState, open_worker
from nursery_worker._driver.postgres import MIGRATIONS

from .helpers import fast, wait_for_state

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]

#: One job per state, as a version-9 schema stores it (the pending one waits for the available one).
_SEED = """
INSERT INTO jobs (id, task, queue, args, state, attempt, scheduled_at, attempted_at, finished_at, worker_id,
                  unique_key, unique_states, has_dependents, depends_on, pending_deps, errors)
VALUES
    (1, 'mig.work', 'default', '{"n": 1}', 'available', 0, now(), NULL, NULL, NULL,
     'k1', '{pending,scheduled,available,executing,retryable}', true, NULL, 0, '[]'),
    (2, 'mig.work', 'default', '{"n": 2}', 'pending', 0, now(), NULL, NULL, NULL, NULL, NULL, false, '{1}', 1, '[]'),
    (3, 'mig.work', 'default', '{"n": 3}', 'scheduled', 0, now() + interval '1 hour', NULL, NULL, NULL,
     NULL, NULL, false, NULL, 0, '[]'),
    (4, 'mig.work', 'default', '{"n": 4}', 'executing', 1, now(), now(), NULL, 'gone-worker',
     NULL, NULL, false, NULL, 0, '[]'),
    (5, 'mig.work', 'default', '{"n": 5}', 'retryable', 1, now() + interval '1 hour', now(), NULL, NULL,
     NULL, NULL, false, NULL, 0, '[{"type": "E", "message": "m", "traceback": "", "attempt": 1}]'),
    (6, 'mig.work', 'default', '{"n": 6}', 'completed', 1, now(), now(), now(), NULL, NULL, NULL, false, NULL, 0, '[]'),
    (7, 'mig.work', 'default', '{"n": 7}', 'discarded', 1, now(), now(), now(), NULL, NULL, NULL, false, NULL, 0,
     '[{"type": "E", "message": "m", "traceback": "", "attempt": 1}]'),
    (8, 'mig.work', 'default', '{"n": 8}', 'cancelled', 0, now(), NULL, now(), NULL, NULL, NULL, false, NULL, 0, '[]')
"""


def migrate_to(db: Conn, schema: str, last: int) -> None:
    """Apply the migrations up to version *last* by hand, as ``migrate_sync`` does."""
    ident = sql.Identifier(schema)
    folder = resources.files("nursery_worker._driver.postgres").joinpath("migrations")
    db.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
    db.execute(
        sql.SQL(
            "CREATE TABLE {}.migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(ident)
    )
    for version, name in MIGRATIONS:
        if version > last:
            break
        db.execute(sql.SQL(folder.joinpath(name).read_text(encoding="utf-8")).format(schema=ident))  # type: ignore[arg-type]
        db.execute(sql.SQL("INSERT INTO {}.migrations VALUES (%s, %s)").format(ident), [version, name])


async def test_migration_10_keeps_jobs_in_every_state_and_they_still_work(dsn: str, schema: str, db: Conn) -> None:
    """Jobs of every state written at version 9 are all there after migration 10, every read by task finds them
    (the executing one too), and they still work: a unique key held, a dependent released, an orphan rescued."""
    migrate_to(db, schema, 9)
    db.execute(_SEED)
    db.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), 8)")
    async with App(dsn=dsn, schema=schema) as app:
        assert await app.migrate() == [10]
        index = db.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'jobs_task_idx'", [schema]
        )
        assert "WHERE (state <> 'executing'::text)" in index.fetchone()[0]  # type: ignore[index]

        states = {j.id: j.state.value for j in await app.list_jobs(task="mig.work", limit=100)}
        assert states == {
            1: "available",
            2: "pending",
            3: "scheduled",
            4: "executing",
            5: "retryable",
            6: "completed",
            7: "discarded",
            8: "cancelled",
        }
        assert await app.count_jobs(JobFilter(task="mig.work")) == 8
        assert await app.count_jobs(JobFilter(task="mig.work", states="executing")) == 1
        assert [j.id for j in await app.list_jobs(task="mig.work", state="executing")] == [4]

        @app.task(name="mig.work", unique_key="k1")
        async def work(n: int) -> int:
            return n * 10

        # The available job still holds its unique key.
        held = await work.defer(n=1)
        assert (held.id, held.duplicate) == (1, True)

        async with open_worker(app, **fast(concurrency=4, once=True)) as worker:
            await worker.wait_stopped()
        # The executing job of a worker that is gone was rescued and ran again.
        for job_id, result in ((1, 10), (2, 20), (4, 40)):
            done = await wait_for_state(app, job_id, JobState.COMPLETED)
            assert done.result == result
        assert (await app.get_job(3)).state is JobState.SCHEDULED
        assert (await app.get_job(5)).state is JobState.RETRYABLE
        assert (await app.get_job(7)).state is JobState.DISCARDED
        assert await app.count_jobs(JobFilter(task="mig.work", states="completed")) == 4
