"""The dashboard's tests: each gets an App on a fresh database of its engine (PostgreSQL schema or
SQLite file, from the conformance fixtures) and talks to the dashboard over HTTP in-process
(``httpx.ASGITransport``), on trio and asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from nursery_worker import App
from nursery_worker.web import create_web_app

from ..conformance.conftest import app, engine, engine_dsn, engine_schema, make_app

__all__ = ["app", "engine", "engine_dsn", "engine_schema", "make_app"]

pytest.importorskip("starlette")

#: The write token of the read-write dashboards in these tests.
TOKEN = "test-token-0123456789"
BASE = "http://dash.test"


@pytest.fixture
def migrated(app: App) -> App:
    """The test's App with its tables created (SQLite creates them on first use otherwise)."""
    app.migrate_sync()
    return app


@pytest.fixture
def client_for(migrated: App) -> Callable[..., Any]:
    """Make an HTTP client for a dashboard of the test's app built with these options."""

    def make(**options: Any) -> httpx.AsyncClient:
        web = create_web_app(migrated, **options)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url=BASE)

    return make


@pytest.fixture
async def client(client_for: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    """A read-only dashboard's client."""
    async with client_for() as c:
        yield c


@pytest.fixture
async def writer(client_for: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    """A read-write dashboard's client, sending the token as a bearer header from the same origin."""
    async with client_for(read_only=False, token=TOKEN) as c:
        c.headers["authorization"] = f"Bearer {TOKEN}"
        c.headers["origin"] = BASE
        yield c
