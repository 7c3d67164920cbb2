"""A first end-to-end check that the fixtures and the worker fit together."""

from __future__ import annotations

import anyio
import pytest

from nursery_worker import App, JobState, open_worker

pytestmark = pytest.mark.anyio


async def test_a_deferred_job_runs_and_completes(app: App) -> None:
    """A job deferred before the worker starts is run once and ends completed."""
    seen: list[int] = []
    ran = anyio.Event()

    @app.task
    async def add(n: int) -> None:
        seen.append(n)
        ran.set()

    job = await add.defer(n=3)
    async with open_worker(app) as worker:
        with anyio.fail_after(10):
            await ran.wait()
    assert seen == [3]
    assert (await app.get_job(job.id)).state is JobState.COMPLETED
    assert worker.stats().completed == 1
