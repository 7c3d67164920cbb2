"""The completer's write of finished jobs also claims jobs for the worker's free slots (one statement
on PostgreSQL, one transaction on SQLite), the same on every engine: the claim is the fetch loop's
(queues, paused queues left out, priority order), the capacity is never exceeded, and a refused
write falls back to the outcomes alone without losing or running a job twice."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from nursery_worker import App, JobState, open_worker
from nursery_worker._driver import Driver
from nursery_worker._errors import DatabaseError
from nursery_worker._models import Completion, Job
from nursery_worker._state import Transition

from ..integration.helpers import fast, wait_for_state, wait_until
from .test_poison_outcomes import _refuse_poison

pytestmark = pytest.mark.anyio


class _Spy:
    """Wraps the driver's ``finish_and_fetch``: counts its calls, the jobs they claimed and their refusals."""

    def __init__(self, driver: Driver) -> None:
        self.real = driver.finish_and_fetch
        self.calls = 0
        self.claimed = 0
        self.refused = 0

    async def __call__(self, **kwargs: Any) -> tuple[list[int], list[Job]]:
        self.calls += 1
        try:
            applied, jobs = await self.real(**kwargs)
        except DatabaseError:
            self.refused += 1
            raise
        self.claimed += len(jobs)
        return applied, jobs


def _spy(app: App, monkeypatch: pytest.MonkeyPatch) -> _Spy:
    spy = _Spy(app.driver)
    monkeypatch.setattr(app.driver, "finish_and_fetch", spy)
    return spy


def _done(job: Job) -> Completion:
    return Completion(
        job_id=job.id,
        attempt=job.attempt,
        attempted_at=job.attempted_at,
        transition=Transition(state=JobState.COMPLETED),
        result_json="1",
    )


