"""Unique jobs against real PostgreSQL: string, argument and function keys, the states that block
a twin, ``defer_many`` with duplicates, races between concurrent producers, and the errors."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest

from nursery_worker import App, ConfigurationError, Job, JobState, JobStateError
from nursery_worker.testing import drain

from .helpers import Connection, query

pytestmark = pytest.mark.anyio


async def _count(db: Connection, task: str | None = None) -> int:
    """How many rows the jobs table holds (of *task*, when given)."""
    if task is None:
        rows = await query(db, "SELECT count(*) FROM jobs")
    else:
        rows = await query(db, "SELECT count(*) FROM jobs WHERE task = %s", [task])
    return int(rows[0][0])


# --- keys ------------------------------------------------------------------------------------


async def test_duplicate_defer_with_a_string_key_returns_the_existing_job_and_inserts_nothing(
    app: App, db: Connection
) -> None:
    """A second defer with the same string key returns the first job, marked duplicate, and adds no row."""

    @app.task(unique_key="daily-report")
    async def report(day: str) -> None: ...

    first = await report.defer(day="mon")
    second = await report.defer(day="tue")

    assert first.duplicate is False
    assert second.duplicate is True
    assert second.id == first.id
    assert second.state is JobState.AVAILABLE
    assert second.args == {"day": "mon"}  # the holder's arguments, not the refused ones
    assert second.unique_key == "daily-report"
    assert await _count(db) == 1


async def test_unique_key_true_refuses_a_job_with_the_same_arguments(app: App, db: Connection) -> None:
    """With unique_key=True the arguments are the key: the same arguments give the existing job."""

    @app.task(unique_key=True)
    async def sync_user(user_id: int, full: bool) -> None: ...

    first = await sync_user.defer(user_id=7, full=True)
    second = await sync_user.defer(user_id=7, full=True)

    assert (second.id, second.duplicate) == (first.id, True)
    assert await _count(db) == 1


async def test_unique_key_true_accepts_a_job_with_other_arguments(app: App, db: Connection) -> None:
    """With unique_key=True different arguments make different keys, so both jobs are inserted."""

    @app.task(unique_key=True)
    async def sync_user(user_id: int) -> None: ...

    first = await sync_user.defer(user_id=7)
    second = await sync_user.defer(user_id=8)

    assert second.duplicate is False
    assert second.id != first.id
    assert await _count(db) == 2


async def test_unique_key_true_does_not_depend_on_the_order_of_the_keyword_arguments(app: App, db: Connection) -> None:
    """The argument key is canonical JSON: the same arguments passed in another order are a duplicate."""

    @app.task(unique_key=True)
    async def move(src: str, dst: str, options: dict[str, Any]) -> None: ...

    first = await move.defer(src="a", dst="b", options={"x": 1, "y": [1, 2]})
    second = await move.defer(options={"y": [1, 2], "x": 1}, dst="b", src="a")

    assert (second.id, second.duplicate) == (first.id, True)
    assert first.unique_key == second.unique_key
    assert await _count(db) == 1


async def test_a_unique_key_function_computes_the_key_from_the_arguments(app: App, db: Connection) -> None:
    """A key function receives the arguments; jobs whose arguments map to the same key are duplicates."""
    seen: list[dict[str, Any]] = []

    def by_account(args: dict[str, Any]) -> str:
        seen.append(args)
        return f"account:{args['account']}"

    @app.task(unique_key=by_account)
    async def rebuild(account: int, reason: str) -> None: ...

    first = await rebuild.defer(account=1, reason="signup")
    second = await rebuild.defer(account=1, reason="manual")
    third = await rebuild.defer(account=2, reason="manual")

    assert first.unique_key == "account:1"
    assert (second.id, second.duplicate) == (first.id, True)
    assert third.duplicate is False and third.unique_key == "account:2"
    assert seen[0] == {"account": 1, "reason": "signup"}
    assert await _count(db) == 2


async def test_configure_sets_a_unique_key_for_one_job(app: App, db: Connection) -> None:
    """task.configure(unique_key=...) makes jobs of an otherwise non-unique task unique."""

    @app.task
    async def ping(n: int) -> None: ...

    first = await ping.configure(unique_key="k").defer(n=1)
    second = await ping.configure(unique_key="k").defer(n=2)
    plain = await ping.defer(n=3)

    assert (second.id, second.duplicate) == (first.id, True)
    assert plain.duplicate is False and plain.unique_key is None
    assert await _count(db) == 2


async def test_unique_keys_are_per_task(app: App, db: Connection) -> None:
    """The same key on two different tasks gives two jobs: keys are scoped by task."""

    @app.task(unique_key="same")
    async def one() -> None: ...

    @app.task(unique_key="same")
    async def two() -> None: ...

    a = await one.defer()
    b = await two.defer()

    assert a.duplicate is False and b.duplicate is False
    assert a.id != b.id
    assert await _count(db) == 2


# --- the states that block a twin --------------------------------------------------------------


async def test_a_new_job_is_accepted_once_the_holder_completed_with_the_default_states(
    app: App, db: Connection
) -> None:
    """With the default unique_states a completed holder no longer blocks its key."""

    @app.task(unique_key="nightly")
    async def nightly() -> None: ...

    first = await nightly.defer()
    result = await drain(app)
    assert [j.id for j in result.completed] == [first.id]

    second = await nightly.defer()

    assert second.duplicate is False
    assert second.id != first.id
    assert second.state is JobState.AVAILABLE
    assert await _count(db) == 2


async def test_a_new_job_is_refused_while_the_holder_is_executing(app: App, db: Connection) -> None:
    """An executing holder blocks its key (executing is always one of the unique states)."""

    @app.task(unique_key="k")
    async def work() -> None: ...

    first = await work.defer()
    await query(
        db,
        "UPDATE jobs SET state = 'executing', attempt = 1, worker_id = 'elsewhere', attempted_at = now() "
        "WHERE id = %s RETURNING id",
        [first.id],
    )

    second = await work.defer()

    assert (second.id, second.duplicate, second.state) == (first.id, True, JobState.EXECUTING)
    assert await _count(db) == 1


async def test_a_new_job_is_refused_after_the_holder_completed_when_unique_states_include_completed(
    app: App, db: Connection
) -> None:
    """With 'completed' in unique_states a completed holder still blocks its key, and is returned."""

    @app.task(unique_key="once-ever", unique_states=["scheduled", "available", "executing", "retryable", "completed"])
    async def migrate_data() -> int:
        return 42

    first = await migrate_data.defer()
    await drain(app)

    second = await migrate_data.defer()

    assert second.duplicate is True
    assert second.id == first.id
    assert second.state is JobState.COMPLETED
    assert second.result == 42
    assert await _count(db) == 1


async def test_unique_states_missing_an_active_state_is_a_configuration_error(app: App) -> None:
    """unique_states without every queued and running state is refused, naming the missing state."""
    with pytest.raises(ConfigurationError, match="retryable"):

        @app.task(unique_key="k", unique_states=["scheduled", "available", "executing"])
        async def task_a() -> None: ...

    @app.task
    async def task_b() -> None: ...

    with pytest.raises(ConfigurationError, match="executing"):
        task_b.configure(unique_key="k", unique_states=["scheduled", "available", "retryable", "completed"])


async def test_unique_states_with_a_bogus_state_is_a_configuration_error(app: App) -> None:
    """A unique_states entry that is not a job state is refused, naming it."""
    with pytest.raises(ConfigurationError, match="'finished'"):

        @app.task(unique_key="k", unique_states=["scheduled", "available", "executing", "retryable", "finished"])
        async def task_a() -> None: ...


async def test_a_unique_key_function_that_raises_is_a_configuration_error(app: App, db: Connection) -> None:
    """A key function that raises fails the defer with ConfigurationError naming the error, writing nothing."""

    def broken(args: dict[str, Any]) -> str:
        raise KeyError("tenant")

    @app.task(unique_key=broken)
    async def work(n: int) -> None: ...

    with pytest.raises(ConfigurationError, match="KeyError"):
        await work.defer(n=1)
    assert await _count(db) == 0


async def test_a_unique_key_function_that_returns_a_non_string_is_a_configuration_error(
    app: App, db: Connection
) -> None:
    """A key function returning something other than a string fails the defer, naming the value."""

    @app.task(unique_key=lambda args: args["n"])
    async def work(n: int) -> None: ...

    with pytest.raises(ConfigurationError, match="returned 5"):
        await work.defer(n=5)
    assert await _count(db) == 0


# --- defer_many ------------------------------------------------------------------------------


async def test_defer_many_returns_one_job_per_item_in_order_with_duplicates_marked(app: App, db: Connection) -> None:
    """defer_many with plain, new unique, duplicate-of-existing and duplicate-within-the-call items
    returns one Job per item, in order, each duplicate carrying its holder's id."""

    @app.task
    async def plain(n: int) -> None: ...

    @app.task(unique_key=lambda args: f"u{args['n']}")
    async def uniq(n: int) -> None: ...

    existing = await uniq.defer(n=1)

    jobs = await app.defer_many(
        [
            plain.job(n=0),  # 0: plain
            uniq.job(n=1),  # 1: duplicate of the existing job
            uniq.job(n=2),  # 2: new unique
            plain.job(n=3),  # 3: plain
            uniq.job(n=2),  # 4: duplicate of item 2, same call
            uniq.job(n=3),  # 5: new unique
            uniq.job(n=1),  # 6: duplicate of the existing job again
            plain.job(n=4),  # 7: plain
        ]
    )

    assert len(jobs) == 8
    assert [j.duplicate for j in jobs] == [False, True, False, False, True, False, True, False]
    assert [j.task for j in jobs] == [
        plain.name,
        uniq.name,
        uniq.name,
        plain.name,
        uniq.name,
        uniq.name,
        uniq.name,
        plain.name,
    ]
    assert jobs[1].id == existing.id and jobs[6].id == existing.id
    assert jobs[4].id == jobs[2].id
    new_ids = [jobs[i].id for i in (0, 2, 3, 5, 7)]
    assert len(set(new_ids)) == 5 and existing.id not in new_ids
    assert new_ids == sorted(new_ids)  # inserted in the order given
    assert [jobs[i].args["n"] for i in (0, 2, 3, 5, 7)] == [0, 2, 3, 3, 4]
    rows = await query(db, "SELECT id, task, args->>'n' FROM jobs ORDER BY id")
    assert [(r[0], r[1], int(r[2])) for r in rows] == [(existing.id, uniq.name, 1)] + [
        (jobs[i].id, jobs[i].task, jobs[i].args["n"]) for i in (0, 2, 3, 5, 7)
    ]


