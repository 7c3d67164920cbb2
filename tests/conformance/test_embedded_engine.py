"""What only the embedded engine has: how it is chosen, what it refuses, how it wakes workers, and
the transactional enqueue on a ``sqlite3.Connection``. (Its semantics are the conformance suite's.)"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from nursery_worker import App, ConfigurationError, DatabaseError, JobState, open_worker
from nursery_worker._driver import sqlite as engine
from nursery_worker._driver.sqlite import _connection, _listener
from nursery_worker._dsn import parse_sqlite_dsn

from ..integration.helpers import fast, wait_for_state

ENV_VAR = "NURSERY_WORKER_DSN"


def _file(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


# --- choosing the engine --------------------------------------------------------------------------


def test_sqlite_dsns_name_relative_and_absolute_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``sqlite:///rel`` is relative to the current directory, ``sqlite:////abs`` absolute, and the options parse."""
    monkeypatch.chdir(tmp_path)
    assert App(dsn="sqlite:///sub/jobs.db").driver.path == str(tmp_path / "sub" / "jobs.db")  # type: ignore[attr-defined]
    assert App(dsn=f"sqlite:///{tmp_path}/abs.db").driver.path == str(tmp_path / "abs.db")  # type: ignore[attr-defined]
    target = parse_sqlite_dsn("sqlite:///j.db?busy_timeout=2.5&synchronous=NORMAL")
    assert (target.path, target.busy_timeout, target.synchronous) == ("j.db", 2.5, "normal")


@pytest.mark.parametrize(
    ("dsn", "needle"),
    [
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite://", "in-memory"),
        ("sqlite:///", "in-memory"),
        ("sqlite://host/jobs.db", "no host"),
        ("sqlite:jobs.db", "sqlite:///relative"),
        ("sqlite:///jobs.db?journal=off", "unknown SQLite DSN option 'journal'"),
        ("sqlite:///jobs.db?busy_timeout=0", "busy_timeout"),
        ("sqlite:///jobs.db?synchronous=off", "synchronous"),
    ],
)
def test_a_bad_sqlite_dsn_is_refused_at_construction(dsn: str, needle: str) -> None:
    """A malformed SQLite DSN, an in-memory database or an unknown option raises ConfigurationError at App()."""
    with pytest.raises(ConfigurationError) as info:
        App(dsn=dsn)
    assert needle in str(info.value)


def test_no_dsn_means_the_embedded_file_announced_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without dsn= or $NURSERY_WORKER_DSN the engine is ./nursery-worker.sqlite3, announced once, in one log line."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="nursery_worker")
    first, second = App(), App(schema="other")
    assert first.driver.path == second.driver.path == str(tmp_path / "nursery-worker.sqlite3")  # type: ignore[attr-defined]
    (record,) = [r for r in caplog.records if "embedded SQLite" in r.getMessage()]
    message = record.getMessage()
    assert record.name == "nursery_worker"
    assert str(tmp_path / "nursery-worker.sqlite3") in message
    assert "$NURSERY_WORKER_DSN" in message and len(message.replace(str(tmp_path), "")) < 120


