"""The embedded engine's connections and transactions.

``sqlite3`` blocks, so every call runs in a worker thread (``anyio.to_thread.run_sync``, never
abandoned on cancellation), on one of two connections per driver, each behind a lock: one for
writes, one for reads (WAL mode lets reads run beside the writer, even in other processes).
``busy_timeout`` makes a writer wait for another process's transaction instead of failing. A write
runs in one ``BEGIN IMMEDIATE`` transaction: SQLite has one writer at a time per file, so it sees
no concurrent change between its read and its write. The schema is created (or upgraded) on first
use, since the point of the engine is zero set-up.

A write that would NOTIFY on PostgreSQL adds rows to the ``events`` table in its transaction
(:meth:`Tx.notify`) and, once committed, pokes the listeners of this process (:func:`poke`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..._errors import ConfigurationError, DatabaseError, SchemaNotReady
from ..._models import PendingMigration
from .._common import Migrations, Observers, check_schema_name, one_line
from ._insights import compose_dashboard
from ._queries import SQL_NOW, compose
from ._time import NOW_SQL

logger = logging.getLogger("nursery_worker.driver")

T = TypeVar("T")

#: The SQLite schema's own versions (not PostgreSQL's): ``migrations/<file>`` of this package.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, "0001_initial.sql"),
    (2, "0002_flow_control.sql"),
    (3, "0003_dashboard.sql"),
    (4, "0004_periodic_pause.sql"),
    (5, "0005_durable_steps.sql"),
)
_MIGRATIONS = Migrations(package=__name__.rpartition(".")[0], versions=MIGRATIONS)
#: The version this code reads and writes; the last entry of MIGRATIONS.
SCHEMA_VERSION = _MIGRATIONS.latest
#: How many versions there are (their numbers may have a gap: one merged later).
MIGRATION_COUNT = _MIGRATIONS.count

#: RETURNING arrived in SQLite 3.35.0 (2021-03).
MIN_SQLITE_VERSION = (3, 35, 0)

#: Events older than this many seconds are deleted (a listener reads them within its poll).
EVENT_RETENTION = 60.0


def check_sqlite_version() -> None:
    """Refuse an SQLite library older than the engine needs.

    Raises:
        ConfigurationError: ``sqlite3.sqlite_version`` is older than 3.35.0.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        needed = ".".join(map(str, MIN_SQLITE_VERSION))
        raise ConfigurationError(
            f"the embedded engine needs SQLite >= {needed} (for RETURNING), but this Python's sqlite3 module "
            f"uses SQLite {sqlite3.sqlite_version}: use a newer Python build, or PostgreSQL "
            "(set NURSERY_WORKER_DSN=postgresql://user@host/db and run `nursery-worker migrate`)"
        )


# --- in-process wake-ups ---------------------------------------------------------------------

#: The write ends of the listeners of this process, by (file, schema): a write that adds events
#: pokes every listener of its file and schema, whichever driver (App) and thread made it.
wakers: dict[tuple[str, str], set[socket.socket]] = {}
wakers_lock = threading.Lock()


def poke(key: tuple[str, str]) -> None:
    """Wake every listener of this process on *key* (file, schema): a write there committed events."""
    with wakers_lock:
        targets = list(wakers.get(key, ()))
    for sock in targets:
        # A full socket is awake already; a closed one belongs to a listener going away.
        with contextlib.suppress(OSError):
            sock.send(b"\0")


class Tx:
    """One call's connection, the events it adds, and (for a write) the transaction's time."""

    def __init__(self, conn: sqlite3.Connection, q: dict[str, str]) -> None:
        self.conn = conn
        self.q = q
        self.events: list[str] = []
        self._now: int | None = None

    @property
    def now(self) -> int:
        """The database's clock, read once per transaction (PostgreSQL's ``now()``)."""
        if self._now is None:
            self._now = int(self.conn.execute(SQL_NOW).fetchone()[0])
        return self._now

    def execute(self, name: str, params: dict[str, Any] | None = None) -> sqlite3.Cursor:
        return self.conn.execute(self.q[name], params or {})

    def notify(self, payload: str) -> None:
        self.execute("event", {"now": self.now, "payload": payload})
        self.events.append(payload)

    def notify_available(self, queues: Iterable[str]) -> None:
        """One event per queue that got available jobs, not one per row (as on PostgreSQL)."""
        for queue in sorted(set(queues)):
            self.notify(f"available:{queue}")

    def notify_finished(self, ids: Sequence[int]) -> None:
        if ids:
            text = ",".join(map(str, ids))
            self.notify("finished:" + ("*" if len(text) > 7000 else text))

    def prune_events(self) -> None:
        """Delete the events older than :data:`EVENT_RETENTION`: the table stays small."""
        self.execute("prune_events", {"before": self.now - round(EVENT_RETENTION * 1_000_000)})


