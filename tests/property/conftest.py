"""What the engine model tests share: an app on a fresh database of each engine, and a raw
connection to its tables for reading them behind the driver's back."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from nursery_worker import App

from ..conftest import ENGINES


@attrs.frozen
class EngineDatabase:
    """An app on a fresh, migrated database, and a raw connection to its tables.

    ``engine``: ``postgres`` (``conn`` is the test's psycopg connection, its search path on the
    app's schema) or ``sqlite`` (``conn`` is a sqlite3 connection; the tables are ``prefix`` + name).
    """

    app: App
    engine: str
    conn: Any
    prefix: str = ""


@pytest.fixture(params=ENGINES)
def engine_database(request: pytest.FixtureRequest) -> Iterator[EngineDatabase]:
    """An app on a fresh, migrated database of the engine under test, and a raw connection to its tables."""
    if request.param == "postgres":
        yield EngineDatabase(app=request.getfixturevalue("app"), engine="postgres", conn=request.getfixturevalue("db"))
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    path: Path = request.getfixturevalue("tmp_path") / "jobs.sqlite3"
    app = App(dsn=f"sqlite:///{path}", schema=schema)
    app.migrate_sync()
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        yield EngineDatabase(app=app, engine="sqlite", conn=conn, prefix=f"{schema}_")
    finally:
        conn.close()
        app.close()