async def test_defer_many_of_only_duplicates_inserts_nothing(app: App, db: Connection) -> None:
    """A defer_many whose every item is a duplicate returns the holder for each and adds no row."""

    @app.task(unique_key=True)
    async def uniq(n: int) -> None: ...

    a = await uniq.defer(n=1)
    b = await uniq.defer(n=2)
    jobs = await app.defer_many([uniq.job(n=2), uniq.job(n=1), uniq.job(n=2)])

    assert [(j.id, j.duplicate) for j in jobs] == [(b.id, True), (a.id, True), (b.id, True)]
    assert await _count(db) == 2


# --- races -----------------------------------------------------------------------------------


async def test_twenty_concurrent_defers_of_one_key_insert_exactly_one_row(app: App, db: Connection) -> None:
    """Twenty defers of the same key racing in one task group insert one row; all get its id."""

    @app.task(unique_key="race")
    async def work(n: int) -> None: ...

    results: list[Job] = []

    async def one(n: int) -> None:
        results.append(await work.defer(n=n))

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(one, n)

    assert await _count(db) == 1
    assert len({j.id for j in results}) == 1
    assert sum(not j.duplicate for j in results) == 1


async def test_concurrent_defer_sync_from_threads_inserts_exactly_one_row(app: App, db: Connection) -> None:
    """defer_sync of one key from eight threads released together inserts one row."""

    @app.task(unique_key="thread-race")
    async def work(n: int) -> None: ...

    threads = 8
    barrier = threading.Barrier(threads)
    results: list[Job] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        try:
            barrier.wait(timeout=20)
            job = work.defer_sync(n=n)
            with lock:
                results.append(job)
        except BaseException as exc:  # reported below, not lost in the thread
            with lock:
                errors.append(exc)

    def run_all() -> None:
        pool = [threading.Thread(target=one, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=30)

    await anyio.to_thread.run_sync(run_all)

    assert errors == []
    assert len(results) == threads
    assert len({j.id for j in results}) == 1
    assert sum(not j.duplicate for j in results) == 1
    assert await _count(db) == 1


# --- retry and transactions ------------------------------------------------------------------


async def test_retry_of_a_cancelled_unique_job_while_a_twin_holds_the_key_is_a_job_state_error(
    app: App, db: Connection
) -> None:
    """Retrying a cancelled unique job whose key a newer twin holds raises JobStateError and changes nothing."""

    @app.task(unique_key="k")
    async def work() -> None: ...

    old = await work.defer()
    assert (await app.cancel(old.id)).status == "cancelled"
    twin = await work.defer()
    assert twin.duplicate is False

    with pytest.raises(JobStateError, match="unique key"):
        await app.retry(old.id)

    assert (await app.get_job(old.id)).state is JobState.CANCELLED
    assert (await app.get_job(twin.id)).state is JobState.AVAILABLE


async def test_retry_of_a_cancelled_unique_job_without_a_twin_makes_it_hold_the_key_again(
    app: App, db: Connection
) -> None:
    """A retried unique job holds its key again: a defer after the retry returns it as a duplicate."""

    @app.task(unique_key="k")
    async def work() -> None: ...

    old = await work.defer()
    await app.cancel(old.id)
    retried = await app.retry(old.id)
    again = await work.defer()

    assert retried.state is JobState.AVAILABLE
    assert (again.id, again.duplicate) == (old.id, True)
    assert await _count(db) == 1


async def test_a_unique_job_deferred_in_a_rolled_back_transaction_leaves_no_row(
    app: App, db: Connection, dsn: str
) -> None:
    """A unique job enqueued on the caller's psycopg.Connection is rolled back with it, freeing its key."""

    @app.task(unique_key="tx")
    async def work() -> None: ...

    def in_transaction() -> Job:
        with psycopg.connect(dsn) as conn, conn.transaction(force_rollback=True):
            job = work.configure(connection=conn).defer_sync()
            # inside the transaction the job is visible and holds the key
            dup = work.configure(connection=conn).defer_sync()
            assert (dup.id, dup.duplicate) == (job.id, True)
            return job

    inside = await anyio.to_thread.run_sync(in_transaction)

    assert inside.duplicate is False
    assert await _count(db) == 0
    after = await work.defer()
    assert after.duplicate is False
    assert await _count(db) == 1


async def test_a_unique_job_deferred_in_a_committed_transaction_holds_its_key(
    app: App, db: Connection, dsn: str
) -> None:
    """A unique job committed with the caller's transaction blocks a later defer of the same key."""

    @app.task(unique_key="tx")
    async def work() -> None: ...

    def in_transaction() -> Job:
        with psycopg.connect(dsn) as conn, conn.transaction():
            return work.configure(connection=conn).defer_sync()

    inside = await anyio.to_thread.run_sync(in_transaction)
    after = await work.defer()

    assert (after.id, after.duplicate) == (inside.id, True)
    assert await _count(db) == 1


# --- known bugs ------------------------------------------------------------------------------


async def test_unique_key_true_treats_an_explicit_default_like_an_omitted_argument(app: App, db: Connection) -> None:
    """f(a=1) and f(a=1, b=<b's default>) are the same call, so with unique_key=True the second is a duplicate."""

    @app.task(unique_key=True)
    async def work(a: int, b: int = 0) -> None: ...

    first = await work.defer(a=1)
    second = await work.defer(a=1, b=0)

    assert (second.id, second.duplicate) == (first.id, True)
    assert await _count(db) == 1


async def test_configure_unique_states_with_completed_refuses_a_twin_that_completed_earlier(app: App) -> None:
    """A job enqueued with 'completed' in its unique_states is refused while a twin of its key is completed."""

    @app.task(unique_key="k")
    async def work() -> None: ...

    first = await work.defer()
    await drain(app)
    assert (await app.get_job(first.id)).state is JobState.COMPLETED

    second = await work.configure(
        unique_states=["scheduled", "available", "executing", "retryable", "completed"]
    ).defer()

    assert (second.id, second.duplicate) == (first.id, True)
