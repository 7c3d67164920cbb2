"""Integration tests of schema migrations against real PostgreSQL: idempotence, concurrency,
placement in the configured schema, and refusing to run on a missing or newer schema."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from nursery_worker import App, SchemaNotReady, open_worker
from nursery_worker._driver.postgres import MIGRATIONS

#: Every migration version, in order (not necessarily contiguous: versions are applied by number).
VERSIONS = [version for version, _ in MIGRATIONS]

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]


def tables_in(db: Conn, schema: str) -> set[str]:
    """The names of the tables in *schema*."""
    rows = db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema])
    return {r[0] for r in rows.fetchall()}


def schema_exists(db: Conn, schema: str) -> bool:
    """Whether *schema* exists."""
    row = db.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", [schema]).fetchone()
    return row is not None and row[0] == 1


def jobs_in(db: Conn, schema: str) -> int:
    """How many rows the jobs table of *schema* holds."""
    row = db.execute(sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema))).fetchone()
    assert row is not None
    return int(row[0])


# --- migrate --------------------------------------------------------------------------------


async def test_migrate_applies_every_version_then_nothing(dsn: str, schema: str) -> None:
    """The first migrate of a fresh schema applies every version; a second one applies nothing and returns []."""
    async with App(dsn=dsn, schema=schema) as app:
        assert await app.migrate() == VERSIONS
        assert await app.migrate() == []


def test_migrate_sync_is_idempotent(dsn: str, schema: str, db: Conn) -> None:
    """migrate_sync twice applies each version once and records it once."""
    with App(dsn=dsn, schema=schema) as app:
        assert app.migrate_sync() == VERSIONS
        assert app.migrate_sync() == []

    query = sql.SQL("SELECT version FROM {}.migrations ORDER BY version").format(sql.Identifier(schema))
    assert db.execute(query).fetchall() == [(v,) for v in VERSIONS]


async def test_migrate_keeps_existing_jobs(app: App, db: Conn) -> None:
    """Migrating an up-to-date schema again leaves its jobs untouched."""

    @app.task
    async def send(to: str) -> None: ...

    job = await send.defer(to="x")
    assert await app.migrate() == []

    assert (await app.get_job(job.id)).args == {"to": "x"}


def test_concurrent_migrations_both_succeed(dsn: str, schema: str, db: Conn) -> None:
    """Two migrations of one fresh schema started together from two threads both succeed; one applies them all."""
    apps = [App(dsn=dsn, schema=schema) for _ in range(2)]
    barrier = threading.Barrier(len(apps))

    def migrate(app: App) -> list[int]:
        barrier.wait(timeout=30)
        return app.migrate_sync()

    try:
        with ThreadPoolExecutor(max_workers=len(apps)) as pool:
            results = list(pool.map(migrate, apps))
    finally:
        for app in apps:
            app.close()

    assert sorted(results) == [[], VERSIONS]
    assert {"jobs", "workers", "migrations"} <= tables_in(db, schema)


async def test_concurrent_migrations_from_tasks_both_succeed(dsn: str, schema: str) -> None:
    """Four migrate() calls of one fresh schema running at once in a task group all succeed; one applies them all."""
    results: list[list[int]] = []

    async def migrate() -> None:
        async with App(dsn=dsn, schema=schema) as app:
            results.append(await app.migrate())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(migrate)

    assert sorted(results) == [[], [], [], VERSIONS]


def test_the_tables_live_in_the_configured_schema(app: App, db: Conn) -> None:
    """migrate creates jobs, workers and migrations tables in the App's schema."""
    assert {"jobs", "workers", "migrations"} <= tables_in(db, app.schema)


def test_the_job_id_column_is_bigint(app: App, db: Conn) -> None:
    """The jobs table's id column is a bigint (ids do not run out at 2**31)."""
    row = db.execute(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'jobs' AND column_name = 'id'",
        [app.schema],
    ).fetchone()

    assert row == ("bigint",)


async def test_jobs_are_written_to_the_configured_schema_only(dsn: str, schema: str, db: Conn) -> None:
    """Two Apps on two schemas of one database keep separate jobs tables."""
    other = schema + "_b"
    try:
        async with App(dsn=dsn, schema=schema) as first, App(dsn=dsn, schema=other) as second:
            await first.migrate()
            await second.migrate()

            @first.task(name="t")
            async def one() -> None: ...

            @second.task(name="t")
            async def two() -> None: ...

            await one.defer()
            await one.defer()
            await two.defer()

        assert (jobs_in(db, schema), jobs_in(db, other)) == (2, 1)
    finally:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))


