"""App: configuration, the engine's lifecycle, the task/periodic/hook/middleware registries and
enqueueing. The inspect and admin operations live in ``_admin.py``; ``App``'s methods of those
names delegate to it."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import keyword
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, final, overload

import anyio
import anyio.to_thread
import attrs

from ._admin import DEFAULT_CHUNK, UNCHANGED, Admin, Progress, Unchanged
from ._context import CallNext, JobContext, Middleware
from ._driver import Driver, create_driver
from ._dsn import ENV_VAR, redact, resolve_dsn
from ._durable import check_event_key, encode_payload
from ._errors import ConfigurationError, TaskNotFound
from ._flow import (
    BreakerInfo,
    CircuitBreaker,
    LimitBy,
    check_depends_on,
    check_limit_by,
    check_max_concurrency,
    parse_rate_limit,
)
from ._jobfilter import BulkResult, JobFilter
from ._json import DEFAULT_MAX_ARGS_BYTES
from ._models import CancelResult, Job, JobSpec, JobStep, PendingMigration, QueueInfo
from ._periodic import DEFAULT_CATCH_UP, PeriodicInfo, Schedule, add_schedule, build_schedule
from ._retry import RetryPolicy, resolve_retry
from ._state import JobState
from ._task import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    Task,
    UniqueKey,
    build_spec,
    check_max_attempts,
    check_priority,
    check_queue,
    check_spec_storable,
    check_task_name,
    check_timeout,
    check_unique,
)
from ._tracing import defer_span

#: Where the schema comes from when neither ``App(schema=...)`` nor ``configure_database`` gives one.
SCHEMA_ENV_VAR = "NURSERY_WORKER_SCHEMA"
DEFAULT_SCHEMA = "nursery_worker"
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Hook = Callable[[], Awaitable[None]]


def _running_loop() -> str | None:
    """The event loop running in this thread ("asyncio" or "trio"), or None."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")  # imported by whoever runs trio; never imported here
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return None


def _blocking(fn: Callable[..., Awaitable[R]], *args: Any) -> R:
    """Run ``fn(*args)`` on a new event loop: the ``*_sync`` twins of the admin operations.

    Raises:
        RuntimeError: called from inside an event loop (await the async method there instead).
    """
    library = _running_loop()
    if library is None:
        return anyio.run(fn, *args)
    raise RuntimeError(
        f"a *_sync method was called inside a running {library} event loop, which it would block; await the "
        "async method of the same name instead"
    )


def _module_name(fn: Callable[..., Any]) -> str:
    """The importable module name of *fn*, which a worker that imports it finds the same task under.

    A function of the program's main module has ``__module__ == "__main__"``. Run with
    ``python -m pkg.mod``, the module's spec names it ``pkg.mod``. Run as ``python path/script.py``,
    its name is the file's stem, prefixed by the packages (directories with ``__init__.py``) that
    hold it: ``script`` or ``pkg.script``, what ``import`` calls it. Without a file (``python -c``,
    a REPL, a notebook) nothing can import it, so only a worker in the same process runs its jobs,
    and the name stays ``__main__``.

    Raises:
        ConfigurationError: the script's file name is not a module name (``my-jobs.py``); the
            message asks for ``@app.task(name=...)``.
    """
    module = fn.__module__
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return str(spec.name)
    file = getattr(main, "__file__", None)
    if not isinstance(file, str) or not file:
        return module
    path = Path(file).resolve()
    if path.suffix != ".py" or not path.stem.isidentifier() or keyword.iskeyword(path.stem):
        raise ConfigurationError(
            f"@app.task on {fn.__qualname__!r}: it is defined in the script {file!r}, which a worker cannot "
            f"import ({path.name!r} is not a module name), so its jobs would never run there; pass "
            f"@app.task(name=...), for example name={fn.__qualname__!r}, so the script and the worker agree on "
            "the name, or rename the file to a valid module name"
        )
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


