"""The driver conformance suite: one set of tests, run on every engine, is what "the same semantics"
means. Each test gets an :class:`App` on a fresh database of its engine (PostgreSQL: a schema of its
own; SQLite: a file in ``tmp_path``), and runs on trio and asyncio (the root ``anyio_backend``).

``NW_ENGINES=sqlite`` (or ``=postgres``) restricts the engines, as ``NW_BACKENDS`` does the loops.
The tests use the public API, a worker and the driver interface; what they set up behind the API's
back (a schema version from the future) goes through :func:`raw_execute`, the one engine-specific
helper.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nursery_worker import App

from ..conftest import ENGINES, TEST_DSN


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under test: ``postgres`` or ``sqlite``."""
    return str(request.param)


@pytest.fixture
def engine_schema(engine: str) -> Iterator[str]:
    """A fresh schema name (PostgreSQL: dropped after the test; SQLite: the tables' prefix in a fresh file)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    if engine == "postgres":
        import psycopg
        from psycopg import sql

        with psycopg.connect(TEST_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def engine_dsn(engine: str, tmp_path: Path) -> str:
    """The DSN of the test's database."""
    return TEST_DSN if engine == "postgres" else f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


@pytest.fixture
def make_app(engine_dsn: str, engine_schema: str) -> Iterator[Callable[..., App]]:
    """Make more apps on the test's database (closed after the test)."""
    apps: list[App] = []

    def make(**kwargs: Any) -> App:
        application = App(dsn=engine_dsn, schema=engine_schema, **kwargs)
        apps.append(application)
        return application

    yield make
    for application in apps:
        application.close()


@pytest.fixture
def app(engine: str, make_app: Callable[..., App]) -> App:
    """An App on the test's database: migrated on PostgreSQL; on SQLite left to create its tables on first use."""
    application = make_app()
    if engine == "postgres":
        application.migrate_sync()
    return application


def raw_execute(app: App, postgres: str, sqlite: str, params: tuple[Any, ...] = ()) -> None:
    """Run a statement behind the API's back, on the app's database: *postgres* (``{s}`` is the
    schema) or *sqlite* (``{p}`` is the tables' prefix), with ``%s``/``?`` parameters."""
    from nursery_worker._dsn import is_sqlite_dsn, parse_sqlite_dsn

    dsn = app._settings.dsn
    assert dsn is not None
    if is_sqlite_dsn(dsn):
        with sqlite3.connect(parse_sqlite_dsn(dsn).path) as conn:
            conn.execute(sqlite.replace("{p}", f"{app.schema}_"), params)
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(postgres).format(s=sql.Identifier(app.schema)), params)
