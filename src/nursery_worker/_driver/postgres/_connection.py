"""The PostgreSQL engine's connections: the pool, the three ways a statement reaches it, and the
translation of psycopg's errors into ours.

psycopg's async API runs only on asyncio, so every statement runs on a *sync* psycopg connection
from a ``psycopg_pool.ConnectionPool``. Each call is a single autocommit statement that does a
whole batch. The hot ones (a one-job or small insert, the claims, the batched completion, reading a
job) run from the event loop itself (:meth:`PostgresConnections._direct`): psycopg's execution
generator driven by ``anyio.wait_readable``/``wait_writable`` on an idle pooled connection, trio
and asyncio alike. Everything else, and the hot statements when no pooled connection is idle,
takes one ``anyio.to_thread.run_sync`` hop per call (:meth:`PostgresConnections._hop`). Measured
in ``docs/database-layer.md`` and ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import json
import select
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.adapt import Buffer, Loader
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.generators import execute as _execute
from psycopg.waiting import Ready, Wait

from ..._dsn import redact
from ..._errors import ConfigurationError, DatabaseError, SchemaNotReady
from .._common import DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT, Observers, one_line

T = TypeVar("T")


def _conninfo(dsn: str, connect_timeout: float) -> str:
    """Add our connection defaults to *dsn* without overriding anything the user set."""
    problem = None
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        problem = _hide_dsn_fragments(_one_line(str(exc)), dsn)
    if problem is not None:
        # Raised outside the except block: psycopg's message may quote the DSN, password and all,
        # and must not ride along as __context__.
        raise ConfigurationError(
            f"invalid DSN {redact(dsn)!r}: {problem}; use 'postgresql://user:password@host:5432/db'"
        )
    defaults = {
        "connect_timeout": str(max(2, round(connect_timeout))),
        "application_name": "nursery-worker",
        # A silently dropped TCP path must surface as an error, not a hang.
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    return make_conninfo(dsn, **{k: v for k, v in defaults.items() if k not in params})


#: SQLSTATE classes of a statement refused for what it holds: trying it again cannot succeed.
#: Cardinality (21), data (22: a bad value, a timestamp out of range), integrity (23), a trigger's
#: refusal (27, P0), routines (2F, 38, 39), syntax and access (42), check options (44), and
#: program limits (54: a string over jsonb's 256 MB). psycopg files class 54 under
#: OperationalError, next to a dropped connection: its class is what tells them apart.
_REFUSED_CLASSES = frozenset({"21", "22", "23", "27", "2F", "38", "39", "42", "44", "54", "P0"})


def _transient(exc: BaseException) -> bool:
    """Whether the same statement may succeed later (a connection, an outage, a lock, a shutdown)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if not sqlstate:  # raised by psycopg itself: a lost connection, or a parameter it cannot send
        return not isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError))
    # A missing privilege may be granted while the worker retries.
    return sqlstate[:2] not in _REFUSED_CLASSES or sqlstate == "42501"


#: libpq's connection options: a name libpq quotes in a message is never a secret.
_OPTION_NAMES = frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())


def _hide_dsn_fragments(message: str, dsn: str) -> str:
    """libpq quotes the piece of a DSN it could not read (``missing "=" after "..."``, ``invalid
    percent-encoded token: "..."``), which may be a piece of the password: hide each quoted piece
    of *dsn* that its redaction hides, keep the others (a host, an option's name)."""
    redacted = redact(dsn)
    parts = message.split('"')
    for n in range(1, len(parts), 2):
        piece = parts[n]
        if piece and piece not in _OPTION_NAMES and piece in dsn and piece not in redacted:
            parts[n] = "***"
    return '"'.join(parts)


def _one_line(message: str) -> str:
    """libpq's messages span lines (a hint on the second); errors here are one redacted line."""
    return one_line(redact(message))


