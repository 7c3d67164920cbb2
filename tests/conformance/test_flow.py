"""Flow control and periodic jobs, the same on every engine: workflows (dependencies), task and
queue limits, circuit breakers, and each cron tick enqueued once by racing schedulers.

The ledgers are kept in this process (the workers run here), so they read the same on both engines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from nursery_worker import (
    App,
    CircuitBreaker,
    ConfigurationError,
    Discard,
    JobContext,
    JobState,
    JobStateError,
    open_worker,
)
from nursery_worker._maintenance import Scheduler, SchedulerResult

from ..integration.helpers import LimitedClaims, fast, wait_for_state, wait_until
from .conftest import raw_execute

pytestmark = pytest.mark.anyio

_SQLITE_NOW = "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)"


class Ledger:
    """When each job ran (monotonic clock), by partition key."""

    def __init__(self) -> None:
        self.spans: dict[int, list[Any]] = {}

    def start(self, job_id: int, key: str = "") -> None:
        self.spans[job_id] = [key, time.monotonic(), None]

    def end(self, job_id: int) -> None:
        self.spans[job_id][2] = time.monotonic()

    def order(self) -> list[int]:
        return sorted(self.spans, key=lambda i: self.spans[i][1])

    def starts(self) -> list[float]:
        return sorted(s[1] for s in self.spans.values())

    def max_overlap(self, key: str | None = None) -> int:
        """The most spans (of *key*, or all) open at any start instant."""
        spans = [s for s in self.spans.values() if key is None or s[0] == key]
        return max(
            (sum(1 for o in spans if o[1] <= s[1] and (o[2] is None or o[2] > s[1])) for s in spans),
            default=0,
        )


@contextlib.asynccontextmanager
async def _workers(app: App, n: int, **options: Any) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            await stack.enter_async_context(open_worker(app, **fast(**options)))
        yield


# --- workflows ----------------------------------------------------------------------------------


async def test_a_chain_runs_in_order_and_waits_pending(app: App) -> None:
    """A job deferred with depends_on is pending, then runs only after its dependency completed."""
    ran: list[str] = []

    @app.task
    async def step(name: str) -> None:
        await anyio.sleep(0.2 if name == "first" else 0)
        ran.append(name)

    first = await step.defer(name="first")
    second = await step.configure(depends_on=[first]).defer(name="second")
    third = await step.defer(name="third", depends_on=[second])
    assert (second.state, third.state) == (JobState.PENDING, JobState.PENDING)
    assert (await app.get_job(second.id)).state is JobState.PENDING
    async with open_worker(app, **fast(concurrency=5)):
        await wait_for_state(app, third.id, JobState.COMPLETED)
    assert ran == ["first", "second", "third"]


async def test_a_jobs_dependencies_are_read_back(app: App) -> None:
    """get_job and list_jobs report the ids a job depends on, as given at defer."""

    @app.task
    async def step(n: int) -> None: ...

    first = await step.defer(n=1)
    other = await step.defer(n=2)
    second = await step.defer(n=3, depends_on=[first, other])
    assert second.depends_on == (first.id, other.id)
    assert (await app.get_job(second.id)).depends_on == (first.id, other.id)
    listed = {job.id: job.depends_on for job in await app.list_jobs()}
    assert listed == {first.id: (), other.id: (), second.id: (first.id, other.id)}


async def test_a_diamond_from_one_defer_many_runs_first_and_last_in_order(app: App) -> None:
    """A diamond a -> (b, c) -> d from one defer_many call, in any order, runs a first and d last."""
    ran: list[str] = []

    @app.task
    async def node(name: str) -> None:
        await anyio.sleep(0.05)
        ran.append(name)

    a = node.job(name="a")
    b = node.job(name="b", depends_on=[a])
    c = node.job(name="c", depends_on=[a])
    d = node.job(name="d", depends_on=[b, c])
    jobs = await app.defer_many([d, c, b, a])
    by_name = {j.args["name"]: j for j in jobs}
    assert [j.args["name"] for j in jobs] == ["d", "c", "b", "a"]
    assert by_name["a"].state is JobState.AVAILABLE
    assert {by_name[n].state for n in "bcd"} == {JobState.PENDING}
    async with open_worker(app, **fast(concurrency=10)):
        await wait_for_state(app, by_name["d"].id, JobState.COMPLETED)
    assert ran[0] == "a" and ran[-1] == "d" and sorted(ran[1:3]) == ["b", "c"]


async def test_a_discarded_dependency_cancels_the_subtree_naming_it(app: App) -> None:
    """When a dependency is discarded, its dependents and theirs are cancelled with a reason naming it, unattempted."""

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
    assert child_now.state is JobState.CANCELLED and child_now.attempt == 0
    error = child_now.errors[-1]
    assert error.type == "DependencyFailed"
    assert error.message == f"dependency {root.id} ({step.name}) was discarded, so this job will not run"
    assert done.errors[-1].message == f"dependency {child.id} ({step.name}) was cancelled, so this job will not run"
    assert done.finished_at is not None


async def test_cancelling_a_pending_dependency_cancels_its_dependents(app: App) -> None:
    """app.cancel on a pending job (itself a dependency) cancels it and the jobs pending on it."""

    @app.task
    async def step() -> None:
        await anyio.lowlevel.checkpoint()

    root = await step.configure(delay=3600).defer()
    middle = await step.configure(depends_on=[root]).defer()
    leaf = await step.configure(depends_on=[middle]).defer()
    result = await app.cancel(middle.id)
    assert result.status == "cancelled" and result.job.state is JobState.CANCELLED
    leaf_now = await app.get_job(leaf.id)
    assert leaf_now.state is JobState.CANCELLED
    assert f"dependency {middle.id}" in leaf_now.errors[-1].message and "cancelled" in leaf_now.errors[-1].message
    assert (await app.get_job(root.id)).state is JobState.SCHEDULED


async def test_a_dependency_that_completed_or_failed_earlier_decides_at_insert(app: App) -> None:
    """A completed dependency leaves the new job available; a cancelled one makes it cancelled at once, naming it."""

    @app.task
    async def step() -> None:
        await anyio.lowlevel.checkpoint()

    done = await step.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, done.id, JobState.COMPLETED)
    assert (await step.configure(depends_on=[done.id]).defer()).state is JobState.AVAILABLE
    gone = await step.configure(delay=3600).defer()
    await app.cancel(gone.id)
    child = await step.configure(depends_on=[gone]).defer()
    assert child.state is JobState.CANCELLED
    assert child.errors[-1].message == f"dependency {gone.id} ({step.name}) was cancelled, so this job will not run"


async def test_an_unknown_dependency_is_refused_naming_it_and_nothing_is_written(app: App) -> None:
    """depends_on naming a job that does not exist raises, naming the id, and inserts nothing of the call."""

    @app.task
    async def step(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    a = step.job(n=1)
    b = step.job(n=2, depends_on=[a, 987654321])
    with pytest.raises(ConfigurationError, match="987654321"):
        await app.defer_many([a, b])
    assert await app.list_jobs() == []


async def test_retrying_a_cancelled_dependent_waits_for_its_retried_dependency(app: App) -> None:
    """Retrying a dependent of a failed job is refused naming it; after retrying that one it waits, then runs."""
    attempts: list[int] = []

    @app.task(max_attempts=1)
    async def flaky() -> None:
        attempts.append(1)
        await anyio.sleep(0.3)
        if len(attempts) == 1:
            raise RuntimeError("first time fails")

    @app.task
    async def after() -> None:
        await anyio.lowlevel.checkpoint()

    root = await flaky.defer()
    child = await after.configure(depends_on=[root]).defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, child.id, JobState.CANCELLED)
        with pytest.raises(JobStateError, match=rf"{root.id} \({flaky.name}, discarded\)"):
            await app.retry(child.id)
        await app.retry(root.id)
        again = await app.retry(child.id)
        assert again.state is JobState.PENDING
        await wait_for_state(app, child.id, JobState.COMPLETED)


# --- limits ---------------------------------------------------------------------------------------


async def test_max_concurrency_two_never_runs_three_at_once_across_three_workers(app: App) -> None:
    """With max_concurrency=2 and three workers of spare capacity, the ledger never shows three jobs running."""
    ledger = Ledger()

    @app.task(max_concurrency=2)
    async def limited(n: int, ctx: JobContext) -> None:
        ledger.start(ctx.job.id)
        await anyio.sleep(0.05)
        ledger.end(ctx.job.id)

    jobs = await app.defer_many([limited.job(n=i) for i in range(24)])
    async with _workers(app, 3, concurrency=5):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
    assert ledger.max_overlap() == 2
    assert {(await app.get_job(j.id)).attempt for j in jobs} == {1}


async def test_a_partitioned_limit_counts_each_key_separately(app: App) -> None:
    """limit_by gives each customer its own max_concurrency=1: two customers run side by side, never more."""
    ledger = Ledger()

    @app.task(max_concurrency=1, limit_by="customer")
    async def sync_account(customer: str, ctx: JobContext) -> None:
        ledger.start(ctx.job.id, customer)
        await anyio.sleep(0.05)
        ledger.end(ctx.job.id)

    jobs = await app.defer_many([sync_account.job(customer=c) for c in ["a", "b"] * 6])
    async with _workers(app, 2, concurrency=4):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
    assert (ledger.max_overlap("a"), ledger.max_overlap("b"), ledger.max_overlap()) == (1, 1, 2)


async def test_a_rate_limit_holds_within_one_job_over_windows(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """rate_limit='10/s' starts at most 10 * W + 1 jobs in any W-second window, and uses the rate."""

    @app.task(rate_limit="10/s")
    async def ping(n: int) -> None:
        pass

    await app.defer_many([ping.job(n=i) for i in range(120)])
    # What happened, not how much got done in a stretch of a possibly loaded machine's time (see
    # LimitedClaims): the starts as the engine stamped them, and every claim the workers made.
    claims = LimitedClaims.record(app, monkeypatch, enough=31)
    async with _workers(app, 2, concurrency=20, poll_interval=0.03):
        with anyio.fail_after(60):  # only bounds a hang: 31 starts take three seconds or more
            await claims.enough.wait()
    starts = claims.starts()
    for window in (1.0, 2.0, 3.0):
        worst = max(sum(1 for t in starts if s <= t < s + window) for s in starts)
        assert worst <= 10 * window + 1, (window, starts[:40])
    assert claims.refused_with_a_free_slot(0.1) == [], claims.calls


async def test_a_job_held_back_by_a_limit_keeps_attempt_zero(app: App) -> None:
    """A job waiting behind a limit stays available with attempt 0."""
    gate = anyio.Event()

    @app.task(max_concurrency=1)
    async def hold(n: int) -> None:
        await gate.wait()

    first, second = await app.defer_many([hold.job(n=1), hold.job(n=2)])
    async with open_worker(app, **fast(concurrency=5)):
        await wait_for_state(app, first.id, JobState.EXECUTING)
        await anyio.sleep(0.5)
        waiting = await app.get_job(second.id)
        assert (waiting.state, waiting.attempt) == (JobState.AVAILABLE, 0)
        gate.set()
        await wait_for_state(app, second.id, JobState.COMPLETED)


async def test_queue_limits_are_stored_listed_and_enforced_for_every_worker(app: App) -> None:
    """set_queue_limits(max_concurrency=1) holds two workers to one job of that queue at a time, and is listed."""
    ledger = Ledger()

    @app.task(queue="reports")
    async def report(n: int, ctx: JobContext) -> None:
        ledger.start(ctx.job.id)
        await anyio.sleep(0.05)
        ledger.end(ctx.job.id)

    info = await app.set_queue_limits("reports", max_concurrency=1, rate_limit="1000/m")
    assert (info.max_concurrency, info.rate_limit) == (1, "1000/60s")
    (listed,) = await app.list_queues()
    assert (listed.name, listed.max_concurrency, listed.rate_limit) == ("reports", 1, "1000/60s")
    jobs = await app.defer_many([report.job(n=i) for i in range(8)])
    async with _workers(app, 2, concurrency=4, queues=["reports"]):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
    assert ledger.max_overlap() == 1
    lifted = await app.set_queue_limits("reports", max_concurrency=None, rate_limit=None)
    assert lifted.max_concurrency is None and lifted.rate_limit is None


async def test_a_worker_without_the_tasks_limits_leaves_its_jobs_alone(app: App, make_app: Callable[..., App]) -> None:
    """A worker whose app does not know a limited task does not claim its jobs (it cannot honour the limit)."""

    @app.task(name="limited.task", max_concurrency=1)
    async def limited() -> None:
        pass

    job = await limited.defer()
    other = make_app()
    async with open_worker(other, **fast(once=True)) as worker:
        await worker.wait_stopped()
    assert (await app.get_job(job.id)).state is JobState.AVAILABLE


# --- circuit breakers ---------------------------------------------------------------------------


async def _breaker(app: App, task: str) -> str:
    (info,) = [b for b in await app.list_breakers() if b.task == task]
    return info.state


async def test_failures_open_the_breaker_hold_jobs_without_attempts_and_a_probe_closes_it(app: App) -> None:
    """Three failures open a threshold-3 breaker; jobs wait with attempt 0; after the cooldown a probe closes it."""
    service_up = False

    @app.task(name="call_api", max_attempts=1, circuit_breaker=CircuitBreaker(threshold=3, cooldown=1.5))
    async def call_api(n: int) -> None:
        if not service_up:
            raise ConnectionError("partner API is down")

    failing = await app.defer_many([call_api.job(n=i) for i in range(3)])
    async with open_worker(app, **fast(concurrency=1)) as worker:
        for job in failing:
            await wait_for_state(app, job.id, JobState.DISCARDED)
        assert await _breaker(app, "call_api") == "open"
        held = await app.defer_many([call_api.job(n=i) for i in range(3, 6)])
        await anyio.sleep(0.6)
        for job in held:
            now = await app.get_job(job.id)
            assert (now.state, now.attempt) == (JobState.AVAILABLE, 0)
        assert "call_api" in worker.breakers_open
        (info,) = await app.list_breakers()
        assert info.failures >= 3 and info.threshold == 3 and info.reopens_at is not None
        service_up = True
        for job in held:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=15)
        assert await _breaker(app, "call_api") == "closed"


async def test_a_failed_probe_opens_the_breaker_again(app: App) -> None:
    """When the probe after the cooldown fails, the breaker opens again and the other jobs keep waiting."""
    calls: list[int] = []

    @app.task(name="flaky_api", max_attempts=1, circuit_breaker=CircuitBreaker(threshold=1, cooldown=0.5))
    async def flaky_api(n: int) -> None:
        calls.append(n)
        raise ConnectionError("still down")

    first = await flaky_api.defer(n=0)
    async with open_worker(app, **fast(concurrency=4)):
        await wait_for_state(app, first.id, JobState.DISCARDED)
        rest = await app.defer_many([flaky_api.job(n=i) for i in range(1, 4)])
        await wait_until(lambda: len(calls) >= 2, within=10)
        await anyio.sleep(0.2)
        assert await _breaker(app, "flaky_api") == "open"
        states = [(await app.get_job(j.id)).state for j in rest]
    assert states.count(JobState.DISCARDED) == 1
    assert states.count(JobState.AVAILABLE) == 2


# --- periodic jobs ------------------------------------------------------------------------------


def _scheduler(app: App, *names: str) -> Scheduler:
    chosen = names or tuple(app.schedules)
    return Scheduler(app.driver, tuple(app.schedules[n] for n in chosen))


def _age(app: App, name: str, *, active: int = 7200, last_tick: int | None = None) -> None:
    """Pretend schedule *name* has been active for *active* seconds (and last enqueued *last_tick* s ago)."""
    raw_execute(
        app,
        "UPDATE {s}.periodic SET active_since = now() - %s * interval '1 second', "
        "last_tick = CASE WHEN %s::int IS NULL THEN NULL ELSE now() - %s * interval '1 second' END WHERE name = %s",
        "UPDATE {p}periodic SET active_since = " + _SQLITE_NOW + " - ? * 1000000, "
        "last_tick = CASE WHEN ? IS NULL THEN NULL ELSE " + _SQLITE_NOW + " - ? * 1000000 END WHERE name = ?",
        (active, last_tick, last_tick, name),
    )


async def test_racing_schedulers_on_one_database_enqueue_each_tick_once(app: App, make_app: Callable[..., App]) -> None:
    """Five schedulers of five apps running a pass at the same moment insert one job per due tick."""

    @app.task(name="job")
    async def job(n: int) -> None: ...

    for n in range(4):
        app.periodic(job, cron="* * * * *", name=f"every-minute-{n}", args={"n": n}, catch_up=3600)
    await _scheduler(app).run_once()  # registers the rows
    for n in range(4):
        _age(app, f"every-minute-{n}")
    schedulers = [Scheduler(make_app().driver, tuple(app.schedules.values())) for _ in range(5)]
    results: list[SchedulerResult] = []

    async def run(scheduler: Scheduler) -> None:
        results.append(await scheduler.run_once())

    async with anyio.create_task_group() as tg:
        for scheduler in schedulers:
            tg.start_soon(run, scheduler)
    jobs = await app.list_jobs()
    assert sorted(j.args["n"] for j in jobs) == [0, 1, 2, 3]
    assert sum(r.enqueued for r in results) == 4
    assert all(j.scheduled_at.second == 0 and j.scheduled_at.microsecond == 0 for j in jobs)
    listed = await app.list_periodic()
    assert {p.last_job_id for p in listed} == {j.id for j in jobs}


async def test_a_new_schedule_enqueues_nothing_from_before_it_existed(app: App) -> None:
    """The first pass of a new every-minute schedule enqueues nothing: its latest tick predates its row."""

    @app.periodic(cron="* * * * *", catch_up=3600)
    @app.task(name="job")
    async def job() -> None: ...

    result = await _scheduler(app).run_once()
    assert (result.enqueued, result.missed) == (0, 0)
    assert result.next_tick is not None and result.next_tick > result.now
    assert await app.list_jobs() == []


async def test_missed_ticks_within_the_window_are_caught_up_once(app: App) -> None:
    """An hour of missed minute ticks gives one job, for the latest tick, and a second pass adds nothing."""

    @app.periodic(cron="* * * * *", catch_up=3600)
    @app.task(name="job")
    async def job() -> None: ...

    scheduler = _scheduler(app)
    await scheduler.run_once()
    _age(app, "job", last_tick=3600)
    first = await scheduler.run_once()
    second = await _scheduler(app).run_once()
    (row,) = await app.list_jobs()
    assert (first.enqueued, second.enqueued) == (1, 0)
    assert row.scheduled_at == first.now.replace(second=0, microsecond=0) and row.state is JobState.AVAILABLE
    (info,) = await app.list_periodic()
    assert info.last_job_id == row.id and info.last_job_state is JobState.AVAILABLE


async def test_a_tick_older_than_the_catch_up_window_is_skipped(app: App) -> None:
    """A tick missed by about 30 minutes is skipped with catch_up=60, and enqueued by a schedule allowing an hour."""
    clock = (await app.driver.periodic_state([])).now  # the database's clock
    minute = (clock.minute - 30) % 60

    @app.task(name="job")
    async def job() -> None: ...

    app.periodic(job, cron=f"{minute} * * * *", name="short", catch_up=60)
    app.periodic(job, cron=f"{minute} * * * *", name="long", catch_up=dt.timedelta(hours=1))
    await _scheduler(app).run_once()
    _age(app, "short")
    _age(app, "long")
    short = await _scheduler(app, "short").run_once()
    long = await _scheduler(app, "long").run_once()
    assert (short.missed, short.enqueued) == (1, 0)
    assert (long.missed, long.enqueued) == (0, 1)
    assert len(await app.list_jobs()) == 1


async def test_a_tick_whose_unique_twin_is_queued_is_consumed_without_a_job(app: App) -> None:
    """With a unique task, a tick while the previous job is still queued inserts nothing and records that job."""

    @app.periodic(cron="* * * * *", args={"table": "users"}, catch_up=3600)
    @app.task(name="reindex", unique_key=True)
    async def reindex(table: str) -> None: ...

    waiting = await reindex.defer(table="users")
    await _scheduler(app).run_once()
    _age(app, "reindex")
    result = await _scheduler(app).run_once()
    assert (result.enqueued, result.held) == (0, 1)
    assert len(await app.list_jobs()) == 1
    (info,) = await app.list_periodic()
    assert info.last_job_id == waiting.id and info.last_job_state is JobState.AVAILABLE


async def test_three_workers_enqueue_every_second_once(app: App) -> None:
    """Three workers running a seconds schedule leave one job per tick."""
    seen: list[str] = []

    @app.periodic(cron="* * * * * *", name="pulse", tick_arg="tick")
    @app.task(name="pulse")
    async def pulse(tick: str) -> None:
        seen.append(tick)

    async with _workers(app, 3):
        await wait_until(lambda: len(seen) >= 3, within=15)
    ticks = [j.args["tick"] for j in await app.list_jobs(task="pulse")]
    assert len(ticks) >= 3 and len(ticks) == len(set(ticks))
    assert len(seen) == len(set(seen))


async def test_list_periodic_shows_schedules_with_their_next_tick_and_last_job(app: App) -> None:
    """list_periodic gives each schedule's time zone, next tick and last job."""

    @app.task(name="job")
    async def job() -> None: ...

    app.periodic(job, cron="* * * * *", name="a", timezone="Europe/Paris", catch_up=3600)
    app.periodic(job, cron="0 0 1 1 *", name="b")
    await _scheduler(app, "a").run_once()
    _age(app, "a")
    await _scheduler(app, "a").run_once()
    a, b = await app.list_periodic()
    assert (a.name, a.in_app, a.timezone, a.cron) == ("a", True, "Europe/Paris", "* * * * *")
    assert a.last_job_state is JobState.AVAILABLE and a.last_tick is not None
    assert a.next_tick is not None and 0 < (a.next_tick - a.now).total_seconds() <= 60
    assert (b.name, b.last_job_id, b.updated_at) == ("b", None, None)