@final
class _Loose:
    """A type that no annotation but ``Any`` and ``object`` accepts (never instantiated).

    The first overloads of ``App.task`` match a function whose first parameter takes it, which a
    checker would otherwise take for the ``JobContext`` and leave out of ``defer``'s arguments:
    such a task is a ``Task[..., R]``, its arguments unchecked rather than wrongly refused.
    """


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns: it turns a function into a :class:`Task`."""

    @overload
    def __call__(self, func: Callable[Concatenate[_Loose, P], R], /) -> Task[..., R]: ...

    @overload
    def __call__(self, func: Callable[Concatenate[JobContext, P], R], /) -> Task[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Task[P, R]: ...


class PeriodicDecorator(Protocol):
    """What ``@app.periodic(...)`` without a task returns: it registers the schedule, returns the task."""

    def __call__(self, task: Task[P, R], /) -> Task[P, R]: ...


@attrs.frozen(kw_only=True)
class EngineSettings:
    """Where an App's engine connects and with what pool: everything its driver is made from.

    The DSN is kept as given; None stands for ``$NURSERY_WORKER_DSN``, else the embedded engine's
    file, read when the driver is made. :meth:`create_driver` is the one place a DSN is resolved.
    """

    dsn: str | None
    schema: str
    pool_min_size: int
    pool_max_size: int
    connect_timeout: float

    def create_driver(self) -> Driver:
        """Resolve the DSN and make the engine's driver (it connects on first use).

        Raises:
            ConfigurationError: the DSN or the schema name is invalid, or names no supported engine.
        """
        return create_driver(
            resolve_dsn(self.dsn),
            schema=self.schema,
            pool_min_size=self.pool_min_size,
            pool_max_size=self.pool_max_size,
            connect_timeout=self.connect_timeout,
        )


class App:
    """A nursery-worker application: where tasks are registered and jobs are enqueued.

    One ``App`` serves both producers (``defer``) and workers (``open_worker``). It connects lazily,
    on first use, and keeps a small connection pool until :meth:`aclose` (or ``async with app:``).

    Args:
        dsn: a PostgreSQL DSN (``postgresql://user:password@host:5432/db``), or
            ``sqlite:///path/to/file.sqlite3`` for the embedded engine. When None, the
            ``NURSERY_WORKER_DSN`` environment variable is read on first use, and when that is
            unset too, the embedded engine's file ``./nursery-worker.sqlite3`` is used (announced
            in one log line).
        schema: the PostgreSQL schema holding the tables, beside the application's own (with
            SQLite: the tables' prefix); when None, ``$NURSERY_WORKER_SCHEMA``, else
            ``"nursery_worker"``.
        pool_min_size: connections kept open.
        pool_max_size: the most connections this process opens (the listener has one more).
        connect_timeout: seconds before an unreachable database is reported (with SQLite: how long
            a write waits for another process's transaction, unless the DSN sets ``busy_timeout``).
        max_args_bytes: the largest encoded arguments one job may carry.
        error_cap: how many recent errors a job keeps.

    Raises:
        ConfigurationError: an option is invalid.

    Example:
        >>> app = App(dsn="postgresql://postgres@127.0.0.1/test")
        >>> @app.task(queue="emails", max_attempts=5)
        ... async def send_email(to: str) -> None: ...
        >>> job = await send_email.defer(to="ada@example.com")
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str | None = None,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        connect_timeout: float = 5.0,
        max_args_bytes: int = DEFAULT_MAX_ARGS_BYTES,
        error_cap: int = 20,
    ) -> None:
        for label, value, low in (
            ("pool_min_size", pool_min_size, 0),
            ("pool_max_size", pool_max_size, 1),
            ("max_args_bytes", max_args_bytes, 2),
            ("error_cap", error_cap, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"App({label}={value!r}): must be an int >= {low}")
        if pool_min_size > pool_max_size:
            raise ConfigurationError(f"App(pool_min_size={pool_min_size}) is above pool_max_size={pool_max_size}")
        if not isinstance(connect_timeout, (int, float)) or not connect_timeout > 0:
            raise ConfigurationError(f"App(connect_timeout={connect_timeout!r}): must be a number of seconds > 0")
        self._settings = EngineSettings(
            dsn=dsn,
            schema=schema if schema is not None else os.environ.get(SCHEMA_ENV_VAR, DEFAULT_SCHEMA),
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            connect_timeout=float(connect_timeout),
        )
        self.max_args_bytes = max_args_bytes
        self.error_cap = error_cap
        self.tasks: dict[str, Task[..., Any]] = {}
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        self.middlewares: list[Middleware] = []
        #: Periodic schedules by name (``@app.periodic``).
        self.schedules: dict[str, Schedule] = {}
        self._admin = Admin(self)
        self._driver_lock = threading.Lock()
        # Set by the first use of the driver, cleared by aclose()/close(): while it is set, a worker
        # or a query may hold the driver, so configure_database() refuses to swap it.
        self._engine_open = False
        # With a DSN given, the driver is made now: a bad DSN or schema fails here, not at first use.
        self._driver: Driver | None = None if dsn is None else self._settings.create_driver()

    def __repr__(self) -> str:
        dsn = f"${ENV_VAR}" if self._settings.dsn is None else redact(self._settings.dsn)
        return f"<App dsn={dsn!r} schema={self.schema!r} tasks={len(self.tasks)}>"

    # --- the database -------------------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The schema holding the tables (with SQLite: the tables' prefix); see :meth:`configure_database`."""
        return self._settings.schema

    @property
    def pool_min_size(self) -> int:
        """Connections kept open."""
        return self._settings.pool_min_size

    @property
    def pool_max_size(self) -> int:
        """The most connections this process opens (the listener has one more)."""
        return self._settings.pool_max_size

    @property
    def connect_timeout(self) -> float:
        """Seconds before an unreachable database is reported."""
        return self._settings.connect_timeout

    @property
    def driver(self) -> Driver:
        """The database driver (created on first use from the DSN).

        Reading it marks the engine open until :meth:`aclose` or :meth:`close`.

        Returns:
            The engine behind this app's queue operations.

        Raises:
            ConfigurationError: an invalid DSN or schema name.
        """
        driver = self._driver
        if driver is None:
            with self._driver_lock:
                if self._driver is None:
                    self._driver = self._settings.create_driver()
                driver = self._driver
        self._engine_open = True
        return driver

    def configure_database(self, *, dsn: str | None = None, schema: str | None = None) -> None:
        """Point the app at another database or schema, before its engine opens.

        For code that runs an app it did not construct: a command line's ``--dsn``, a supervised
        worker process, a test helper that gives each test its own schema. An option left None
        keeps its current value; the other options of ``App(...)`` stay as they are. The DSN and
        schema are checked now; the engine connects on first use, as usual.

        Args:
            dsn: a PostgreSQL DSN, or ``sqlite:///path`` for the embedded engine (as ``App(dsn=...)``).
            schema: the schema holding the tables (with SQLite: the tables' prefix).

        Raises:
            ConfigurationError: the engine is open (the app was used since it was made or last
                closed: a worker or a query may hold it; close it first with :meth:`aclose` or
                :meth:`close`), or the DSN or schema is invalid. The app is then unchanged.

        Example:
            >>> app.configure_database(dsn="postgresql://app@db.internal/app", schema="jobs")
        """
        with self._driver_lock:
            if self._engine_open:
                raise ConfigurationError(
                    f"configure_database(): {self!r} is in use (its engine was opened by a query, a worker or a "
                    "migration since it was made or last closed); close it first: await app.aclose() or app.close()"
                )
            settings = attrs.evolve(
                self._settings,
                dsn=self._settings.dsn if dsn is None else dsn,
                schema=self._settings.schema if schema is None else schema,
            )
            driver = settings.create_driver()
            previous, self._driver, self._settings = self._driver, driver, settings
        if previous is not None:
            previous.close_sync()  # never used since its last close: nothing to wait for

    async def migrate(self) -> list[int]:
        """Create or upgrade the tables in the app's schema; safe to run concurrently and repeatedly.

        Returns:
            The migration versions applied by this call ([] when already up to date).

        Raises:
            DatabaseError: the database cannot be reached.
            SchemaNotReady: the schema is newer than this version of nursery-worker.
        """
        return await self.driver.migrate()

    def migrate_sync(self) -> list[int]:
        """Like :meth:`migrate`, from synchronous code.

        Returns:
            The migration versions applied by this call ([] when already up to date).
        """
        return self.driver.migrate_sync()

    async def pending_migrations(self) -> list[PendingMigration]:
        """The migrations :meth:`migrate` would apply now, with their SQL, applying nothing.

        Returns:
            :class:`PendingMigration` records in the order they would run ([] when up to date).

        Raises:
            DatabaseError: the database cannot be reached.
            SchemaNotReady: the schema is newer than this version of nursery-worker.

        Example:
            >>> [m.name for m in await app.pending_migrations()]
            ['0009_periodic_pause.sql']
        """
        return await anyio.to_thread.run_sync(self.driver.pending_migrations_sync)

    def pending_migrations_sync(self) -> list[PendingMigration]:
        """Like :meth:`pending_migrations`, from synchronous code.

        Returns:
            The pending migrations, in order.
        """
        return self.driver.pending_migrations_sync()

    async def open(self) -> None:
        """Open the engine now rather than on first use, so a wrong DSN fails here, not at the first defer.

        PostgreSQL: one direct connection (it fails within ``connect_timeout`` with the server's
        reason), then the connection pool, which fills in the background. The embedded engine:
        the SQLite file and its connections, creating or upgrading its tables as on first use.
        Opening an open app does nothing; after :meth:`aclose` the app can be opened again.
        ``async with app:`` calls it on entry and :meth:`aclose` on exit.

        Raises:
            DatabaseError: the database cannot be reached (the message names the host, never
                the password).
            ConfigurationError: an invalid DSN or schema name.

        Example:
            >>> async with App(dsn="postgresql://app@db.internal/app") as app:
            ...     await send_email.defer(to="ada@example.com")
        """
        await self.driver.open()

    def open_sync(self) -> None:
        """Like :meth:`open`, from synchronous code (blocks the calling thread); ``with app:`` calls it.

        Raises:
            DatabaseError: the database cannot be reached.
            ConfigurationError: an invalid DSN or schema name.
        """
        self.driver.open_sync()

    async def aclose(self) -> None:
        """Close the connection pool; the app reconnects if used again."""
        if self._driver is not None:
            await self._driver.aclose()
        self._engine_open = False

    def close(self) -> None:
        """Close the connection pool, from synchronous code."""
        if self._driver is not None:
            self._driver.close_sync()
        self._engine_open = False

    async def __aenter__(self) -> App:
        """Open the engine (:meth:`open`); leaving the block closes it (:meth:`aclose`)."""
        try:
            await self.open()
        except BaseException:
            with anyio.CancelScope(shield=True):  # the block never ran: release what opened
                await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> App:
        """Open the engine (:meth:`open_sync`); leaving the block closes it (:meth:`close`)."""
        try:
            self.open_sync()
        except BaseException:
            self.close()  # the block never ran: release what opened
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- tasks --------------------------------------------------------------------------------

    # A first parameter that takes the JobContext is the worker's to pass: it is left out of P. One
    # that takes anything (Any, object) would match too: _Loose sends it to Task[..., R] first.
    @overload
    def task(self, func: Callable[Concatenate[_Loose, P], R], /) -> Task[..., R]: ...

    @overload
    def task(self, func: Callable[Concatenate[JobContext, P], R], /) -> Task[P, R]: ...

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        retry: RetryPolicy | Callable[[int], float] | float | None = None,
        unique_key: UniqueKey = None,
        unique_states: Iterable[str] | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | tuple[int, float | dt.timedelta] | None = None,
        limit_by: LimitBy = None,
        circuit_breaker: CircuitBreaker | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        retry: RetryPolicy | Callable[[int], float] | float | None = None,
        unique_key: UniqueKey = None,
        unique_states: Iterable[str] | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | tuple[int, float | dt.timedelta] | None = None,
        limit_by: LimitBy = None,
        circuit_breaker: CircuitBreaker | None = None,
    ) -> Task[Any, Any] | TaskDecorator:
        """Register a function as a task, with or without options.

        ``async def`` functions run on the worker's event loop; plain ``def`` functions run in a
        worker thread (at most ``open_worker(sync_threads=...)`` at once).

        Args:
            name: the name jobs refer to; default ``module.qualname``. A function of a script run
                as ``python script.py`` (module ``__main__``) is named by the module a worker
                imports: ``script.qualname``.
            queue: the default queue of its jobs.
            priority: the default priority (higher runs first).
            max_attempts: attempts before a failing job is discarded (>= 1).
            timeout: seconds one attempt may run; it is then cancelled and retried as a failure.
            retry: the backoff after a failure: an ``ExponentialBackoff`` (the default),
                ``LinearBackoff``, ``ConstantBackoff``, a callable ``attempt -> seconds``, or a
                constant number of seconds.
            unique_key: make its jobs unique: a string, True (the arguments are the key) or a
                function ``args -> str``; see :meth:`Task.configure`.
            unique_states: the states in which an existing job blocks a new one (default: queued
                or running).
            max_concurrency: at most this many of its jobs run at once, across every worker and
                host (per partition with ``limit_by``). Enforced where jobs are claimed; a job held
                back is not attempted and uses no attempt.
            rate_limit: at most this many starts in any sliding window: ``"100/m"``, ``"10/s"``,
                ``"5/h"``, ``"30/10s"``, or ``(count, seconds)``; across every worker and host
                (per partition with ``limit_by``).
            limit_by: partition the limits by a key from the arguments: an argument's name (for
                example ``"customer_id"``) or a function ``args -> key``; each key gets its own
                count.
            circuit_breaker: a :class:`CircuitBreaker`: after ``threshold`` consecutive failures,
                hold the task's jobs back for ``cooldown`` seconds, then run one probe.

        A parameter annotated :class:`JobContext` receives the running job's context instead of
        an argument from the job. For type checkers the task is a ``Task[P, R]`` with the
        function's parameters and return type, so ``defer``'s arguments are checked; make the
        context parameter the first one so that ``P`` leaves it out.

        Returns:
            The :class:`Task` (or a decorator that makes one).

        Raises:
            ConfigurationError: an option is invalid, the name is taken by another function, or
                the function is in a script whose file name is not a module name and has no ``name=``.
            TypeError: the target is not a function.

        Example:
            >>> @app.task(queue="emails", timeout=30)
            ... async def send_email(to: str) -> None: ...
        """

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(fn) or inspect.isclass(fn):
                raise TypeError(f"@app.task needs a function, got {fn!r}")
            if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
                raise TypeError(
                    f"@app.task: {fn!r} is a generator function; tasks must be 'async def' or 'def' functions"
                )
            task_name = name if name is not None else f"{_module_name(fn)}.{fn.__qualname__}"
            where = f"@app.task on {task_name!r}"
            key_option, states = check_unique(unique_key, unique_states, where=where)
            if limit_by is not None and max_concurrency is None and rate_limit is None:
                raise ConfigurationError(
                    f"{where}: limit_by= partitions max_concurrency= or rate_limit=; set one of them too"
                )
            if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
                raise ConfigurationError(
                    f"{where}: circuit_breaker={circuit_breaker!r} must be a "
                    "CircuitBreaker(threshold=..., cooldown=...)"
                )
            task = Task(
                self,
                fn,
                max_concurrency=check_max_concurrency(max_concurrency, where=where),
                rate_limit=parse_rate_limit(rate_limit, where=where),
                limit_by=check_limit_by(limit_by, where=where),
                circuit_breaker=circuit_breaker,
                unique_key=key_option,
                unique_states=states,
                name=check_task_name(task_name, where=where),
                queue=check_queue(queue, where=where),
                priority=check_priority(priority, where=where),
                max_attempts=check_max_attempts(max_attempts, where=where),
                timeout=check_timeout(timeout, where=where),
                backoff=resolve_retry(retry, where=where),
            )
            existing = self.tasks.get(task.name)
            if existing is not None and existing.func is not fn:
                same_source = (
                    getattr(existing.func, "__qualname__", None) == fn.__qualname__
                    and getattr(existing.func, "__module__", None) == fn.__module__
                )
                if not same_source:
                    raise ConfigurationError(
                        f"task name {task.name!r} is already registered by {existing.func!r}; pass @app.task(name=...) "
                        "to give one of them another name"
                    )
            self.tasks[task.name] = task
            return task

        if func is not None:
            return register(func)
        return register

    def queue_names(self) -> tuple[str, ...]:
        """The queues this app names: ``default``, and each queue of a registered task or periodic schedule.

        A worker started without ``queues=`` serves these.

        Returns:
            The names, sorted, ``default`` among them.

        Example:
            >>> app.queue_names()
            ('default', 'emails')
        """
        names = {"default", *(task.queue for task in self.tasks.values())}
        names.update(schedule.spec.queue for schedule in self.schedules.values())
        return tuple(sorted(names))

    def get_task(self, name: str) -> Task[..., Any]:
        """Return the registered task called *name*.

        Args:
            name: the task's registered name.

        Returns:
            The :class:`Task`.

        Raises:
            TaskNotFound: no such task is registered (the message lists the registered ones).
        """
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise TaskNotFound(f"no task named {name!r} is registered on this app (registered: {known})") from None

    # --- periodic jobs (cron); the logic is in _periodic.py -----------------------------------

    @overload
    def periodic(
        self,
        task: Task[P, R],
        /,
        *,
        cron: str,
        name: str | None = None,
        timezone: str | dt.tzinfo = "UTC",
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        catch_up: float | dt.timedelta = DEFAULT_CATCH_UP,
        tick_arg: str | None = None,
    ) -> Task[P, R]: ...

    @overload
    def periodic(
        self,
        task: str,
        /,
        *,
        cron: str,
        name: str | None = None,
        timezone: str | dt.tzinfo = "UTC",
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        catch_up: float | dt.timedelta = DEFAULT_CATCH_UP,
        tick_arg: str | None = None,
    ) -> Task[..., Any]: ...

    @overload
    def periodic(
        self,
        /,
        *,
        cron: str,
        name: str | None = None,
        timezone: str | dt.tzinfo = "UTC",
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        catch_up: float | dt.timedelta = DEFAULT_CATCH_UP,
        tick_arg: str | None = None,
    ) -> PeriodicDecorator: ...

    def periodic(
        self,
        task: Task[P, R] | str | None = None,
        /,
        *,
        cron: str,
        name: str | None = None,
        timezone: str | dt.tzinfo = "UTC",
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        catch_up: float | dt.timedelta = DEFAULT_CATCH_UP,
        tick_arg: str | None = None,
    ) -> Task[P, R] | Task[..., Any] | PeriodicDecorator:
        """Enqueue a task's job on a cron schedule, exactly once per tick however many workers run.

        Stack it above ``@app.task``, or call it with a task (or a registered task's name). Every
        worker that serves the job's queue runs a scheduler; the database lets exactly one of them
        enqueue each tick, so a tick survives the worker that would have enqueued it. The job's
        ``scheduled_at`` is the tick (until a retry reschedules it), its arguments are *args* as
        given, plus the tick itself in the parameter named by *tick_arg*. A worker that starts
        after missed ticks enqueues only the latest of them, once, if it is at most *catch_up*
        seconds old. Ticks from before the schedule first reached the database (or before its
        expression or time zone last changed) are never enqueued.

        Args:
            task: the :class:`Task` or a registered task name (omit it to decorate).
            cron: five fields ``minute hour day-of-month month day-of-week`` (``"*/5 * * * *"``),
                six with a leading seconds field (``"*/10 * * * * *"``), or ``@hourly``,
                ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``. Days and months accept names,
                ``L`` (last day), ``LW``, ``MON#2`` and ``5L``.
            name: the schedule's id, unique in the app (default: the task's name); give one to run
                the same task on several schedules.
            timezone: the IANA time zone the fields are read in (``"Europe/Paris"``; default UTC).
                See the README for what a daylight-saving change does to the ticks.
            args: the jobs' keyword arguments, checked against the task's signature now.
            queue: the jobs' queue instead of the task's.
            priority: the jobs' priority instead of the task's.
            catch_up: seconds (or a timedelta) a tick may be late and still be enqueued (default
                600); a tick missed by more is skipped, with a warning.
            tick_arg: the name of a task parameter that receives the tick, as an ISO 8601 string
                in the schedule's time zone (``"2026-11-23T06:00:00+01:00"``). It is stored in
                the job's arguments, so retries see it too (``scheduled_at`` moves on a retry). A
                unique key made from the arguments leaves it out, so it still prevents overlap.

        Returns:
            The task (so the decorator form stacks), or a decorator that takes one.

        Raises:
            ConfigurationError: an invalid or never-firing expression, an unknown time zone, args
                that do not fit the task, a bad option, or a name already registered for another
                schedule; the message names the value and the fix.
            TypeError: the decorator was put below ``@app.task`` (on a plain function).

        Example:
            >>> @app.periodic(cron="0 6 * * MON-FRI", timezone="Europe/Paris", args={"kind": "daily"})
            ... @app.task(queue="reports")
            ... async def send_report(kind: str) -> None: ...
            >>> app.periodic("cleanup.tmp", cron="@hourly")
        """

        def register(target: Task[Any, Any] | str) -> Task[Any, Any]:
            schedule = build_schedule(
                self,
                target,
                cron=cron,
                name=name,
                timezone=timezone,
                args=args,
                queue=queue,
                priority=priority,
                catch_up=catch_up,
                tick_arg=tick_arg,
            )
            add_schedule(self.schedules, schedule)
            return self.tasks[schedule.spec.task]

        if task is not None:
            return register(task)
        return register

    # --- hooks --------------------------------------------------------------------------------

    def _hook(self, hooks: list[Hook], func: Hook, kind: str) -> Hook:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@app.{kind} needs an 'async def' function taking no arguments, got {func!r}")
        hooks.append(func)
        return func

    def on_startup(self, func: Hook) -> Hook:
        """Register an ``async def`` run, in registration order, while a worker is STARTING.

        If one raises, the worker goes to ERROR, runs the shutdown hooks, and re-raises.

        Args:
            func: an ``async def`` taking no arguments.

        Returns:
            *func* itself, so this works as a decorator.

        Raises:
            TypeError: *func* is not an ``async def`` function.
        """
        return self._hook(self.startup_hooks, func, "on_startup")

    def on_shutdown(self, func: Hook) -> Hook:
        """Register an ``async def`` run, in reverse registration order, while a worker is STOPPING.

        Shutdown hooks also run when startup failed part-way, so they must tolerate a partial start.
        A failing shutdown hook is logged; the others still run.

        Args:
            func: an ``async def`` taking no arguments.

        Returns:
            *func* itself, so this works as a decorator.

        Raises:
            TypeError: *func* is not an ``async def`` function.
        """
        return self._hook(self.shutdown_hooks, func, "on_shutdown")

    # --- middleware ---------------------------------------------------------------------------

    def middleware(self, func: Middleware) -> Middleware:
        """Register an around-middleware: ``async def mw(context, call_next)``, run around each job.

        Middlewares wrap jobs in registration order (the first registered is the outermost). Each
        must ``return await call_next()`` (or another JSON result). An exception a middleware raises
        fails the job like the task's own exception; the worker goes on.

        Args:
            func: an ``async def`` taking a :class:`JobContext` and ``call_next``.

        Returns:
            *func* itself, so this works as a decorator.

        Raises:
            TypeError: *func* is not an ``async def`` function.

        Example:
            >>> @app.middleware
            ... async def log_jobs(context: JobContext, call_next: CallNext) -> Any:
            ...     log.info("start %s", context.job_id)
            ...     return await call_next()
        """
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@app.middleware needs an 'async def' taking (context, call_next), got {func!r}")
        self.middlewares.append(func)
        return func

    def before_job(self, func: Callable[[JobContext], Awaitable[None]]) -> Callable[[JobContext], Awaitable[None]]:
        """Register ``async def hook(context)``, run before each job (as a middleware, in order).

        An exception it raises fails the job, which then does not run.

        Args:
            func: an ``async def`` taking a :class:`JobContext`.

        Returns:
            *func* itself, so this works as a decorator.

        Raises:
            TypeError: *func* is not an ``async def`` function.
        """
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@app.before_job needs an 'async def' taking (context), got {func!r}")

        async def before(context: JobContext, call_next: CallNext) -> Any:
            await func(context)
            return await call_next()

        before.__qualname__ = f"before_job({getattr(func, '__qualname__', func)!s})"
        self.middlewares.append(before)
        return func

    def after_job(
        self, func: Callable[[JobContext, Any, BaseException | None], Awaitable[None]]
    ) -> Callable[[JobContext, Any, BaseException | None], Awaitable[None]]:
        """Register ``async def hook(context, result, error)``, run after each job (as a middleware).

        *error* is the exception the job raised (None if it returned); the job's outcome stays as it
        was unless the hook raises, which fails the job. It does not run for a job that was
        cancelled or released by a shutdown.

        Args:
            func: an ``async def`` taking a :class:`JobContext`, the result and the error.

        Returns:
            *func* itself, so this works as a decorator.

        Raises:
            TypeError: *func* is not an ``async def`` function.
        """
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@app.after_job needs an 'async def' taking (context, result, error), got {func!r}")

        async def after(context: JobContext, call_next: CallNext) -> Any:
            try:
                result = await call_next()
            except Exception as exc:
                await func(context, None, exc)
                raise
            await func(context, result, None)
            return result

        after.__qualname__ = f"after_job({getattr(func, '__qualname__', func)!s})"
        self.middlewares.append(after)
        return func

    # --- jobs ---------------------------------------------------------------------------------

    @staticmethod
    def _check_specs(jobs: Iterable[JobSpec]) -> list[JobSpec]:
        specs = list(jobs)
        for i, spec in enumerate(specs):
            if not isinstance(spec, JobSpec):
                raise TypeError(
                    f"defer_many: item {i} is {spec!r}; build each item with task.job(**kwargs) or "
                    "task.configure(...).job(**kwargs)"
                )
            # A spec built by hand (or evolved) was never checked by task.job(): nothing is written
            # unless every string of every spec can be stored.
            check_spec_storable(spec, item=i)
        return specs

    async def defer_many(self, jobs: Iterable[JobSpec], *, connection: Any = None) -> list[Job]:
        """Insert many jobs in one statement (one round trip), all or none.

        Args:
            jobs: items from ``task.job(**kwargs)`` or ``task.configure(...).job(**kwargs)``.
            connection: an open psycopg connection whose transaction the insert joins (with the
                embedded engine, a ``sqlite3.Connection`` to the same file).

        Returns:
            The inserted jobs, in the order given.

        Raises:
            TypeError: an item is not a JobSpec.
            ConfigurationError: a string of an item (built by hand, or changed with ``attrs.evolve``)
                cannot be stored: a NUL or a lone surrogate in its task name, queue, unique key,
                limit key or arguments, or NaN in its arguments. Nothing is written.
            DatabaseError: the database cannot be reached.

        Example:
            >>> await app.defer_many([send_email.job(to=a) for a in addresses])
        """
        with defer_span(self._check_specs(jobs)) as deferring:
            inserted = await self.driver.insert_jobs(deferring.specs, connection=connection)
            deferring.inserted(inserted)
        return inserted

    def defer_many_sync(self, jobs: Iterable[JobSpec], *, connection: Any = None) -> list[Job]:
        """Like :meth:`defer_many`, from synchronous code (blocks the calling thread).

        Args:
            jobs: items from ``task.job(**kwargs)``.
            connection: an open ``psycopg.Connection`` whose transaction the insert joins (with the
                embedded engine, a ``sqlite3.Connection`` to the same file).

        Returns:
            The inserted jobs, in the order given.

        Raises:
            TypeError, ConfigurationError, DatabaseError: as :meth:`defer_many`.
        """
        with defer_span(self._check_specs(jobs)) as deferring:
            inserted = self.driver.insert_jobs_sync(deferring.specs, connection=connection)
            deferring.inserted(inserted)
        return inserted

    # --- events (context.wait_for_event) ---------------------------------------------------

    def _event(self, key: str, payload: Any, where: str) -> tuple[str, str]:
        return check_event_key(key, where=f"{where}(key)"), encode_payload(
            payload, where=f"{where}({key!r})", max_bytes=self.max_args_bytes
        )

    async def emit(self, key: str, payload: Any = None, *, connection: Any = None) -> bool:
        """Emit event *key* with *payload*: the jobs waiting for it (``context.wait_for_event(key)``)
        run again at once and receive *payload*; a job that waits for it later receives it too.

        The first emit of a key wins: a later one changes nothing and returns False. Events are kept
        for the workers' ``event_retention`` (7 days by default).

        Args:
            key: the event's key (a non-empty str, such as ``f"payment:{order_id}"``).
            payload: its JSON payload (checked like a job's arguments, and as large at most).
            connection: an open psycopg connection whose transaction the emit joins, as ``defer``'s
                does: the event exists, and its waiters wake, only if that transaction commits
                (with the embedded engine, a ``sqlite3.Connection`` to the same file).

        Returns:
            True when this emit stored the payload; False when the key had been emitted before.

        Raises:
            ConfigurationError: *key* is empty, too long or holds a NUL character.
            TypeError: *payload* is not JSON (the message names the path).
            ValueError: *payload* is over the app's ``max_args_bytes``.
            DatabaseError: the database cannot be reached.

        Example:
            >>> await app.emit(f"payment:{order_id}", {"status": "paid", "amount": 1999})
        """
        key, payload_json = self._event(key, payload, "emit")
        return await self.driver.emit_event(key, payload_json, connection=connection)

    def emit_sync(self, key: str, payload: Any = None, *, connection: Any = None) -> bool:
        """Like :meth:`emit`, from synchronous code (blocks the calling thread).

        Args:
            key: the event's key.
            payload: its JSON payload.
            connection: an open ``psycopg.Connection`` (or ``sqlite3.Connection``) whose
                transaction the emit joins.

        Returns:
            True when this emit stored the payload; False when the key had been emitted before.

        Raises:
            ConfigurationError, TypeError, ValueError, DatabaseError: as :meth:`emit`.
        """
        key, payload_json = self._event(key, payload, "emit_sync")
        return self.driver.emit_event_sync(key, payload_json, connection=connection)

    def job_by_name(
        self,
        task: str,
        args: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        depends_on: Iterable[Job | JobSpec | int] | None = None,
    ) -> JobSpec:
        """Build a :class:`JobSpec` for a task by name, for producers that do not import the task.

        A registered task's signature and defaults apply; an unregistered name uses queue
        "default", priority 0 and 20 attempts.

        Args:
            task: the task name.
            args: its keyword arguments (JSON).
            queue: the job's queue (default: the task's, or "default").
            priority: the job's priority (default: the task's, or 0).
            max_attempts: the job's attempts (default: the task's, or 20).
            depends_on: jobs, job ids or specs of the same ``defer_many`` call this job waits for.

        Returns:
            A :class:`JobSpec` for :meth:`defer_many`.

        Raises:
            ConfigurationError: an option or the name is invalid.
            TypeError: the arguments are not JSON or do not fit a registered task.
        """
        where = f"job_by_name({task!r})"
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise TypeError(f"{where}: args must be a dict of keyword arguments, got {type(args).__name__}")
        known = self.tasks.get(task)
        if known is not None:
            return known.configure(
                queue=queue, priority=priority, max_attempts=max_attempts, depends_on=depends_on
            ).job(**args)
        spec = build_spec(
            task=check_task_name(task, where=where),
            kwargs=args,
            max_bytes=self.max_args_bytes,
            queue=check_queue(DEFAULT_QUEUE if queue is None else queue, where=where),
            priority=check_priority(DEFAULT_PRIORITY if priority is None else priority, where=where),
            max_attempts=check_max_attempts(
                DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts, where=where
            ),
        )
        if depends_on is not None:
            spec = attrs.evolve(spec, depends_on=check_depends_on(depends_on, where=where))
        return spec

    # --- inspect and admin ----------------------------------------------------------------------
    # One-line delegations to _admin.Admin, which the CLI and the dashboard call directly; the
    # user-facing documentation stays here, on the pinned API.

    async def get_job(self, job_id: int) -> Job:
        """Return a fresh snapshot of job *job_id*.

        Args:
            job_id: the job's id.

        Returns:
            The :class:`Job` as the database holds it now.

        Raises:
            JobNotFound: no such job.
            TypeError: the id is not an int.
        """
        return await self._admin.get_job(job_id)

    async def get_steps(self, job_id: int, *, limit: int | None = None) -> list[JobStep]:
        """Return job *job_id*'s durable steps (``context.step``, ``sleep``, ``wait_for_event``), in order.

        Args:
            job_id: the job's id.
            limit: the first *limit* steps only (None: every one).

        Returns:
            Each :class:`JobStep` with its state, result or error, duration and attempt ([] when the
            job recorded none).

        Raises:
            JobNotFound: no such job.
            TypeError: the id is not an int.
            ConfigurationError: *limit* is below 1.
        """
        return await self._admin.get_steps(job_id, limit=limit)

    async def cancel(self, job_id: int) -> CancelResult:
        """Cancel a job.

        A scheduled, available or retryable job becomes ``cancelled`` at once. An executing job
        gets a durable cancel request: the worker running it is notified (and polls the request, so
        a lost notification loses nothing), cancels the job's scope, and records it ``cancelled``;
        it is not retried. A job that ignores cancellation (a plain ``def`` in a thread, a blocking
        call) is recorded as cancelled and abandoned. Cancelling a finished job changes nothing.

        Args:
            job_id: the job's id.

        Returns:
            A :class:`CancelResult`: ``status`` is ``"cancelled"``, ``"requested"`` or
            ``"already_finished"``, and ``job`` the job after the call.

        Raises:
            JobNotFound: no such job.
            TypeError: the id is not an int.

        Example:
            >>> result = await app.cancel(job.id)
            >>> print(result.message)
        """
        return await self._admin.cancel(job_id)

    async def retry(self, job_id: int) -> Job:
        """Put a discarded or cancelled job back in its queue (the dead-letter path).

        The job becomes available now, keeping its errors; if it had used all its attempts it gets
        one more.

        Args:
            job_id: the job's id.

        Returns:
            The job, available again.

        Raises:
            JobNotFound: no such job.
            JobStateError: the job is not discarded or cancelled (the message names its state), or
                a unique job with the same key is queued or running.
            TypeError: the id is not an int.
        """
        return await self._admin.retry(job_id)

    async def list_jobs(
        self,
        *,
        state: JobState | str | Iterable[JobState | str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Job]:
        """List jobs, newest first, filtered by every option given.

        Args:
            state: a state or several (``"discarded"``, ``[JobState.RETRYABLE, ...]``).
            queue: only this queue.
            task: only this task name.
            limit: at most this many (1-10000).
            before_id: only jobs with a smaller id (to page: pass the last id of the previous page).

        Returns:
            The jobs, newest (highest id) first.

        Raises:
            ConfigurationError: an unknown state, or a bad limit, queue or task name.
        """
        return await self._admin.list_jobs(state=state, queue=queue, task=task, limit=limit, before_id=before_id)

    async def prune(
        self,
        *,
        older_than: float | dt.timedelta,
        states: str | Iterable[str] = ("completed", "discarded", "cancelled"),
    ) -> int:
        """Delete finished jobs (and their results) older than *older_than*, in bounded batches.

        Workers prune by themselves (``open_worker(retention=...)``); this is for scripts and the CLI.

        Args:
            older_than: seconds (or a timedelta) since the job finished.
            states: which final states to prune.

        Returns:
            How many jobs were deleted.

        Raises:
            ConfigurationError: a negative age or a state that is not a final state.
        """
        return await self._admin.prune(older_than=older_than, states=states)

    async def count_prunable(
        self,
        *,
        older_than: float | dt.timedelta,
        states: str | Iterable[str] = ("completed", "discarded", "cancelled"),
    ) -> dict[str, int]:
        """How many jobs :meth:`prune` with the same arguments would delete now, by state (a dry run).

        Args:
            older_than: seconds (or a timedelta) since the job finished.
            states: which final states to count.

        Returns:
            The count for each state asked for, in the order given.

        Raises:
            ConfigurationError: a negative age or a state that is not a final state.

        Example:
            >>> await app.count_prunable(older_than=7 * 86400)
            {'completed': 1200, 'discarded': 3, 'cancelled': 40}
        """
        return await self._admin.count_prunable(older_than=older_than, states=states)

    async def count_jobs(self, job_filter: JobFilter) -> int:
        """Count the jobs *job_filter* matches now (what a bulk operation would examine).

        Args:
            job_filter: which jobs (a :class:`JobFilter`; an empty one matches every job).

        Returns:
            How many jobs match.

        Raises:
            TypeError: *job_filter* is not a JobFilter.
            DatabaseError: the database cannot be reached.

        Example:
            >>> await app.count_jobs(JobFilter(states="available", queue="emails"))
            2500
        """
        return await self._admin.count_jobs(job_filter)

    def count_jobs_sync(self, job_filter: JobFilter) -> int:
        """Like :meth:`count_jobs`, from synchronous code (not from inside an event loop).

        Returns:
            How many jobs match.
        """
        return _blocking(self._admin.count_jobs, job_filter)

    async def bulk_cancel(
        self, job_filter: JobFilter, *, chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None
    ) -> BulkResult:
        """Cancel every job *job_filter* matches, *chunk_size* jobs per short transaction.

        Works as :meth:`cancel` on each job: a waiting one is cancelled at once, an executing one
        gets a cancel request that its worker acts on (cancelling the job's scope). Without states
        in the filter it takes every unfinished state. The jobs counted at the start are the ones
        acted on; each write is guarded by the filter's states, so a job that moved meanwhile (it
        finished, or started when only waiting states were asked for) is skipped, never clobbered.

        Args:
            job_filter: which jobs (a :class:`JobFilter`).
            chunk_size: jobs per transaction (1-10000).
            progress: called after each chunk with how many jobs it examined (for a progress bar).

        Returns:
            A :class:`BulkResult`: matched, cancelled (``changed``), ``requested`` and ``skipped``.

        Raises:
            JobStateError: the filter names a finished state (such a job cannot be cancelled).
            ConfigurationError: a bad chunk size.
            TypeError: *job_filter* is not a JobFilter.
            DatabaseError: the database cannot be reached (chunks already done stay done).

        Example:
            >>> result = await app.bulk_cancel(JobFilter(states="available", queue="emails"))
            >>> result.changed
            2500
        """
        return await self._admin.bulk("cancel", job_filter, chunk_size=chunk_size, progress=progress)

    def bulk_cancel_sync(
        self, job_filter: JobFilter, *, chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None
    ) -> BulkResult:
        """Like :meth:`bulk_cancel`, from synchronous code (not from inside an event loop).

        Returns:
            A :class:`BulkResult`.
        """
        return _blocking(lambda: self._admin.bulk("cancel", job_filter, chunk_size=chunk_size, progress=progress))

    async def bulk_retry(
        self, job_filter: JobFilter, *, chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None
    ) -> BulkResult:
        """Put every discarded or cancelled job *job_filter* matches back in its queue, in chunks.

        Works as :meth:`retry` on each job. A job whose retry is refused (a unique job holds its
        key, or a dependency did not complete) or that moved since the count is skipped.

        Args:
            job_filter: which jobs (states among ``discarded`` and ``cancelled``; both if none).
            chunk_size: jobs per transaction (1-10000).
            progress: called after each chunk with how many jobs it examined.

        Returns:
            A :class:`BulkResult`: matched, retried (``changed``) and ``skipped``.

        Raises:
            JobStateError: the filter names a state other than discarded or cancelled.
            ConfigurationError: a bad chunk size.
            TypeError: *job_filter* is not a JobFilter.
            DatabaseError: the database cannot be reached (chunks already done stay done).

        Example:
            >>> await app.bulk_retry(JobFilter(states="discarded", task="emails.send"))
        """
        return await self._admin.bulk("retry", job_filter, chunk_size=chunk_size, progress=progress)

    def bulk_retry_sync(
        self, job_filter: JobFilter, *, chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None
    ) -> BulkResult:
        """Like :meth:`bulk_retry`, from synchronous code (not from inside an event loop).

        Returns:
            A :class:`BulkResult`.
        """
        return _blocking(lambda: self._admin.bulk("retry", job_filter, chunk_size=chunk_size, progress=progress))

    async def bulk_delete(
        self, job_filter: JobFilter, *, chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None
    ) -> BulkResult:
        """Delete every job *job_filter* matches, except executing ones, in chunks.

        An executing job is never deleted (its worker would record its outcome on a missing row):
        cancel it first. Without states in the filter every other state is taken; a job that
        started executing since the count is skipped. Deleting a waiting job that other jobs
        depend on leaves them pending: cancel it instead.

        Args:
            job_filter: which jobs (a :class:`JobFilter`).
            chunk_size: jobs per transaction (1-10000).
            progress: called after each chunk with how many jobs it examined.

        Returns:
            A :class:`BulkResult`: matched, deleted (``changed``) and ``skipped``.

        Raises:
            JobStateError: the filter names the executing state.
            ConfigurationError: a bad chunk size.
            TypeError: *job_filter* is not a JobFilter.
            DatabaseError: the database cannot be reached (chunks already done stay done).

        Example:
            >>> await app.bulk_delete(JobFilter(states="cancelled", older_than=86400))
        """
        return await self._admin.bulk("delete", job_filter, chunk_size=chunk_size, progress=progress)

    def bulk_delete_sync(
        self, job_filter: JobFilter, *, chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None
    ) -> BulkResult:
        """Like :meth:`bulk_delete`, from synchronous code (not from inside an event loop).

        Returns:
            A :class:`BulkResult`.
        """
        return _blocking(lambda: self._admin.bulk("delete", job_filter, chunk_size=chunk_size, progress=progress))

    async def delete_job(self, job_id: int) -> Job:
        """Delete one job (and its result) that is not executing.

        Args:
            job_id: the job's id.

        Returns:
            The job as it was just before it was deleted.

        Raises:
            JobNotFound: no such job.
            JobStateError: the job is executing (cancel it first), or moved while being deleted.
            TypeError: the id is not an int.

        Example:
            >>> (await app.delete_job(42)).state
            <JobState.CANCELLED: 'cancelled'>
        """
        return await self._admin.delete_job(job_id)

    def delete_job_sync(self, job_id: int) -> Job:
        """Like :meth:`delete_job`, from synchronous code (not from inside an event loop).

        Returns:
            The job as it was just before it was deleted.
        """
        return _blocking(self._admin.delete_job, job_id)

    async def pause_queue(self, name: str) -> bool:
        """Pause queue *name*: no worker fetches its jobs until :meth:`resume_queue`.

        Jobs can still be deferred to a paused queue; jobs already executing finish normally. The
        pause is stored in the database, so it holds for every worker and survives restarts. A fetch
        that started before the pause committed may still claim that queue's jobs once.

        Args:
            name: the queue (it need not have jobs yet).

        Returns:
            True if the queue was running and is paused now; False if it was already paused.

        Raises:
            ConfigurationError: the name is not a valid queue name.
            DatabaseError: the database cannot be reached.

        Example:
            >>> await app.pause_queue("emails")
            True
        """
        return await self._admin.pause_queue(name)

    async def resume_queue(self, name: str) -> bool:
        """Resume a paused queue; its workers are notified and fetch at once.

        Args:
            name: the queue.

        Returns:
            True if the queue was paused and runs again; False if it was not paused.

        Raises:
            ConfigurationError: the name is not a valid queue name.
            DatabaseError: the database cannot be reached.

        Example:
            >>> await app.resume_queue("emails")
            True
        """
        return await self._admin.resume_queue(name)

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue that has jobs or was ever paused, with its pause flag and job counts.

        Returns:
            :class:`QueueInfo` rows sorted by name: ``paused``, ``counts`` by state and the age of
            the oldest available job, by the database's clock.

        Raises:
            DatabaseError: the database cannot be reached.

        Example:
            >>> [(q.name, q.paused, q.counts["available"]) for q in await app.list_queues()]
            [('default', False, 12), ('emails', True, 40)]
        """
        return await self._admin.list_queues()

    async def set_queue_limits(
        self,
        name: str,
        *,
        max_concurrency: int | Unchanged | None = UNCHANGED,
        rate_limit: str | tuple[int, float | dt.timedelta] | Unchanged | None = UNCHANGED,
    ) -> QueueInfo:
        """Limit queue *name* across every worker and host: jobs running at once, and starts per window.

        The limits are stored in the database (with the queue's pause flag), so every worker
        honours them, including workers started later. Only what is given changes: a limit left
        out keeps its stored value, and None lifts it. Jobs held back by a limit stay available and
        use no attempt. Task limits (``@app.task(max_concurrency=...)``) apply on top.

        Args:
            name: the queue.
            max_concurrency: at most this many of its jobs executing at once; None lifts the limit;
                left out, it stays as it is.
            rate_limit: at most this many starts in any sliding window (``"100/m"``, ``"10/s"``,
                ``(count, seconds)``); None lifts the limit; left out, it stays as it is.

        Returns:
            The queue as it is now.

        Raises:
            ConfigurationError: the name or a limit is invalid, or neither limit is given.
            DatabaseError: the database cannot be reached.

        Example:
            >>> await app.set_queue_limits("emails", max_concurrency=5, rate_limit="100/m")
            >>> await app.set_queue_limits("emails", rate_limit=None)  # keeps max_concurrency=5
        """
        return await self._admin.set_queue_limits(name, max_concurrency=max_concurrency, rate_limit=rate_limit)

    async def list_breakers(self) -> list[BreakerInfo]:
        """The circuit breakers of every task that has one, with their state (database clock).

        A breaker's row is written by the first worker that runs its task.

        Returns:
            :class:`BreakerInfo` rows sorted by task.

        Raises:
            DatabaseError: the database cannot be reached.
        """
        return await self._admin.list_breakers()

    @overload
    async def wait_for(self, job_id: Job[T], *, timeout: float | None = None, poll_interval: float = 1.0) -> Job[T]: ...  # noqa: ASYNC109

    @overload
    async def wait_for(self, job_id: int, *, timeout: float | None = None, poll_interval: float = 1.0) -> Job[Any]: ...  # noqa: ASYNC109

    async def wait_for(
        self,
        job_id: Job[Any] | int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        poll_interval: float = 1.0,
    ) -> Job[Any]:
        """Wait until a job finishes and return it (with its ``result`` once completed).

        Woken by the workers' NOTIFY when jobs finish, with polling every *poll_interval* seconds
        as the fallback (each call holds one listening connection while it waits).

        Args:
            job_id: the job's id, or the :class:`Job` that ``defer`` returned: then the result
                is typed as the task's return type (``Job[int]`` for a task returning ``int``).
            timeout: seconds to wait at most (None: no limit).
            poll_interval: seconds between checks when no notification arrives.

        Returns:
            The completed :class:`Job`; ``job.result`` holds the task's return value.

        Raises:
            JobFailed: the job ended discarded or cancelled (``exc.job`` is the job).
            TimeoutError: it did not finish within *timeout* (nothing is changed).
            JobNotFound: no such job (or it was pruned).

        Example:
            >>> job = await add.defer(a=1, b=2)
            >>> (await app.wait_for(job.id, timeout=10)).result
            3
        """
        if isinstance(job_id, Job):
            job_id = job_id.id
        return await self._admin.wait_for(job_id, timeout=timeout, poll_interval=poll_interval)

    async def list_periodic(self) -> list[PeriodicInfo]:
        """Every periodic schedule: those in the database and this app's own, with their next tick.

        Returns:
            :class:`PeriodicInfo` records sorted by name: expression, time zone, task, queue, the
            next tick (by the database's clock), the last tick enqueued and its job's id and state.
            Schedules this app does not define (``in_app`` False) are no longer enqueued by it.

        Raises:
            DatabaseError: the database cannot be reached.
            SchemaNotReady: the schema is not migrated.

        Example:
            >>> [(p.name, p.next_tick, p.last_job_state) for p in await app.list_periodic()]
        """
        return await self._admin.list_periodic()

    async def pause_periodic(self, name: str) -> bool:
        """Pause periodic schedule *name*: no worker enqueues its ticks until :meth:`resume_periodic`.

        The pause is stored in the database (it holds for every worker and survives restarts);
        :meth:`trigger_periodic` still enqueues a run by hand.

        Args:
            name: the schedule's name (by default its task's name).

        Returns:
            True if it was running and is paused now; False if it was already paused.

        Raises:
            PeriodicNotFound: no schedule has that name (the message lists those that do).
            DatabaseError: the database cannot be reached.

        Example:
            >>> await app.pause_periodic("reports.nightly")
            True
        """
        return await self._admin.pause_periodic(name)

    async def resume_periodic(self, name: str) -> bool:
        """Resume a paused periodic schedule: its next due tick is enqueued as usual (a tick missed
        while paused runs at once only if it is within the schedule's ``catch_up``).

        Args:
            name: the schedule's name.

        Returns:
            True if it was paused and runs again; False if it was not paused.

        Raises:
            PeriodicNotFound: no schedule has that name (the message lists those that do).
            DatabaseError: the database cannot be reached.
        """
        return await self._admin.resume_periodic(name)

    async def trigger_periodic(self, name: str) -> Job:
        """Enqueue one run of periodic schedule *name* now, paused or not, without touching its ticks.

        The job is the one its ticks enqueue: for a schedule the app defines, the same task, queue,
        arguments, priority and unique key (``tick_arg`` gets the database's current time); for one
        only the database knows, the task, queue and arguments it was registered with.

        Args:
            name: the schedule's name.

        Returns:
            The job enqueued (or, for a unique task whose key is held, the holder, with
            ``duplicate`` True).

        Raises:
            PeriodicNotFound: no schedule has that name (the message lists those that do).
            DatabaseError: the database cannot be reached.

        Example:
            >>> (await app.trigger_periodic("reports.nightly")).id
            4312
        """
        return await self._admin.trigger_periodic(name)
