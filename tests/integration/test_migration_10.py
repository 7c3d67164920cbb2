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
from nursery_worker._models import JobSearch

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
        assert await app.migrate() == [10, 11]  # and every later one
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


async def test_reads_by_task_merge_the_executing_jobs_into_each_page_in_id_order(app: App) -> None:
    """list_jobs, the dashboard's search, count_jobs and bulk operations filtered by task see the executing
    jobs (kept out of jobs_task_idx) in their place: pages newest first, bounded, counts exact."""

    @app.task(name="arms.work")
    async def work(n: int) -> None: ...

    jobs = await app.defer_many([work.job(n=i) for i in range(6)])
    ids = [j.id for j in jobs]
    claimed = await app.driver.fetch_jobs(worker_id="w", queues=["default"], limit=2)
    running = sorted(j.id for j in claimed)
    assert running == ids[:2]

    page = await app.list_jobs(task="arms.work", limit=4)
    assert [j.id for j in page] == sorted(ids, reverse=True)[:4]
    page = await app.list_jobs(task="arms.work", limit=10, before_id=ids[3])
    assert [j.id for j in page] == [ids[2], ids[1], ids[0]]
    assert [j.state for j in page[1:]] == [JobState.EXECUTING, JobState.EXECUTING]
    found = await app._admin.search_jobs(JobSearch(task="arms.work"), limit=3, time_limit=5.0)
    assert [j.id for j in found] == sorted(ids, reverse=True)[:3]
    found = await app._admin.search_jobs(JobSearch(task="arms.work", before_id=ids[2]), limit=3, time_limit=5.0)
    assert [j.id for j in found] == [ids[1], ids[0]]
    assert await app.count_jobs(JobFilter(task="arms.work")) == 6
    assert await app.count_jobs(JobFilter(task="arms.work", states=("executing", "available"))) == 6

    result = await app.bulk_cancel(JobFilter(task="arms.work"), chunk_size=4)
    assert (result.matched, result.changed, result.requested) == (6, 4, 2)