class SqliteConnections:
    """The two connections of one driver and the transactions its calls run in;
    :class:`SqliteDriver` adds the statements. Errors leave as :class:`DatabaseError`,
    :class:`SchemaNotReady` or :class:`ConfigurationError`, never sqlite3's."""

    def __init__(self, path: str, *, schema: str, busy_timeout: float, synchronous: str = "full") -> None:
        check_sqlite_version()
        self.schema = check_schema_name(schema)
        self.path = os.path.abspath(path)
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._key = (os.path.realpath(self.path), schema)
        self._q, self._names = compose(schema)
        self._q.update(compose_dashboard(self._names))
        self._open_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer_lock = threading.Lock()
        self._reader_lock = threading.Lock()
        self._schema_ready = False
        #: Called after each database call: None on success, else the error.
        self._observers = Observers()

    def _where(self) -> str:
        return f"schema {self.schema!r} of the SQLite file {self.path}"

    def _translate(self, exc: sqlite3.Error) -> Exception:
        """Turn an sqlite3 error into ours, once, at the boundary."""
        message = one_line(str(exc)) or type(exc).__name__
        if "no such table" in message:
            return SchemaNotReady(
                f"the nursery-worker tables of schema {self.schema!r} are missing in {self.path}: they are created "
                "on first use; run `nursery-worker migrate` (or `await app.migrate()`) to create them again"
            )
        if "database is locked" in message or "database is busy" in message:
            return DatabaseError(
                f"the SQLite file {self.path} stayed locked by another connection for over {self._busy_timeout:g}s "
                f"(busy_timeout): {message}"
            )
        error = DatabaseError(f"SQLite error on {self.path}: {message}")
        # Only a statement refused for what it is cannot succeed when tried again; a file that
        # cannot be opened or written now (a volume not mounted yet, permissions) may be later.
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
            error.transient = False
        return error

    def _connect(self) -> sqlite3.Connection:
        """A new connection in WAL mode, with the busy timeout; the caller owns it."""
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            problem = one_line(str(exc))
            raise DatabaseError(
                f"cannot open the SQLite file {self.path}: {problem} (does its directory exist, and is it writable?)"
            ) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = self._use_wal(conn)
            if str(mode).lower() != "wal":
                logger.warning(
                    "SQLite file %s cannot use WAL mode (journal_mode=%s): readers and the writer will block "
                    "each other",
                    self.path,
                    mode,
                )
            conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            conn.execute("SELECT json('[]')")
        except sqlite3.Error as exc:
            conn.close()
            if "no such function: json" in str(exc):
                raise ConfigurationError(
                    f"this Python's SQLite {sqlite3.sqlite_version} lacks the JSON functions the embedded engine "
                    "needs: use a Python build whose SQLite has JSON1, or PostgreSQL"
                ) from None
            raise self._translate(exc) from None
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> str:
        """Switch a new file to WAL (a file keeps it); the switch needs the file to itself for a
        moment, and SQLite may answer "locked" at once instead of waiting for the busy timeout when
        another process opens the same new file at that instant, so try again until the timeout."""
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        if mode.lower() == "wal":
            return mode
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _connections(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The writer and the reader, opened (and the schema created or upgraded) on first use."""
        writer, reader = self._writer, self._reader
        if writer is not None and reader is not None and self._schema_ready:
            return writer, reader
        with self._open_lock:
            if self._writer is None:
                self._writer = self._connect()
            if self._reader is None:
                self._reader = self._connect()
                self._reader.execute("PRAGMA query_only = 1")
            if not self._schema_ready:
                # A read first: the write lock (which a long transaction of another connection may
                # hold) is only needed when the tables are missing or older.
                with self._reader_lock:
                    current = self._current_on(self._reader)
                if not current:
                    with self._writer_lock:
                        self._migrate_on(self._writer)
                self._schema_ready = True
            return self._writer, self._reader

    def _run(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        """Run *fn* in this (worker) thread: a write in one ``BEGIN IMMEDIATE`` transaction."""
        writer, reader = self._connections()
        conn, lock = (writer, self._writer_lock) if write else (reader, self._reader_lock)
        tx = Tx(conn, self._q)
        try:
            with lock:
                if not write:
                    return fn(tx)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(tx)
                    if tx.events:
                        # Each write that notifies also drops old notifications: the table stays
                        # small even when only producers run (the promoter does it too).
                        tx.prune_events()
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        if tx.events:
            poke(self._key)
        return result

    async def _hop(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        # Never abandoned on cancellation: a claim whose result was thrown away would leave jobs
        # executing under a live worker. Calls are short, and busy_timeout bounds a lock wait.
        return await self._observers.call(lambda: anyio.to_thread.run_sync(lambda: self._run(fn, write=write)))

    def observe(self, callback: Callable[[Exception | None], None]) -> Callable[[], None]:
        return self._observers.add(callback)

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._connections)

    def open_sync(self) -> None:
        self._connections()

    def close_sync(self) -> None:
        with self._open_lock:
            with self._writer_lock:
                writer, self._writer = self._writer, None
            with self._reader_lock:
                reader, self._reader = self._reader, None
            self._schema_ready = False
        for conn in (writer, reader):
            if conn is not None:
                conn.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close_sync)

    # --- schema -------------------------------------------------------------------------------

    def _apply_migrations(self, conn: sqlite3.Connection) -> list[int]:
        """Apply the pending migrations on *conn*, inside the write transaction it is in."""
        applied_now: list[int] = []
        migrations = self._names["migrations"]
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {migrations} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at INTEGER NOT NULL)"
        )
        applied = (int(r[0]) for r in conn.execute(f"SELECT version FROM {migrations}"))
        for version, filename, text in _MIGRATIONS.pending(applied, where=self._where()):
            for statement in statements(text.replace("{p}", f"{self.schema}_")):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {migrations} (version, name, applied_at) VALUES (?, ?, {NOW_SQL})",
                (version, filename),
            )
            applied_now.append(version)
        return applied_now

    def pending_migrations_sync(self) -> list[PendingMigration]:
        """The migrations the first use would apply, in order; a missing file is not created."""
        applied: list[int] = []
        if os.path.exists(self.path):
            conn = self._connect()
            try:
                applied = [int(r[0]) for r in conn.execute(f"SELECT version FROM {self._names['migrations']}")]
            except sqlite3.OperationalError:
                applied = []  # no migrations table yet
            finally:
                conn.close()
        return [
            PendingMigration(version=version, name=name, sql=text.replace("{p}", f"{self.schema}_"))
            for version, name, text in _MIGRATIONS.pending(applied, where=self._where())
        ]

    def _migrate_on(self, conn: sqlite3.Connection) -> list[int]:
        """Apply the pending migrations in one ``BEGIN IMMEDIATE`` transaction (so concurrent
        processes take turns and the second finds nothing to do)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                applied_now = self._apply_migrations(conn)
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        if applied_now:
            logger.info(
                "created the nursery-worker tables of schema %r in %s (SQLite schema version %d)",
                self.schema,
                self.path,
                SCHEMA_VERSION,
            )
        return applied_now

    def _current_on(self, conn: sqlite3.Connection) -> bool:
        """Whether *conn*'s file has this schema's tables at this code's version."""
        try:
            row = conn.execute(self._q["version"]).fetchone()
        except sqlite3.OperationalError:
            return False  # no migrations table yet
        return bool(row is not None and row[0] == SCHEMA_VERSION and row[1] == MIGRATION_COUNT)

    # --- the caller's own connection (``connection=``) -----------------------------------------

    def _check_connection(self, connection: object) -> sqlite3.Connection:
        """Accept a ``sqlite3.Connection`` to this very file; refuse anything else, naming why."""
        if type(connection).__module__.split(".")[0] == "psycopg":
            raise ConfigurationError(
                "connection= is a psycopg connection, but this app uses the embedded SQLite engine "
                f"({self.path}): enqueueing inside a PostgreSQL transaction needs the PostgreSQL engine "
                "(App(dsn='postgresql://...') or NURSERY_WORKER_DSN). With SQLite, pass a sqlite3.Connection "
                "to the same file instead"
            )
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(
                f"connection= must be a sqlite3.Connection to {self.path} with the embedded engine, "
                f"got {type(connection).__name__}"
            )
        try:
            files = [row[2] for row in connection.execute("PRAGMA database_list") if row[1] == "main"]
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        main = files[0] if files else ""
        if not main or not _same_file(main, self.path):
            raise ConfigurationError(
                f"connection= is a sqlite3.Connection to {main or 'an in-memory database'!r}, not to this app's "
                f"file {self.path}: a job can only join a transaction on the file that holds the jobs"
            )
        return connection

    def _on_user_connection(self, connection: object, fn: Callable[[Tx], T]) -> T:
        """Run *fn* (an insert) in the caller's transaction on their own connection (their commit or
        rollback decides).

        A connection outside a transaction gets one: ``BEGIN IMMEDIATE`` left open for the caller to
        commit (as sqlite3 itself would begin one before an INSERT), or, in autocommit mode, committed
        here. A savepoint makes the insert all or nothing within the caller's transaction. Nothing
        here uses the driver's own connections: the caller's transaction may hold the write lock
        they would wait for. Missing tables are created in the caller's transaction.
        """
        conn = self._check_connection(connection)
        autocommit = getattr(conn, "autocommit", None) is True or conn.isolation_level is None
        tx = Tx(conn, self._q)
        try:
            own = not conn.in_transaction
            if own:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("SAVEPOINT nursery_worker_insert")
            try:
                if not self._current_on(conn):
                    self._apply_migrations(conn)
                result = fn(tx)
            except BaseException:
                if own:  # the transaction is ours alone: nothing of the caller's is in it
                    rollback(conn)
                else:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK TO nursery_worker_insert")
                        conn.execute("RELEASE nursery_worker_insert")
                raise
            conn.execute("RELEASE nursery_worker_insert")
            if own and autocommit:
                conn.execute("COMMIT")
                poke(self._key)
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        return result


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back after an error; a failure to do so must not hide the error being raised."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def statements(script: str) -> list[str]:
    """Split a migration script into statements (``;`` at the end of a line; ``--`` comments dropped)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    out: list[str] = []
    current: list[str] = []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip()
            if statement.strip(";").strip():
                out.append(statement)
            current = []
    return out
