"""``task.defer_batch``: the lean bulk enqueue (ids only), the same on every engine."""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from nursery_worker import App, ConstantBackoff, JobState, open_worker

from ..conftest import TEST_DSN
from ..integration.helpers import fast, wait_until

pytestmark = pytest.mark.anyio

#: Below and above the bulk thresholds of both engines (COPY from 200 jobs, executemany from 50).
SIZES = [3, 250]


@contextmanager
def _user_connection(app: App, engine: str) -> Iterator[Any]:
    """A connection of the caller's own to the app's database, in a transaction they commit or roll back."""
    if engine == "postgres":
        import psycopg

        with psycopg.connect(TEST_DSN) as conn:
            yield conn
        return
    from nursery_worker._dsn import parse_sqlite_dsn

    dsn = app._settings.dsn
    assert dsn is not None
    conn = sqlite3.connect(parse_sqlite_dsn(dsn).path)
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("n", SIZES)
async def test_defer_batch_returns_the_ids_in_order_of_jobs_stored_as_given(app: App, n: int) -> None:
    """``defer_batch`` returns increasing ids in order; each job is available with its arguments and options."""

    @app.task(queue="mail", priority=4, max_attempts=3)
    async def send(to: str, n: int = 0) -> None: ...

    ids = await send.defer_batch([{"to": f"u{i}@example.com", "n": i} if i % 2 else {"to": "x"} for i in range(n)])
    assert len(ids) == n and ids == sorted(set(ids))
    for i, job_id in enumerate(ids):
        job = await app.get_job(job_id)
        assert job.args == ({"to": f"u{i}@example.com", "n": i} if i % 2 else {"to": "x"})
        assert (job.task, job.queue, job.priority, job.max_attempts) == (send.name, "mail", 4, 3)
        assert job.state is JobState.AVAILABLE and job.attempt == 0


@pytest.mark.parametrize("n", SIZES)
async def test_configure_options_apply_to_every_job_of_a_batch(app: App, n: int) -> None:
    """``configure(...).defer_batch`` gives every job the options, scheduled by the database clock."""

    @app.task
    async def work(n: int) -> None: ...

    ids = await work.configure(
        queue="later", priority=-2, delay=60, max_attempts=7, retry=ConstantBackoff(5)
    ).defer_batch({"n": i} for i in range(n))
    for job_id in (ids[0], ids[-1]):
        job = await app.get_job(job_id)
        assert job.state is JobState.SCHEDULED
        assert (job.queue, job.priority, job.max_attempts) == ("later", -2, 7)
        assert job.inserted_at is not None and job.scheduled_at - job.inserted_at == dt.timedelta(seconds=60)
        assert job.retry_policy == {"kind": "constant", "seconds": 5}


async def test_a_past_scheduled_at_makes_the_batch_available_and_a_future_one_scheduled(app: App) -> None:
    """An aware ``scheduled_at`` is stored to the microsecond for every job; a past one is available at once."""

    @app.task
    async def at(n: int) -> None: ...

    past = dt.datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=dt.UTC)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1, microseconds=3)
    early = await at.configure(scheduled_at=past).defer_batch([{"n": i} for i in range(250)])
    late = await at.configure(scheduled_at=future).defer_batch([{"n": 1}])
    assert (await app.get_job(early[-1])).scheduled_at == past
    assert (await app.get_job(early[-1])).state is JobState.AVAILABLE
    assert (await app.get_job(late[0])).scheduled_at == future
    assert (await app.get_job(late[0])).state is JobState.SCHEDULED


async def test_a_worker_runs_every_job_of_a_batch(app: App) -> None:
    """A worker picks up and completes every job of a batch (the queue's notification wakes it)."""
    ran: list[int] = []

    @app.task
    async def work(n: int) -> None:
        ran.append(n)

    async with open_worker(app, **fast(concurrency=20)):
        await work.defer_batch([{"n": i} for i in range(300)])
        await wait_until(lambda: len(ran) == 300, within=30)
    assert sorted(ran) == list(range(300))


async def test_copy_special_characters_in_arguments_are_stored_unchanged(app: App) -> None:
    """Tabs, newlines, backslashes, quotes and non-ASCII text in the arguments round-trip through the bulk path."""

    @app.task
    async def echo(text: str, tags: list[str] | None = None) -> None: ...

    texts = ["a\tb", "line\nbreak\r", "back\\slash\\N", '"quoted"', "ünïcødé ✓ 𝄞", "\\t literal"]
    items = [{"text": texts[i % len(texts)], "tags": [texts[(i + 1) % len(texts)]]} for i in range(240)]
    ids = await echo.defer_batch(items)
    for job_id, item in zip(ids, items, strict=True):
        assert (await app.get_job(job_id)).args == item