async def test_jobs_claimed_with_a_completion_run_and_never_exceed_the_concurrency(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many short jobs on a worker of 4 slots all complete, each ran once, at most 4 ran at a time, and
    writes of finished jobs claimed some of them."""
    spy = _spy(app, monkeypatch)
    running = 0
    most = 0
    runs: Counter[int] = Counter()

    @app.task
    async def step(n: int) -> None:
        nonlocal running, most
        runs[n] += 1
        running += 1
        most = max(most, running)
        try:
            await anyio.sleep(0.005)
        finally:
            running -= 1

    jobs = [await step.defer(n=n) for n in range(120)]
    async with open_worker(app, **fast(concurrency=4)) as worker:
        await wait_until(lambda: worker.stats().processed >= len(jobs), within=60)
    for job in jobs:
        assert (await app.get_job(job.id)).state is JobState.COMPLETED
    assert runs == Counter(range(120))
    assert most <= 4
    assert spy.claimed > 0


async def test_a_refused_write_with_a_claim_falls_back_without_losing_or_repeating_a_job(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write with a claim the database refuses (one poison result) claims nothing: the other outcomes
    are written alone, the poison job is discarded, every other job completes after exactly one run,
    and at most the worker's 3 slots ran at a time."""
    running = 0
    most = 0
    runs: Counter[int] = Counter()

    @app.task(max_attempts=1)
    async def produce(n: int) -> dict[str, object]:
        nonlocal running, most
        runs[n] += 1
        running += 1
        most = max(most, running)
        try:
            await anyio.sleep(0.005)
        finally:
            running -= 1
        return {"n": n, "tag": "poison" if n % 10 == 3 else "fine"}

    jobs = [await produce.defer(n=n) for n in range(40)]
    _refuse_poison(app)  # after the first defer: SQLite creates its tables on first use
    spy = _spy(app, monkeypatch)
    async with open_worker(app, **fast(concurrency=3)):
        with anyio.fail_after(60):
            for job in jobs:
                want = JobState.DISCARDED if job.args["n"] % 10 == 3 else JobState.COMPLETED
                await wait_for_state(app, job.id, want, within=60)
    assert runs == Counter(range(40))
    assert most <= 3
    assert spy.refused > 0


async def test_a_claim_with_a_completion_takes_the_fetch_loops_jobs_and_leaves_paused_queues(app: App) -> None:
    """The driver's finish_and_fetch writes the outcome and claims like fetch_jobs: from the given queues
    in priority order, without a paused queue's jobs or the excluded tasks, up to the limit."""

    @app.task
    async def noop() -> None:
        return None

    @app.task
    async def limited() -> None:
        return None

    first = await noop.configure(queue="b").defer()
    held = [await noop.configure(queue="a", priority=9).defer() for _ in range(3)]
    low = await noop.configure(queue="b", priority=0).defer()
    high = await noop.configure(queue="b", priority=5).defer()
    skipped = await limited.configure(queue="b", priority=7).defer()
    await app.pause_queue("a")
    driver = app.driver
    (claimed,) = await driver.fetch_jobs(worker_id="w", queues=["b"], limit=1, exclude_tasks=[skipped.task])
    assert claimed.id == high.id
    applied, jobs = await driver.finish_and_fetch(
        worker_id="w",
        completions=[_done(claimed)],
        error_cap=20,
        queues=["a", "b"],
        limit=2,
        exclude_tasks=[skipped.task],
    )
    assert applied == [0]
    assert [j.id for j in jobs] == [first.id, low.id]
    assert all(j.state is JobState.EXECUTING and j.worker_id == "w" for j in jobs)
    assert (await app.get_job(claimed.id)).state is JobState.COMPLETED
    for job in held:
        assert (await app.get_job(job.id)).state is JobState.AVAILABLE
    assert (await app.get_job(skipped.id)).state is JobState.AVAILABLE
    # One queue, paused: the outcomes are written, nothing is claimed.
    applied, jobs = await driver.finish_and_fetch(
        worker_id="w", completions=[_done(j) for j in jobs], error_cap=20, queues=["a"], limit=5
    )
    assert (applied, jobs) == ([0, 1], [])


async def test_a_late_completion_is_reported_unapplied_and_the_claim_still_happens(app: App) -> None:
    """A completion whose attempt is no longer the worker's changes nothing, and the claim beside it is made."""

    @app.task
    async def noop() -> None:
        return None

    job = await noop.defer()
    other = await noop.defer()
    driver = app.driver
    (claimed,) = await driver.fetch_jobs(worker_id="w", queues=["default"], limit=1)
    applied, jobs = await driver.finish_and_fetch(
        worker_id="someone-else", completions=[_done(claimed)], error_cap=20, queues=["default"], limit=1
    )
    assert applied == []
    assert [j.id for j in jobs] == [other.id if claimed.id == job.id else job.id]
    assert (await app.get_job(claimed.id)).state is JobState.EXECUTING


async def test_a_paused_queue_is_not_claimed_by_a_worker_writing_outcomes(app: App) -> None:
    """While a worker completes jobs of one queue, the jobs of a paused queue it serves stay available."""

    @app.task
    async def noop() -> None:
        await anyio.sleep(0.002)

    work = [await noop.configure(queue="work").defer() for _ in range(40)]
    held = [await noop.configure(queue="held").defer() for _ in range(10)]
    await app.pause_queue("held")
    async with open_worker(app, **fast(concurrency=4, queues=["work", "held"])):
        for job in work:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
        await anyio.sleep(0.2)
    for job in held:
        assert (await app.get_job(job.id)).state is JobState.AVAILABLE


async def test_no_claim_rides_on_a_write_once_the_worker_is_stopping(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """After stop() no write of the completer claims jobs; the stopped worker leaves each job completed
    after one run or available without a run, none executing."""
    spy = _spy(app, monkeypatch)
    stopping = False
    late_claims = 0
    real = spy.real

    async def watched(**kwargs: Any) -> tuple[list[int], list[Job]]:
        nonlocal late_claims
        late_claims += stopping
        return await real(**kwargs)

    spy.real = watched
    runs: Counter[int] = Counter()

    @app.task
    async def step(n: int) -> None:
        runs[n] += 1
        await anyio.sleep(0.02)

    jobs = [await step.defer(n=n) for n in range(60)]
    async with open_worker(app, **fast(concurrency=3)) as worker:
        await wait_until(lambda: spy.calls >= 3, within=30)
        stopping = True
        worker.stop()
        await worker.wait_stopped()
    assert late_claims == 0
    for job in jobs:
        state = (await app.get_job(job.id)).state
        assert (state, runs[job.args["n"]]) in {(JobState.COMPLETED, 1), (JobState.AVAILABLE, 0)}


async def test_jobs_claimed_by_a_write_in_flight_at_stop_are_handed_back_unrun(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs a write claims while the worker is told to stop never run: they are handed back available with
    their attempt given back, and every other job is completed after one run."""
    spy = _spy(app, monkeypatch)
    real = spy.real
    worker_box: list[Any] = []
    caught: list[Job] = []

    async def stop_meanwhile(**kwargs: Any) -> tuple[list[int], list[Job]]:
        if spy.calls == 3:
            worker_box[0].stop()
            applied, jobs = await real(**kwargs)
            caught.extend(jobs)
            return applied, jobs
        return await real(**kwargs)

    spy.real = stop_meanwhile
    runs: Counter[int] = Counter()

    @app.task
    async def step(n: int) -> None:
        runs[n] += 1
        await anyio.sleep(0.01)

    jobs = [await step.defer(n=n) for n in range(40)]
    async with open_worker(app, **fast(concurrency=3)) as worker:
        worker_box.append(worker)
        await worker.wait_stopped()
    assert caught
    for job in caught:
        back = await app.get_job(job.id)
        assert (back.state, back.attempt, runs[job.args["n"]]) == (JobState.AVAILABLE, 0, 0)
    for job in jobs:
        state = (await app.get_job(job.id)).state
        assert (state, runs[job.args["n"]]) in {(JobState.COMPLETED, 1), (JobState.AVAILABLE, 0)}
