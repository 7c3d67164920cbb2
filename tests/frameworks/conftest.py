"""Fixtures of the framework integration tests: the engine each test runs on (PostgreSQL: a schema
of its own; SQLite: a file in ``tmp_path``), as in the conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ..conftest import ENGINES, TEST_DSN


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under test: ``postgres`` or ``sqlite``."""
    return str(request.param)


@pytest.fixture
def engine_schema(engine: str) -> Iterator[str]:
    """A fresh schema name (PostgreSQL: dropped after the test; SQLite: the tables' prefix)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    if engine == "postgres":
        with psycopg.connect(TEST_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def engine_dsn(engine: str, tmp_path: Path) -> str:
    """The DSN of the test's database."""
    return TEST_DSN if engine == "postgres" else f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