async def test_an_empty_batch_writes_nothing_and_returns_no_ids(app: App) -> None:
    """``defer_batch([])`` returns an empty list."""

    @app.task
    async def work(n: int) -> None: ...

    assert await work.defer_batch([]) == []
    assert await app.list_jobs() == []


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"m": 1}, TypeError, r"defer_batch\(\): item 7: .*'n'"),
        ({"n": 1, "extra": 2}, TypeError, r"item 7: .*extra"),
        ({"n": {1, 2}}, TypeError, r"item 7: .*is not JSON.*set"),
        ({"n": math.nan}, ValueError, r"item 7: .*nan, which JSON cannot represent"),
        ({"n": "a\x00b"}, ValueError, r"item 7: .*NUL"),
        ({"n": "x" * 2000}, ValueError, r"item 7: .*max_args_bytes"),
        (["n", 1], TypeError, r"item 7 is \['n', 1\]; pass one dict"),
    ],
)
async def test_a_bad_item_raises_naming_it_and_nothing_is_written(
    make_app: Any, engine: str, bad: Any, error: type[Exception], match: str
) -> None:
    """An item that does not fit the function or is not storable JSON raises, naming its index; nothing is written."""
    app = make_app(max_args_bytes=1000)
    if engine == "postgres":
        await app.migrate()

    @app.task
    async def work(n: Any) -> None: ...

    items: list[Any] = [{"n": i} for i in range(300)]
    items[7] = bad
    with pytest.raises(error, match=match):
        await work.defer_batch(items)
    assert await app.list_jobs() == []


async def test_a_task_with_var_keywords_refuses_a_key_that_is_not_a_string(app: App) -> None:
    """A ``**kwargs`` task refuses an item with a non-``str`` key, naming the item."""

    @app.task
    async def loose(**fields: Any) -> None: ...

    with pytest.raises(TypeError, match=r"item 1 has the key 3"):
        await loose.defer_batch([{"a": 1}, {3: "x"}])
    assert await app.list_jobs() == []


async def test_unique_jobs_of_a_batch_return_the_holders_id(app: App) -> None:
    """With a unique key, an item whose twin is queued (in the table or earlier in the batch) gives the twin's id."""

    @app.task(unique_key=True)
    async def sync_user(user: int) -> None: ...

    first = await sync_user.defer(user=1)
    ids = await sync_user.defer_batch([{"user": 1}, {"user": 2}, {"user": 2}, {"user": 3}])
    assert ids[0] == first.id
    assert ids[1] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3
    assert len(await app.list_jobs()) == 3


async def test_a_batch_configured_with_depends_on_waits_for_its_dependency(app: App) -> None:
    """``configure(depends_on=job).defer_batch`` makes every job of the batch pending until that job completes."""

    @app.task
    async def first() -> None: ...

    @app.task
    async def then(n: int) -> None: ...

    parent = await first.defer()
    ids = await then.configure(depends_on=parent).defer_batch([{"n": 1}, {"n": 2}])
    assert [(await app.get_job(i)).state for i in ids] == [JobState.PENDING, JobState.PENDING]
    assert (await app.get_job(ids[0])).depends_on == (parent.id,)


@pytest.mark.parametrize("commit", [True, False])
@pytest.mark.parametrize("n", SIZES)
def test_a_batch_joins_the_callers_transaction(app: App, engine: str, commit: bool, n: int) -> None:
    """With ``configure(connection=...)`` the batch commits or rolls back with the caller's transaction."""

    @app.task
    async def work(n: int) -> None: ...

    app.migrate_sync()
    with _user_connection(app, engine) as conn:
        ids = work.configure(connection=conn).defer_batch_sync([{"n": i} for i in range(n)])
        assert len(ids) == n
        if commit:
            conn.commit()
        else:
            conn.rollback()
    jobs = anyio.run(lambda: app.list_jobs(limit=1000))
    assert sorted(j.id for j in jobs) == (ids if commit else [])


def test_defer_batch_sync_enqueues_from_synchronous_code(app: App) -> None:
    """``defer_batch_sync`` takes any iterable of mappings and returns the ids, as ``defer_batch`` does."""

    @app.task
    async def work(n: int) -> None: ...

    ids = work.defer_batch_sync({"n": i} for i in range(260))
    assert len(ids) == 260
    job = anyio.run(app.get_job, ids[-1])
    assert job.args == {"n": 259} and job.state is JobState.AVAILABLE


@pytest.mark.parametrize("commit", [True, False])
def test_defer_many_in_bulk_joins_a_transaction_the_caller_has_not_started_yet(
    app: App, engine: str, commit: bool
) -> None:
    """``defer_many`` of many jobs on the caller's fresh connection (no statement yet) commits or rolls back with it."""
    app.migrate_sync()
    with _user_connection(app, engine) as conn:
        jobs = app.defer_many_sync([app.job_by_name("t", {"n": i}) for i in range(250)], connection=conn)
        if commit:
            conn.commit()
        else:
            conn.rollback()
    stored = anyio.run(lambda: app.list_jobs(limit=1000))
    assert sorted(j.id for j in stored) == ([j.id for j in jobs] if commit else [])
