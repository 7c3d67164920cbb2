"""defer_many of many jobs goes through COPY: same jobs, same order, same schedule rules, same transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

from nursery_worker import App, ConstantBackoff, JobState

from .helpers import query

pytestmark = pytest.mark.anyio

N = 500  # above the COPY threshold


async def test_a_bulk_insert_returns_every_job_in_order_with_increasing_ids(
    app: App, db: psycopg.Connection[Any]
) -> None:
    """The jobs come back in the order given, with increasing ids, and the rows hold their arguments."""

    @app.task
    async def work(n: int) -> None: ...

    jobs = await app.defer_many([work.job(n=i) for i in range(N)])

    assert [j.args["n"] for j in jobs] == list(range(N))
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    rows = dict(await query(db, "SELECT id, args->>'n' FROM jobs"))
    assert {j.id: str(j.args["n"]) for j in jobs} == rows
    assert all(j.state is JobState.AVAILABLE for j in jobs)


async def test_a_bulk_insert_schedules_by_the_database_clock(app: App, db: psycopg.Connection[Any]) -> None:
    """delay= and scheduled_at= make jobs scheduled; the returned times are the rows' times."""

    @app.task
    async def work(n: int) -> None: ...

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    specs = [
        work.configure(delay=60).job(n=i)
        if i % 3 == 1
        else work.configure(scheduled_at=later).job(n=i)
        if i % 3 == 2
        else work.job(n=i)
        for i in range(N)
    ]
    jobs = await app.defer_many(specs)

    rows = {r[0]: (r[1], r[2], r[3]) for r in await query(db, "SELECT id, state, scheduled_at, inserted_at FROM jobs")}
    for i, job in enumerate(jobs):
        state, scheduled_at, inserted_at = rows[job.id]
        assert job.state.value == state
        assert job.scheduled_at == scheduled_at
        assert state == ("available" if i % 3 == 0 else "scheduled")
        if i % 3 == 1:
            assert scheduled_at - inserted_at == dt.timedelta(seconds=60)
        if i % 3 == 2:
            assert scheduled_at == later


async def test_a_bulk_insert_keeps_per_job_retry_policies(app: App, db: psycopg.Connection[Any]) -> None:
    """A per-job retry policy reaches the rows written by COPY."""

    @app.task
    async def work(n: int) -> None: ...

    jobs = await app.defer_many([work.configure(retry=ConstantBackoff(5)).job(n=i) for i in range(N)])

    assert jobs[0].retry_policy == {"kind": "constant", "seconds": 5.0}
    (n,) = (await query(db, "SELECT count(*) FROM jobs WHERE retry_policy->>'kind' = 'constant'"))[0]
    assert n == N


@pytest.mark.parametrize("commit", [True, False])
def test_a_bulk_insert_joins_the_callers_transaction(app: App, dsn: str, schema: str, commit: bool) -> None:
    """Inside a caller's transaction the COPY commits or rolls back with it."""

    @app.task
    async def work(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:
        with conn.transaction(force_rollback=not commit):
            app.defer_many_sync([work.job(n=i) for i in range(N)], connection=conn)
        count = conn.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()
    assert count is not None and count[0] == (N if commit else 0)


async def test_a_bulk_insert_stores_strings_with_copy_special_characters_unchanged(
    app: App, db: psycopg.Connection[Any]
) -> None:
    """Backslashes, tabs, newlines, carriage returns and non-ASCII text survive the COPY format."""

    @app.task(limit_by="key", max_concurrency=5)
    async def work(text: str, key: str) -> None: ...

    texts = ["a\\b", "tab\there", "line\nbreak", "cr\rlf", "\\N", "\\\\t", "é中🙂", "", "plain"]
    specs = [work.job(text=texts[i % len(texts)], key=f"k\t{i % 3}\\") for i in range(N)]
    jobs = await app.defer_many(specs)

    rows = dict(await query(db, "SELECT id, args->>'text' FROM jobs"))
    assert [rows[j.id] for j in jobs] == [texts[i % len(texts)] for i in range(N)]
    keys = dict(await query(db, "SELECT id, limit_key FROM jobs"))
    assert [keys[j.id] for j in jobs] == [f"k\t{i % 3}\\" for i in range(N)]
