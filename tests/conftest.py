"""Shared fixtures: every test gets its own PostgreSQL schema, and every async test runs on both
backends (anyio's pytest plugin). ``NW_BACKENDS=trio`` or ``=asyncio`` restricts the backends;
``NW_ENGINES=sqlite`` or ``=postgres`` the engines of the tests that run on both (conformance, engine model)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from nursery_worker import App

TEST_DSN = os.environ.get("NURSERY_WORKER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = [b.strip() for b in os.environ.get("NW_BACKENDS", "asyncio,trio").split(",") if b.strip()]
ENGINES = [e.strip() for e in os.environ.get("NW_ENGINES", "postgres,sqlite").split(",") if e.strip()]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dsn() -> str:
    return TEST_DSN


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    """A fresh, empty schema name; dropped (with everything in it) after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def app(dsn: str, schema: str) -> Iterator[App]:
    """An App on a freshly migrated schema of its own."""
    application = App(dsn=dsn, schema=schema)
    application.migrate_sync()
    yield application
    application.close()


@pytest.fixture
def db(dsn: str, schema: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain autocommit connection with search_path set to the test's schema, for assertions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        yield conn
