"""Workflows: a job that depends on others waits (pending) until they complete, and is cancelled,
naming the dependency, when one fails for good."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from nursery_worker import App, ConfigurationError, Discard, JobState, JobStateError, open_worker

from .helpers import Connection, fast, query, wait_for_state

pytestmark = pytest.mark.anyio


def _ledger(db: Connection) -> None:
    db.execute("CREATE TABLE ledger (job_id bigint, name text, at timestamptz DEFAULT clock_timestamp())")


async def test_a_dependent_job_is_pending_until_its_dependency_completes(app: App, db: Connection) -> None:
    """A job deferred with depends_on waits pending, then runs only after its dependency completed."""
    _ledger(db)

    @app.task
    async def step(name: str) -> None:
        await anyio.sleep(0.2 if name == "first" else 0)
        db.execute("INSERT INTO ledger (name) VALUES (%s)", [name])

    first = await step.defer(name="first")
    second = await step.configure(depends_on=[first]).defer(name="second")
    assert second.state is JobState.PENDING
    assert (await app.get_job(second.id)).depends_on == (first.id,)
    async with open_worker(app, **fast(concurrency=5)):
        await wait_for_state(app, second.id, JobState.COMPLETED)
    names = [r[0] for r in await query(db, "SELECT name FROM ledger ORDER BY at")]
    assert names == ["first", "second"]


async def test_depends_on_is_accepted_as_a_defer_keyword(app: App) -> None:
    """defer(x=..., depends_on=[job]) treats depends_on as the job option when the task has no such parameter."""

    @app.task
    async def step(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    first = await step.defer(n=1)
    second = await step.defer(n=2, depends_on=[first])
    assert second.state is JobState.PENDING
    assert dict(second.args) == {"n": 2}


async def test_a_whole_graph_is_enqueued_in_one_defer_many_call_and_runs_in_order(app: App, db: Connection) -> None:
    """A diamond a -> (b, c) -> d from one defer_many call runs a first and d last."""
    _ledger(db)

    @app.task
    async def node(name: str) -> None:
        await anyio.sleep(0.05)
        db.execute("INSERT INTO ledger (name) VALUES (%s)", [name])

    a = node.job(name="a")
    b = node.job(name="b", depends_on=[a])
    c = node.job(name="c", depends_on=[a])
    d = node.job(name="d", depends_on=[b, c])
    jobs = await app.defer_many([d, c, b, a])  # any order: the call sorts the graph
    by_name = {j.args["name"]: j for j in jobs}
    assert [j.args["name"] for j in jobs] == ["d", "c", "b", "a"]
    assert by_name["a"].state is JobState.AVAILABLE
    assert {by_name[n].state for n in "bcd"} == {JobState.PENDING}
    async with open_worker(app, **fast(concurrency=10)):
        await wait_for_state(app, by_name["d"].id, JobState.COMPLETED)
    names = [r[0] for r in await query(db, "SELECT name FROM ledger ORDER BY at")]
    assert names[0] == "a" and names[-1] == "d" and sorted(names[1:3]) == ["b", "c"]


async def test_dependents_are_cancelled_naming_the_dependency_that_was_discarded(app: App) -> None:
    """When a dependency is discarded, its dependents and theirs are cancelled with a reason naming it."""

    @app.task
    async def step(fail: bool) -> None:
        if fail:
            raise Discard("bad input")

    root = await step.defer(fail=True)
    child = await step.configure(depends_on=[root]).defer(fail=False)
    grandchild = await step.configure(depends_on=[child]).defer(fail=False)
    async with open_worker(app, **fast()):
        done = await wait_for_state(app, grandchild.id, JobState.CANCELLED)
    child_now = await app.get_job(child.id)
    assert child_now.state is JobState.CANCELLED
    assert f"dependency {root.id}" in child_now.errors[-1].message
    assert "discarded" in child_now.errors[-1].message
    assert child_now.errors[-1].type == "DependencyFailed"
    assert f"dependency {child.id}" in done.errors[-1].message
    assert child_now.attempt == 0


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


async def test_an_unknown_dependency_is_refused_and_nothing_is_written(app: App, db: Connection) -> None:
    """depends_on naming a job that does not exist raises, naming the id, and inserts nothing of the call."""

    @app.task
    async def step(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    a = step.job(n=1)
    b = step.job(n=2, depends_on=[a, 987654321])
    with pytest.raises(ConfigurationError, match="987654321"):
        await app.defer_many([a, b])
    assert (await query(db, "SELECT count(*) FROM jobs"))[0][0] == 0


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


async def test_retrying_a_cancelled_dependent_waits_again_for_its_dependency(app: App) -> None:
    """After retrying a failed dependency, retrying its cancelled dependent makes it pending, then it runs."""
    attempts: list[int] = []

    @app.task(max_attempts=1)
    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first time fails")

    @app.task
    async def after() -> None:
        await anyio.lowlevel.checkpoint()

    root = await flaky.defer()
    child = await after.configure(depends_on=[root]).defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, child.id, JobState.CANCELLED)
        with pytest.raises(JobStateError, match=str(root.id)):
            await app.retry(child.id)
        await app.retry(root.id)
        again = await app.retry(child.id)
        assert again.state in (JobState.PENDING, JobState.AVAILABLE)
        await wait_for_state(app, child.id, JobState.COMPLETED)


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