# --- an unmigrated schema -------------------------------------------------------------------


async def test_defer_on_a_missing_schema_raises_schema_not_ready(dsn: str, schema: str, db: Conn) -> None:
    """defer on a schema that does not exist raises SchemaNotReady naming `nursery-worker migrate`."""
    async with App(dsn=dsn, schema=schema) as app:

        @app.task
        async def send(to: str) -> None: ...

        with pytest.raises(SchemaNotReady) as info:
            await send.defer(to="x")

    assert isinstance(info.value, RuntimeError)
    assert "nursery-worker migrate" in str(info.value)
    assert schema in str(info.value)
    assert not schema_exists(db, schema)


async def test_defer_on_an_empty_schema_raises_schema_not_ready(dsn: str, schema: str, db: Conn) -> None:
    """defer on a schema that exists without the tables raises SchemaNotReady naming `nursery-worker migrate`."""
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    async with App(dsn=dsn, schema=schema) as app:

        @app.task
        async def send(to: str) -> None: ...

        with pytest.raises(SchemaNotReady) as info:
            await send.defer(to="x")

    assert "nursery-worker migrate" in str(info.value)
    assert tables_in(db, schema) == set()


async def test_defer_many_and_get_job_on_a_missing_schema_raise_schema_not_ready(dsn: str, schema: str) -> None:
    """defer_many and get_job on an unmigrated schema raise SchemaNotReady too."""
    async with App(dsn=dsn, schema=schema) as app:

        @app.task
        async def send(to: str) -> None: ...

        with pytest.raises(SchemaNotReady):
            await app.defer_many([send.job(to="x")])
        with pytest.raises(SchemaNotReady):
            await app.get_job(1)


def test_defer_sync_on_a_missing_schema_raises_schema_not_ready(dsn: str, schema: str) -> None:
    """defer_sync on an unmigrated schema raises SchemaNotReady naming `nursery-worker migrate`."""
    with App(dsn=dsn, schema=schema) as app:

        @app.task
        def send(to: str) -> None: ...

        with pytest.raises(SchemaNotReady) as info:
            send.defer_sync(to="x")

    assert "nursery-worker migrate" in str(info.value)


async def test_open_worker_on_an_unmigrated_schema_raises_schema_not_ready(dsn: str, schema: str) -> None:
    """open_worker on a schema that was never migrated raises SchemaNotReady (not a group) naming the command."""
    async with App(dsn=dsn, schema=schema) as app:
        with anyio.fail_after(30), pytest.raises(SchemaNotReady) as info:
            async with open_worker(app):
                pytest.fail("the worker started on an unmigrated schema")

    assert "nursery-worker migrate" in str(info.value)


# --- a newer schema -------------------------------------------------------------------------


async def test_open_worker_on_a_newer_schema_raises_schema_not_ready(app: App, db: Conn) -> None:
    """open_worker on a schema whose migrations table records version 999 raises SchemaNotReady saying to upgrade."""
    db.execute("INSERT INTO migrations (version, name) VALUES (999, 'from_the_future.sql')")

    with anyio.fail_after(30), pytest.raises(SchemaNotReady) as info:
        async with open_worker(app):
            pytest.fail("the worker started on a newer schema")

    assert "999" in str(info.value)
    assert "upgrade" in str(info.value)
    row = db.execute("SELECT count(*) FROM workers").fetchone()
    assert row == (0,)


async def test_migrate_on_a_newer_schema_raises_schema_not_ready(app: App, db: Conn) -> None:
    """app.migrate on a schema at version 999 raises SchemaNotReady saying to upgrade, and changes nothing."""
    db.execute("INSERT INTO migrations (version, name) VALUES (999, 'from_the_future.sql')")

    with pytest.raises(SchemaNotReady) as info:
        await app.migrate()

    assert "999" in str(info.value)
    assert "upgrade" in str(info.value)
    assert db.execute("SELECT version FROM migrations ORDER BY version").fetchall() == [(v,) for v in [*VERSIONS, 999]]


def test_migrate_sync_on_a_newer_schema_raises_schema_not_ready(app: App, db: Conn) -> None:
    """app.migrate_sync on a schema at version 999 raises SchemaNotReady saying to upgrade."""
    db.execute("INSERT INTO migrations (version, name) VALUES (999, 'from_the_future.sql')")

    with pytest.raises(SchemaNotReady) as info:
        app.migrate_sync()

    assert "upgrade" in str(info.value)
