"""The runtime side of typed tasks: positional arguments stored by name, and ``wait_for`` of a Job."""

from __future__ import annotations

import anyio
import pytest

from nursery_worker import App
from nursery_worker.testing import drain

pytestmark = pytest.mark.anyio


async def test_positional_arguments_of_defer_are_stored_by_name(app: App) -> None:
    """``f.defer(1, b=2)`` stores ``{"a": 1, "b": 2}``, as the direct call ``f(1, b=2)`` binds them."""

    @app.task
    async def add(a: int, b: int = 0) -> int:
        return a + b

    job = await add.defer(1, b=2)
    assert (await app.get_job(job.id)).args == {"a": 1, "b": 2}


async def test_positional_arguments_of_configure_defer_sync_and_job_are_stored_by_name(app: App) -> None:
    """``configure().defer_sync``, ``job`` and ``Task.defer_sync`` name positional arguments like ``defer``."""

    @app.task
    def label(name: str, count: int) -> str:
        return f"{name}:{count}"

    spec = label.job("a", 1)
    synced = await anyio.to_thread.run_sync(lambda: label.configure(priority=2).defer_sync("b", 2))
    plain = await anyio.to_thread.run_sync(lambda: label.defer_sync("c", count=3))
    (batched,) = await app.defer_many([spec])
    stored = [(await app.get_job(job.id)).args for job in (batched, synced, plain)]
    assert stored == [{"name": "a", "count": 1}, {"name": "b", "count": 2}, {"name": "c", "count": 3}]


async def test_too_many_positional_arguments_are_refused_before_writing(app: App) -> None:
    """More positional arguments than the function has raises TypeError naming the signature; nothing is enqueued."""

    @app.task
    async def one(a: int) -> None: ...

    refused = r"defer\(\): takes 1 positional argument\(s\) but 2 were given.*signature: one\(a:"
    with pytest.raises(TypeError, match=refused):
        await one.defer(1, 2)
    assert await app.list_jobs() == []


async def test_an_argument_given_by_position_and_keyword_is_refused(app: App) -> None:
    """``f.defer(1, a=2)`` raises TypeError naming the parameter given twice; nothing is enqueued."""

    @app.task
    async def one(a: int) -> None: ...

    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        await one.defer(1, a=2)
    assert await app.list_jobs() == []


async def test_wait_for_takes_the_job_that_defer_returned(app: App) -> None:
    """``app.wait_for(job)`` (the Job itself, not its id) returns the completed job with the result."""

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    job = await add.defer(a=2, b=3)
    await drain(app, timeout=20)
    with anyio.fail_after(10):
        done = await app.wait_for(job, poll_interval=30)
    assert (done.id, done.result) == (job.id, 5)
