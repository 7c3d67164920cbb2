"""The claim of a worker with several queues: one ordered index scan per queue, the best across them
claimed, and nothing left locked that was not claimed."""

from __future__ import annotations

import pytest

from nursery_worker import App

from .helpers import Connection, query

pytestmark = pytest.mark.anyio


async def test_a_claim_of_several_queues_takes_the_best_across_them_up_to_its_limit(app: App) -> None:
    """From queues a and b with many jobs each, a claim of 5 takes the 5 best by priority, then age."""
    jobs = await app.defer_many(
        [app.job_by_name("t", {"n": i}, queue="a" if i % 2 else "b", priority=i % 7) for i in range(400)]
    )
    claimed = await app.driver.fetch_jobs(worker_id="w", queues=["a", "b"], limit=5)
    best = sorted(jobs, key=lambda j: (-j.priority, j.scheduled_at, j.id))[:5]
    assert [j.id for j in claimed] == [j.id for j in best]


async def test_rows_scanned_but_not_claimed_are_not_left_locked(app: App, db: Connection) -> None:
    """A claim of 1 from two queues locks a row in each while it runs; the one it did not take is free after."""
    await app.defer_many([app.job_by_name("t", {}, queue=q) for q in ("a", "b", "a", "b")])
    (claimed,) = await app.driver.fetch_jobs(worker_id="w", queues=["a", "b"], limit=1)
    free = await query(db, "SELECT id FROM jobs WHERE state = 'available' FOR UPDATE SKIP LOCKED")
    assert len(free) == 3 and claimed.id not in {row[0] for row in free}


async def test_a_paused_queue_among_several_is_not_claimed(app: App) -> None:
    """A claim of queues a and b while b is paused takes only a's jobs."""
    await app.defer_many([app.job_by_name("t", {}, queue=q) for q in ("a", "b", "b")])
    await app.pause_queue("b")
    claimed = await app.driver.fetch_jobs(worker_id="w", queues=["a", "b"], limit=5)
    assert [j.queue for j in claimed] == ["a"]
