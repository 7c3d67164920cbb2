"""Bloat resistance on every engine: what ``Driver.database_health`` reports (the oldest open
transaction and the jobs table's dead tuples on PostgreSQL, the WAL's size on SQLite), the gauges
and the ``status`` line made from it, and ``idle_in_transaction_timeout`` on our own sessions.

The shared test server has other clients (other tests, other schemas), so a test never assumes
that the transaction it opens is the oldest one: only that the oldest is at least as old.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nursery_worker import App, DatabaseError, open_worker, serve_metrics
from nursery_worker._models import DatabaseHealth, OldestTransaction
from nursery_worker._status import database_dict, render_database

from ..conftest import TEST_DSN
from ..integration.helpers import fast

pytestmark = pytest.mark.anyio


@contextmanager
def _old_snapshot(schema: str) -> Iterator[psycopg.Connection[Any]]:
    """A REPEATABLE READ transaction that has taken its snapshot (it read the jobs table), left open."""
    with psycopg.connect(TEST_DSN, application_name="bloat-test") as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()
        yield conn
        conn.rollback()


def _metric(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _status(args: list[str], *, dsn: str, schema: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_") and k != "COLUMNS"}
    env |= {"NURSERY_WORKER_DSN": dsn, "NURSERY_WORKER_SCHEMA": schema}
    done = subprocess.run(
        [sys.executable, "-m", "nursery_worker", "status", "--width", "0", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- what the driver reports ---------------------------------------------------------------------


async def test_postgres_reports_the_oldest_transaction_and_the_jobs_dead_tuples(
    app: App, engine: str, engine_schema: str
) -> None:
    """PostgreSQL names an open transaction at least as old as ours and counts deleted jobs as dead tuples."""
    if engine != "postgres":
        pytest.skip("PostgreSQL only: SQLite has no server-wide transaction view")
    await app.defer_many([app.job_by_name("send", {"n": n}) for n in range(50)])
    with psycopg.connect(TEST_DSN, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{engine_schema}".jobs')
        conn.execute("SELECT pg_stat_force_next_flush()")
    with _old_snapshot(engine_schema):
        await anyio.sleep(1.1)
        health = await app.driver.database_health()
    assert health.engine == "postgresql"
    assert health.oldest_transaction is not None and health.oldest_transaction.age >= 1.0
    assert health.dead_tuples is not None and health.dead_tuples >= 50
    assert health.live_tuples is not None and health.wal_bytes is None


async def test_sqlite_reports_no_transaction_view_but_the_wal_size(app: App, engine: str) -> None:
    """On SQLite the health has no oldest transaction and no dead tuples, and gives the write-ahead log's size."""
    if engine != "sqlite":
        pytest.skip("SQLite only")
    await app.defer_many([app.job_by_name("send", {"n": n}) for n in range(50)])
    health = await app.driver.database_health()
    assert health.engine == "sqlite"
    assert health.oldest_transaction is None and health.dead_tuples is None and health.live_tuples is None
    assert health.wal_bytes is not None and health.wal_bytes > 0


# --- the gauges -----------------------------------------------------------------------------------


async def test_the_metrics_carry_the_database_health_gauges_of_the_engine(
    app: App, engine: str, engine_schema: str
) -> None:
    """A scrape has the oldest transaction's age and the jobs' dead/live tuples (PostgreSQL), or the WAL size."""
    await app.defer_many([app.job_by_name("send", {"n": n}) for n in range(20)])
    async with anyio.create_task_group() as tg:
        async with open_worker(app, **fast(queues="nothing-here")) as worker:
            port = await tg.start(serve_metrics, worker, 0)
            if engine == "postgres":
                with _old_snapshot(engine_schema):
                    await anyio.sleep(1.1)
                    text = await anyio.to_thread.run_sync(_scrape, port)
            else:
                text = await anyio.to_thread.run_sync(_scrape, port)
        tg.cancel_scope.cancel()
    if engine == "postgres":
        (age,) = _metric(text, "nursery_worker_oldest_transaction_seconds").values()
        assert age >= 1.0
        assert set(_metric(text, "nursery_worker_dead_tuples")) == {(("table", "jobs"),)}
        assert set(_metric(text, "nursery_worker_live_tuples")) == {(("table", "jobs"),)}
        assert not _metric(text, "nursery_worker_sqlite_wal_bytes")
    else:
        (wal,) = _metric(text, "nursery_worker_sqlite_wal_bytes").values()
        assert wal > 0
        assert not _metric(text, "nursery_worker_oldest_transaction_seconds")
        assert not _metric(text, "nursery_worker_dead_tuples")


