"""``nursery_worker.testing.isolated_database`` (the pytest plugin's isolation): a fresh database for
the block on PostgreSQL or SQLite, removed after, and the app back on its own database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest

from nursery_worker import App
from nursery_worker.testing import JobsUnderTest, isolated_database


def names(app: App) -> list[str]:
    """The ``name`` argument of every job in the app's database, oldest first."""
    return [job.args["name"] for job in anyio.run(JobsUnderTest(app).enqueued)]


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[App]:
    application = App(dsn=f"sqlite:///{tmp_path / 'own.sqlite3'}")
    yield application
    application.close()


def test_postgresql_dsn_gives_a_throwaway_schema_and_restores_the_app(app: App, dsn: str) -> None:
    """With a PostgreSQL DSN the block's jobs go to a new schema, dropped after; the app's own jobs stay."""

    @app.task
    def greet(name: str) -> None: ...

    own = app.schema
    greet.defer_sync(name="own")
    with isolated_database(app, dsn=dsn) as isolated:
        schema = isolated.schema
        assert schema.startswith("nw_test_")
        greet.defer_sync(name="isolated")
        assert names(isolated) == ["isolated"]
    assert app.schema == own
    assert names(app) == ["own"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() == (0,)


def test_no_dsn_gives_a_new_sqlite_file_and_restores_the_app(sqlite_app: App, tmp_path: Path) -> None:
    """With no DSN the block's jobs go to a new SQLite file in *directory*; the app's own file is untouched."""

    @sqlite_app.task
    def greet(name: str) -> None: ...

    greet.defer_sync(name="own")
    with isolated_database(sqlite_app, directory=tmp_path / "isolated") as isolated:
        greet.defer_sync(name="isolated")
        assert names(isolated) == ["isolated"]
        assert (tmp_path / "isolated" / "nursery-worker.sqlite3").exists()
    assert names(sqlite_app) == ["own"]
