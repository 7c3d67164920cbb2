"""Every dashboard read runs under the statement timeout: a read that takes longer is cut, and the
page answers 503 instead of holding a connection the workers need."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from nursery_worker import App
from nursery_worker._driver.sqlite._dashboard import read

from ..conftest import TEST_DSN

pytestmark = pytest.mark.anyio


async def test_postgres_page_over_the_statement_timeout_is_a_503(
    engine: str, migrated: App, client_for: Callable[..., Any]
) -> None:
    """With the jobs table locked by another session, the overview gives up at the timeout with a 503."""
    if engine != "postgres":
        pytest.skip("a lock wait is PostgreSQL's; the SQLite deadline is tested below")
    with psycopg.connect(TEST_DSN) as locker:
        locker.execute(sql.SQL("LOCK TABLE {}.jobs IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(migrated.schema)))
        async with client_for(statement_timeout=0.2) as c:
            response: httpx.Response = await c.get("/api/jobs")
        locker.rollback()
    assert response.status_code == 503
    assert "Traceback" not in response.text


def test_sqlite_read_past_the_deadline_is_interrupted() -> None:
    """The embedded engine's dashboard read interrupts a statement that runs past its deadline."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        read(conn, 0.05, lambda c: c.execute(endless).fetchone())
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection is usable after