def test_the_environment_variable_wins_over_the_default_and_dsn_over_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """$NURSERY_WORKER_DSN is used when dsn= is not given, and dsn= wins over it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_VAR, "sqlite:///from-env.db")
    assert App().driver.path == str(tmp_path / "from-env.db")  # type: ignore[attr-defined]
    assert App(dsn="sqlite:///explicit.db").driver.path == str(tmp_path / "explicit.db")  # type: ignore[attr-defined]


def test_an_sqlite_older_than_3_35_is_refused_naming_postgresql(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An SQLite library without RETURNING (older than 3.35) is refused with the versions and PostgreSQL named."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigurationError) as info:
        App(dsn=f"sqlite:///{_file(tmp_path)}")
    assert "3.35" in str(info.value) and "3.31.1" in str(info.value) and "PostgreSQL" in str(info.value)


def test_the_embedded_engine_does_not_import_psycopg(tmp_path: Path) -> None:
    """Enqueueing and working on the embedded engine never imports psycopg."""
    script = (
        "import sys, anyio\n"
        "from nursery_worker import App, open_worker\n"
        f"app = App(dsn={'sqlite:///' + str(_file(tmp_path))!r})\n"
        "@app.task\n"
        "async def noop() -> None: ...\n"
        "async def main() -> None:\n"
        "    await noop.defer()\n"
        "    async with open_worker(app, once=True) as worker:\n"
        "        await worker.wait_stopped()\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- zero set-up ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_tables_are_created_on_first_use_in_wal_mode(tmp_path: Path) -> None:
    """The first defer on a new file creates the tables (the current version) and puts the file in WAL mode."""
    async with App(dsn=f"sqlite:///{_file(tmp_path)}", schema="shop") as app:

        @app.task
        async def noop() -> None: ...

        job = await noop.defer()
        assert job.state is JobState.AVAILABLE
        assert await app.migrate() == []
    with sqlite3.connect(_file(tmp_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute('SELECT max(version) FROM "shop_migrations"').fetchone()[0] == engine.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"shop_jobs", "shop_workers", "shop_queues", "shop_events", "shop_migrations"} <= tables


@pytest.mark.anyio
async def test_two_schemas_share_one_file_without_seeing_each_other(tmp_path: Path) -> None:
    """Apps with different schemas on one file have separate jobs."""
    dsn = f"sqlite:///{_file(tmp_path)}"
    async with App(dsn=dsn, schema="a") as a, App(dsn=dsn, schema="b") as b:
        (job,) = await a.defer_many([a.job_by_name("t")])
        assert [j.id for j in await a.list_jobs()] == [job.id]
        assert await b.list_jobs() == []


@pytest.mark.anyio
async def test_a_file_in_a_missing_directory_is_a_clear_database_error(tmp_path: Path) -> None:
    """A DSN whose directory does not exist fails when the app opens with a DatabaseError naming the file."""
    path = tmp_path / "missing" / "jobs.sqlite3"
    with pytest.raises(DatabaseError) as info:
        async with App(dsn=f"sqlite:///{path}") as app:
            await app.get_job(1)
    assert str(path) in str(info.value) and "directory" in str(info.value)


# --- wake-ups -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_write_of_this_process_wakes_the_listener_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the listener's poll at 30 s, a defer from another thread still wakes it at once (its socket is poked)."""
    monkeypatch.setattr(_listener, "LISTEN_POLL", 30.0)
    async with App(dsn=f"sqlite:///{_file(tmp_path)}") as app:
        listener = app.driver.listener()
        await listener.connect()
        try:
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, lambda: app.defer_many_sync([app.job_by_name("t")]))
                with anyio.fail_after(20):
                    notes = await listener.wait(keepalive=60)
            elapsed = time.perf_counter() - started
        finally:
            await listener.aclose()
    assert [(n.kind, n.value) for n in notes] == [("available", "default")]
    assert elapsed < 15.0  # well before the 30 s poll


@pytest.mark.anyio
async def test_the_listener_sees_another_processs_writes_by_polling(tmp_path: Path) -> None:
    """A cancel made by another process reaches the listener within its poll, as ``cancel:<id>``."""
    async with App(dsn=f"sqlite:///{_file(tmp_path)}") as app:
        (job,) = await app.defer_many([app.job_by_name("t")])
        await app.driver.fetch_jobs(worker_id="w", queues=["default"], limit=1)
        listener = app.driver.listener()
        await listener.connect()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
            env[ENV_VAR] = f"sqlite:///{_file(tmp_path)}"
            cancel = [sys.executable, "-m", "nursery_worker", "jobs", "cancel", str(job.id)]
            result = await anyio.run_process(cancel, env=env, check=False)
            assert result.returncode == 0, result.stderr
            with anyio.fail_after(20):  # only bounds a hang: the poll is 50 ms
                notes = await listener.wait(keepalive=60)
        finally:
            await listener.aclose()
    assert [(n.kind, n.value) for n in notes] == [("cancel", str(job.id))]