def _milliseconds(seconds: float) -> int:
    """*seconds* as the whole milliseconds a PostgreSQL timeout takes (at least 1 unless 0: off)."""
    return 0 if seconds <= 0 else max(1, round(seconds * 1000))


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK
_COMMAND_OK = psycopg.pq.ExecStatus.COMMAND_OK
#: How long the event loop may wait for a pooled connection that was idle a moment before.
_DIRECT_TAKE_TIMEOUT = 0.005
#: psycopg's execution generator, which its own sync and async cursors drive (absent: thread hops).
_HAS_EXECUTE_GEN = hasattr(psycopg.Cursor, "_execute_gen")


async def _drive(gen: Any, fileno: int) -> Any:
    """Run a psycopg execution generator to its end, waiting for the socket on the event loop."""
    try:
        state = next(gen)
        while True:
            if state == Wait.R:
                await anyio.wait_readable(fileno)
                ready = Ready.R
            else:
                await anyio.wait_writable(fileno)
                ready = Ready.W
                if state == Wait.RW:
                    readable, _, _ = select.select([fileno], [], [], 0)
                    if readable:
                        ready = Ready.RW
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value


_decode_json = json.JSONDecoder().decode


class _JsonbLoader(Loader):
    """``jsonb`` as Python, like psycopg's own loader, without its per-value detours.

    Every claimed job has two jsonb columns (its arguments, and its errors: ``[]`` unless an
    attempt failed); psycopg's loader hands bytes to ``json.loads``, which first guesses their
    encoding. The server sends UTF-8 text (the client encoding) and an empty list is common.
    """

    def load(self, data: Buffer) -> Any:
        if data == b"[]":
            return []
        return _decode_json(bytes(data).decode())


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Set up a new pooled connection: the lean ``jsonb`` loader."""
    conn.adapters.register_loader("jsonb", _JsonbLoader)


def _give_back(pool: psycopg_pool.ConnectionPool, conn: psycopg.Connection[Any]) -> None:
    """Return *conn*, taken for a statement run from the event loop, to *pool*."""
    if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
        # Only an exception out of the shielded wait (KeyboardInterrupt) leaves a statement in
        # flight: the connection cannot be reused, so the pool gets it back closed.
        conn.close()
    pool.putconn(conn)


class PostgresConnections:
    """The pool of one driver and the ways its statements run; :class:`PostgresDriver` adds the
    statements. Errors leave as :class:`DatabaseError` or :class:`SchemaNotReady`, never psycopg's."""

    #: Whether the hot statements run from the event loop (see :meth:`_direct`); off: thread hops.
    direct: bool = _HAS_EXECUTE_GEN

    def __init__(
        self, dsn: str, *, schema: str, pool_min_size: int, pool_max_size: int, connect_timeout: float
    ) -> None:
        self.schema = schema
        self.channel = f"{schema}_events"
        self._dsn_redacted = redact(dsn)
        self._conninfo = _conninfo(dsn, connect_timeout)
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._connect_timeout = connect_timeout
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        #: ``idle_in_transaction_session_timeout`` of every session we open, in milliseconds (0: off).
        self._idle_timeout_ms = _milliseconds(DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT)
        #: Called after each database call made through the pool: None on success, else the error.
        self._observers = Observers()
        #: The pooled connections on which :meth:`_direct_prepared` prepared its statements.
        self._prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = weakref.WeakKeyDictionary()

    def _translate(self, exc: BaseException) -> Exception:
        """Turn a psycopg error into ours, once, at the boundary; never leak a password."""
        message = _one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
            return SchemaNotReady(
                f"the nursery-worker tables are missing in schema {self.schema!r} of {self._dsn_redacted}: "
                "run `nursery-worker migrate` (or `await app.migrate()`) first"
            )
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return DatabaseError(f"no database connection to {self._dsn_redacted} became free in time: {message}")
        error = DatabaseError(f"database error on {self._dsn_redacted}: {message}")
        error.transient = _transient(exc)
        return error

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            problem = _hide_dsn_fragments(_one_line(str(exc)), self._conninfo)
        else:
            try:
                self._configure_session(conn)
            except psycopg.Error as exc:
                conn.close()
                raise self._translate(exc) from None
            return conn
        raise DatabaseError(f"cannot connect to {self._dsn_redacted}: {problem}")

    def _configure_session(self, conn: psycopg.Connection[Any]) -> None:
        """Set our session settings on a new connection (the pool's ``configure`` callback too).

        A SET rather than libpq's ``options`` startup parameter, which connection poolers such as
        PgBouncer refuse. A connection the caller passes in (``defer(connection=...)``) never
        comes here: its session is the caller's.
        """
        ms = self._idle_timeout_ms
        conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [f"{ms}ms"])
        conn._nw_idle_timeout_ms = ms  # type: ignore[attr-defined]

    def _configure_pooled(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's ``configure`` callback: the lean ``jsonb`` loader, then our session settings."""
        _configure(conn)
        self._configure_session(conn)

    def _check_session(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's ``check`` callback, as a connection leaves it: a session configured before the
        settings changed (pooled, or being opened at that moment) is brought up to date first."""
        if getattr(conn, "_nw_idle_timeout_ms", None) != self._idle_timeout_ms:
            self._configure_session(conn)

    def set_idle_in_transaction_timeout(self, seconds: float) -> None:
        # Each pooled session picks the new value up the next time it is taken (_check_session).
        self._idle_timeout_ms = _milliseconds(seconds)

    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        pool = self._pool
        if pool is not None:
            return pool
        with self._pool_lock:
            if self._pool is None:
                # One direct connection first: it fails within connect_timeout with libpq's own
                # reason (refused, unknown database, bad password), where a pool would only time out.
                self._connect().close()
                pool = psycopg_pool.ConnectionPool(
                    self._conninfo,
                    min_size=self._pool_min_size,
                    max_size=self._pool_max_size,
                    kwargs={"autocommit": True},
                    configure=self._configure_pooled,
                    check=self._check_session,
                    open=False,
                    name=f"nursery-worker:{self.schema}",
                    timeout=max(self._connect_timeout, 1.0),
                    reconnect_timeout=float("inf"),
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run *fn* on a pooled connection in this (worker) thread; translate errors."""
        try:
            with self._get_pool().connection() as conn:
                return fn(conn)
        except psycopg.OperationalError as exc:
            # A server restart leaves every idle pooled connection dead; drop them now rather than
            # failing once per connection. check() tests idle connections only.
            pool = self._pool
            if pool is not None and not isinstance(exc, psycopg_pool.PoolTimeout):
                with contextlib.suppress(psycopg.Error):
                    pool.check()
            raise self._translate(exc) from None
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def _hop(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run *fn* on a pooled connection in a worker thread (one hop)."""
        return await self._observers.call(lambda: anyio.to_thread.run_sync(self._run, fn))

    async def _direct(self, query: bytes, params: Mapping[str, Any]) -> list[Any]:
        """Run one small autocommit statement from the event loop, with no thread hop; its rows.

        The hot statements (a one-job insert, the claim, the batched completion) take a pooled
        connection that is idle right now and drive psycopg's own execution generator on it, waiting
        for the socket with ``anyio.wait_readable``/``wait_writable``: trio and asyncio alike. The
        statement is shielded, as a thread hop is (a cancelled caller learns of it when the
        statement is over, so its outcome is never in doubt). When no pooled connection is idle, or
        this psycopg lacks the generator, it falls back to :meth:`_hop`.
        """
        conn = self._take_idle()
        if conn is None:
            return await self._hop(lambda c: c.execute(query, params).fetchall())
        pool = self._pool
        assert pool is not None
        error: Exception | None = None
        lost = False
        rows: list[Any] = []
        try:
            cur = conn.cursor()
            with anyio.CancelScope(shield=True):
                await _drive(cur._execute_gen(query, params), conn.pgconn.socket)
            result = cur.pgresult
            rows = cur.fetchall() if result is not None and result.status == _TUPLES_OK else []
        except psycopg.Error as exc:
            error = self._translate(exc)
            # A refused statement (a program limit is an OperationalError too) leaves the
            # connection fine; only a broken one means the others may be dead as well.
            lost = conn.broken
            if not lost:
                error.__cause__ = exc
        finally:
            _give_back(pool, conn)
        await self._settle(pool, lost=lost, error=error)
        return rows

    async def _settle(self, pool: psycopg_pool.ConnectionPool, *, lost: bool, error: Exception | None) -> None:
        """After a statement run from the event loop: drop dead pooled connections if this one was
        lost, tell the observers, and raise *error* if there is one."""
        if lost:
            # A server restart leaves every idle pooled connection dead: drop them now, as _run does.
            with contextlib.suppress(psycopg.Error):
                await anyio.to_thread.run_sync(pool.check)
        if self._observers:
            self._observers.notify(error)
        if error is not None:
            raise error

    def _take_idle(self) -> psycopg.Connection[Any] | None:
        """A pooled connection that is idle right now, for a statement run from the event loop; or None."""
        pool = self._pool
        if not self.direct or pool is None or pool.get_stats().get("pool_available", 0) <= 0:
            return None
        try:
            # Idle a moment ago: getconn() takes it at once. Only a race with another thread can
            # make it wait, and then for at most these few milliseconds.
            return pool.getconn(timeout=_DIRECT_TAKE_TIMEOUT)
        except psycopg_pool.PoolTimeout:
            return None

    async def _direct_prepared(
        self, name: bytes, query: bytes, types: Sequence[int], values: Sequence[bytes | None]
    ) -> psycopg.pq.abc.PGresult | None:
        """Run one autocommit statement as a prepared statement of our own, from the event loop.

        The single ``defer()``: libpq's ``send_query_prepared`` with parameters already in text
        form and binary results, with none of a cursor's per-call work (converting the query,
        dumping each parameter, the prepared-statement bookkeeping, loading each value). The
        statement is prepared on a connection the first time it runs there. Shielded, as
        :meth:`_direct` is.

        Returns:
            The result (binary values), or None when no pooled connection is idle or its client
            encoding is not UTF-8 (the caller takes its usual path).
        """
        conn = self._take_idle()
        if conn is None:
            return None
        pool = self._pool
        assert pool is not None
        if conn.pgconn.parameter_status(b"client_encoding") != b"UTF8":
            pool.putconn(conn)  # the values are sent as UTF-8: another client encoding takes the cursor
            return None
        error: Exception | None = None
        lost = False
        result: psycopg.pq.abc.PGresult | None = None
        try:
            pgconn = conn.pgconn
            prepared = self._prepared.setdefault(conn, set())
            with anyio.CancelScope(shield=True):
                for again in (True, False):
                    if name not in prepared:
                        pgconn.send_prepare(name, query, param_types=types)
                        done = (await _drive(_execute(pgconn), pgconn.socket))[-1]
                        if done.status != _COMMAND_OK:
                            raise psycopg.errors.error_from_result(done, encoding=conn.info.encoding)
                        prepared.add(name)
                    pgconn.send_query_prepared(name, values, result_format=psycopg.pq.Format.BINARY)
                    done = (await _drive(_execute(pgconn), pgconn.socket))[-1]
                    if not (again and done.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"):
                        break
                    # Our statement is gone from the server (DEALLOCATE or DISCARD ALL by someone
                    # else): nothing ran, so prepare it again and send it once more.
                    prepared.discard(name)
            if done.status != _TUPLES_OK:
                raise psycopg.errors.error_from_result(done, encoding=conn.info.encoding)
            result = done
        except psycopg.Error as exc:
            error = self._translate(exc)
            lost = conn.broken
            if not lost:
                error.__cause__ = exc
        finally:
            _give_back(pool, conn)
        await self._settle(pool, lost=lost, error=error)
        return result

    def observe(self, callback: Callable[[Exception | None], None]) -> Callable[[], None]:
        return self._observers.add(callback)

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._get_pool)

    def open_sync(self) -> None:
        self._get_pool()

    def close_sync(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close_sync)