# --- the status line ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_status_has_a_database_line_and_object_on_every_engine(
    app: App, engine: str, engine_dsn: str, engine_schema: str
) -> None:
    """``status`` starts with a ``database:`` line, and ``status --json`` has the same as ``"database"``."""
    await app.defer_many([app.job_by_name("send", {"n": n}) for n in range(5)])
    text, data = await anyio.to_thread.run_sync(
        lambda: (
            _status([], dsn=engine_dsn, schema=engine_schema),
            json.loads(_status(["--json"], dsn=engine_dsn, schema=engine_schema)),
        )
    )
    first = text.splitlines()[0]
    database = data["database"]
    if engine == "postgres":
        assert first.startswith(("database: ", "WARNING database: ")) and "jobs dead tuples" in first
        assert database["engine"] == "postgresql" and isinstance(database["dead_tuples"], int)
    else:
        assert first.startswith("database: SQLite, oldest transaction n/a") and "write-ahead log" in first
        assert database["engine"] == "sqlite" and database["oldest_transaction"] is None
        assert database["dead_tuples"] is None and database["warnings"] == []


def test_the_database_line_warns_of_an_old_transaction_and_piled_up_dead_tuples() -> None:
    """A transaction open over 60 s, or dead tuples over a fifth of the live, mark the line WARNING."""
    calm = DatabaseHealth(
        engine="postgresql",
        oldest_transaction=OldestTransaction(age=3.0, pid=77, state="active", application_name="nursery-worker"),
        dead_tuples=120,
        live_tuples=1000,
    )
    assert render_database(calm) == (
        "database: oldest transaction 3s (pid 77, active, app nursery-worker); jobs dead tuples 120 (12% of live)"
    )
    stuck = DatabaseHealth(
        engine="postgresql",
        oldest_transaction=OldestTransaction(age=63.0, pid=1234, state="idle in transaction", application_name="psql"),
        dead_tuples=120_345,
        live_tuples=300_000,
    )
    first, *warnings = render_database(stuck).splitlines()
    assert first == (
        "WARNING database: oldest transaction 1m03s (pid 1234, idle in transaction, app psql); "
        "jobs dead tuples 120,345 (40% of live)"
    )
    assert len(warnings) == 2 and "pg_terminate_backend(1234)" in warnings[0]
    assert database_dict(stuck)["oldest_transaction"]["pid"] == 1234 and len(database_dict(stuck)["warnings"]) == 2
    assert render_database(DatabaseHealth(engine="postgresql", dead_tuples=0, live_tuples=0)) == (
        "database: no open transaction; jobs dead tuples 0"
    )
    brief = DatabaseHealth(
        engine="postgresql",
        oldest_transaction=OldestTransaction(age=0.2, pid=5, state="active", application_name="nursery-worker"),
        dead_tuples=0,
        live_tuples=0,
    )
    assert render_database(brief) == "database: no transaction open over 1s; jobs dead tuples 0"


# --- idle_in_transaction_timeout -------------------------------------------------------------------


def _setting(app: App) -> str:
    """``idle_in_transaction_session_timeout`` as a pooled session of *app* has it."""
    driver: Any = app.driver
    return str(driver._run(lambda c: c.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]))


async def test_our_pooled_sessions_carry_the_default_idle_in_transaction_timeout(app: App, engine: str) -> None:
    """Every pooled PostgreSQL session of an app ends an idle transaction after 60 s by default."""
    if engine != "postgres":
        pytest.skip("PostgreSQL only: SQLite has no sessions to time out")
    await app.open()
    assert await anyio.to_thread.run_sync(_setting, app) == "1min"


async def test_the_worker_option_sets_the_timeout_and_postgres_ends_an_idle_transaction(app: App, engine: str) -> None:
    """The worker's option reaches the open pool, and the server ends a session idle in a transaction longer."""
    if engine != "postgres":
        pytest.skip("PostgreSQL only: SQLite has no sessions to time out")
    await app.open()
    assert await anyio.to_thread.run_sync(_setting, app) == "1min"  # the pool is open: the worker must replace it
    async with open_worker(app, **fast(queues="nothing-here", idle_in_transaction_timeout=0.3)):
        assert await anyio.to_thread.run_sync(_setting, app) == "300ms"
        driver: Any = app.driver

        def abandon_a_transaction() -> None:
            def body(conn: psycopg.Connection[Any]) -> None:
                conn.execute("BEGIN")
                conn.execute("SELECT 1")
                time.sleep(1.0)  # idle in transaction, past the timeout
                conn.execute("SELECT 1")

            driver._run(body)

        with pytest.raises(DatabaseError, match="idle-in-transaction timeout"):
            await anyio.to_thread.run_sync(abandon_a_transaction)


async def test_zero_turns_the_timeout_off_and_a_callers_connection_is_left_alone(app: App, engine: str) -> None:
    """``idle_in_transaction_timeout=0`` turns the timeout off; a connection passed to ``defer`` is left alone."""
    if engine != "postgres":
        pytest.skip("PostgreSQL only: SQLite has no sessions to time out")
    with psycopg.connect(TEST_DSN, autocommit=True) as mine:
        mine.execute("SET idle_in_transaction_session_timeout = '17s'")
        async with open_worker(app, **fast(queues="nothing-here", idle_in_transaction_timeout=0)):
            assert await anyio.to_thread.run_sync(_setting, app) == "0"
            await app.defer_many([app.job_by_name("send", {"n": 2})], connection=mine)
        row = mine.execute("SHOW idle_in_transaction_session_timeout").fetchone()
    assert row is not None and row[0] == "17s"
