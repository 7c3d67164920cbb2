"""Workflows: a job that depends on others waits (pending) until they complete, and is cancelled,
naming the dependency, when one fails for good."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from nursery_worker import App, ConfigurationError, JobState, open_worker

from .helpers import fast, wait_for_state

pytestmark = pytest.mark.anyio


async def test_depends_on_is_accepted_as_a_defer_keyword(app: App) -> None:
    """defer(x=..., depends_on=[job]) treats depends_on as the job option when the task has no such parameter."""

    @app.task
    async def step(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    first = await step.defer(n=1)
    second = await step.defer(n=2, depends_on=[first])
    assert second.state is JobState.PENDING
    assert dict(second.args) == {"n": 2}


async def test_cancelling_a_dependency_cancels_its_pending_dependents(app: App) -> None:
    """app.cancel on a waiting dependency cancels the jobs pending on it."""

    @app.task
    async def step() -> None:
        await anyio.lowlevel.checkpoint()

    root = await step.configure(delay=3600).defer()
    child = await step.configure(depends_on=[root]).defer()
    result = await app.cancel(root.id)
    assert result.status == "cancelled"
    child_now = await app.get_job(child.id)
    assert child_now.state is JobState.CANCELLED
    assert "cancelled" in child_now.errors[-1].message


async def test_a_job_depending_on_a_completed_job_is_available_at_once(app: App) -> None:
    """A dependency that already completed does not hold the new job back."""

    @app.task
    async def step() -> None:
        await anyio.lowlevel.checkpoint()

    root = await step.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, root.id, JobState.COMPLETED)
    child = await step.configure(depends_on=[root.id]).defer()
    assert child.state is JobState.AVAILABLE


async def test_a_job_depending_on_a_failed_job_is_cancelled_at_once(app: App) -> None:
    """Deferring a job whose dependency was already discarded or cancelled records it cancelled, naming it."""

    @app.task
    async def step() -> None:
        await anyio.lowlevel.checkpoint()

    root = await step.configure(delay=3600).defer()
    await app.cancel(root.id)
    child = await step.configure(depends_on=[root]).defer()
    assert child.state is JobState.CANCELLED
    assert f"dependency {root.id}" in child.errors[-1].message


async def test_a_dependency_outside_the_call_is_refused(app: App) -> None:
    """A spec depending on a spec that is not in the same defer_many call is refused before anything is written."""

    @app.task
    async def step(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    a = step.job(n=1)
    b = step.job(n=2, depends_on=[a])
    with pytest.raises(ConfigurationError, match="not in this call"):
        await app.defer_many([b])


async def test_a_cycle_is_refused(app: App) -> None:
    """Specs whose dependencies loop are refused with the cycle named."""
    import attrs

    @app.task
    async def step(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    a = step.job(n=1)
    b = step.job(n=2, depends_on=[a])
    # Frozen specs cannot normally form a loop; force one to prove the check holds.
    object.__setattr__(a, "depends_on", (b,))
    with pytest.raises(ConfigurationError, match="cycle"):
        await app.defer_many([a, b])
    assert attrs.has(type(a))


async def test_invalid_depends_on_values_are_refused_at_the_call_site(app: App) -> None:
    """depends_on with something that is not a job, an id or a spec raises a ConfigurationError naming it."""

    @app.task
    async def step() -> None:
        await anyio.lowlevel.checkpoint()

    with pytest.raises(ConfigurationError, match="'nope'"):
        step.configure(depends_on=["nope"])
    with pytest.raises(ConfigurationError, match="-3"):
        step.configure(depends_on=[-3])


async def test_a_job_with_two_dependencies_finishing_concurrently_is_released_once(app: App) -> None:
    """Many dependents of dependencies that complete on several workers at once are all released and run once."""
    runs: list[int] = []

    @app.task
    async def parent(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    @app.task
    async def child(n: int) -> None:
        runs.append(n)

    specs = []
    for n in range(40):
        p1, p2 = parent.job(n=n), parent.job(n=n + 1000)
        specs += [p1, p2, child.job(n=n, depends_on=[p1, p2])]
    jobs = await app.defer_many(specs)
    children = [j for j in jobs if j.task == child.name]
    async with open_worker(app, **fast(concurrency=8)), open_worker(app, **fast(concurrency=8)):
        for j in children:
            await wait_for_state(app, j.id, JobState.COMPLETED, within=30)
    assert sorted(runs) == list(range(40))