@pytest.mark.anyio
async def test_old_events_are_deleted_by_the_promoter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Notification rows older than the retention are deleted by the next promotion."""
    async with App(dsn=f"sqlite:///{_file(tmp_path)}") as app:
        await app.defer_many([app.job_by_name("t")])
        monkeypatch.setattr(_connection, "EVENT_RETENTION", -1.0)
        await app.driver.promote_due(limit=10)
    with sqlite3.connect(_file(tmp_path)) as conn:
        assert conn.execute('SELECT count(*) FROM "nursery_worker_events"').fetchone()[0] == 0


# --- enqueueing in the caller's transaction ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_job_deferred_on_a_sqlite3_connection_commits_with_it(tmp_path: Path) -> None:
    """A job deferred with connection=<sqlite3.Connection> to the same file exists once the caller commits, and runs."""
    async with App(dsn=f"sqlite:///{_file(tmp_path)}") as app:
        await app.migrate()  # the file exists (in WAL mode) before the caller's transaction
        ran: list[int] = []

        @app.task
        async def invoice(order: int) -> None:
            ran.append(order)

        conn = sqlite3.connect(_file(tmp_path))
        try:
            conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            conn.execute("INSERT INTO orders (id) VALUES (7)")
            job = await invoice.configure(connection=conn).defer(order=7)
            assert conn.in_transaction
            assert await app.list_jobs() == []  # not visible before the commit
            conn.commit()
        finally:
            conn.close()
        async with open_worker(app, **fast()):
            await wait_for_state(app, job.id, JobState.COMPLETED)
    assert ran == [7]


def test_a_job_deferred_on_a_rolled_back_sqlite3_connection_is_gone(tmp_path: Path) -> None:
    """A rollback of the caller's transaction takes the deferred job (and the caller's own rows) with it."""
    app = App(dsn=f"sqlite:///{_file(tmp_path)}")
    conn = sqlite3.connect(_file(tmp_path))
    try:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.execute("INSERT INTO orders (id) VALUES (1)")
        app.defer_many_sync([app.job_by_name("t"), app.job_by_name("t")], connection=conn)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    finally:
        conn.close()
        app.close()
    assert anyio.run(app.list_jobs) == []


def test_an_autocommit_sqlite3_connection_commits_the_job_at_once(tmp_path: Path) -> None:
    """On a connection in autocommit mode outside a transaction, the insert commits by itself."""
    app = App(dsn=f"sqlite:///{_file(tmp_path)}")
    conn = sqlite3.connect(_file(tmp_path), isolation_level=None)
    try:
        (job,) = app.defer_many_sync([app.job_by_name("t")], connection=conn)
        assert not conn.in_transaction
        assert anyio.run(app.get_job, job.id).state is JobState.AVAILABLE
    finally:
        conn.close()
        app.close()


@pytest.mark.parametrize("target", ["other file", "memory"])
def test_a_sqlite3_connection_to_another_database_is_refused(tmp_path: Path, target: str) -> None:
    """connection= to another file or an in-memory database raises ConfigurationError and inserts nothing."""
    app = App(dsn=f"sqlite:///{_file(tmp_path)}")
    conn = sqlite3.connect(":memory:" if target == "memory" else tmp_path / "other.sqlite3")
    try:
        with pytest.raises(ConfigurationError, match="not to this app's file"):
            app.defer_many_sync([app.job_by_name("t")], connection=conn)
        assert anyio.run(app.list_jobs) == []
    finally:
        conn.close()
        app.close()


@pytest.mark.anyio
async def test_a_version_1_file_is_upgraded_keeping_its_jobs_and_never_reusing_ids(tmp_path: Path) -> None:
    """A file at schema version 1 is upgraded on first use: its jobs stay, new states work, and ids stay unique."""
    from importlib import resources

    path = _file(tmp_path)
    script = resources.files("nursery_worker._driver.sqlite").joinpath("migrations/0001_initial.sql").read_text()
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")
        for statement in _connection.statements(script.replace("{p}", "shop_")):
            conn.execute(statement)
        conn.execute("CREATE TABLE shop_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at INTEGER)")
        conn.execute("INSERT INTO shop_migrations (version, name, applied_at) VALUES (1, '0001_initial.sql', 0)")
        for n in range(3):
            conn.execute(
                "INSERT INTO shop_jobs (task, queue, args, scheduled_at, inserted_at) VALUES ('old', 'q', ?, 0, 0)",
                (f'{{"n": {n}}}',),
            )
        conn.execute("DELETE FROM shop_jobs WHERE id = 3")  # pruned: id 3 must never come back
        conn.execute("COMMIT")
    conn.close()
    async with App(dsn=f"sqlite:///{path}", schema="shop") as app:

        @app.task
        async def step() -> None: ...

        kept = await app.list_jobs()
        assert [(j.id, j.task) for j in kept] == [(2, "old"), (1, "old")]
        first = await step.defer()
        second = await step.configure(depends_on=[first]).defer()
        assert (first.id, second.id, second.state) == (4, 5, JobState.PENDING)
    with sqlite3.connect(path) as conn:
        versions = [r[0] for r in conn.execute('SELECT version FROM "shop_migrations" ORDER BY version')]
    conn.close()
    from nursery_worker._driver.sqlite._connection import MIGRATIONS

    assert versions == [version for version, _ in MIGRATIONS]
