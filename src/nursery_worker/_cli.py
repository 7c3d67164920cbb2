"""The ``nursery-worker`` command line.

A user mistake (bad option, unreachable database, unmigrated schema, an app path that does not
import) prints one line and exits non-zero; tracebacks are for bugs, and for ``--log-level debug``.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import click

from ._app import App
from ._dsn import redact
from ._errors import NurseryWorkerError
from ._worker import Worker, open_worker, relay_signals, unwrap_group

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("nursery_worker.cli")


def load_app(path: str) -> App:
    """Import ``module:attribute`` and return the :class:`App` it names.

    Raises:
        click.UsageError: the path is malformed, does not import, or is not an App.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise click.UsageError(f"--app {path!r} must look like 'package.module:app'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise click.UsageError(f"--app {path!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.UsageError(f"--app {path!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise click.UsageError(f"--app {path!r} is not a nursery_worker.App (it is of type {type(obj).__name__})")
    return obj


def _make_app(app_path: str | None, dsn: str | None, schema: str | None) -> App:
    if app_path:
        app = load_app(app_path)
        if schema is not None and schema != app.schema:
            raise click.UsageError(f"--schema {schema!r} differs from the app's schema {app.schema!r}")
        if dsn is not None:
            app._use_dsn(dsn)
        return app
    return App(dsn=dsn, schema=schema)


def _common(func: F) -> F:
    func = click.option(
        "--dsn",
        default=None,
        help="PostgreSQL DSN; default: the app's, else $NURSERY_WORKER_DSN.",
    )(func)
    func = click.option(
        "--schema",
        default=None,
        help="Schema holding the tables; default: the app's, $NURSERY_WORKER_SCHEMA, nursery_worker.",
    )(func)
    return click.option(
        "--log-level",
        default="info",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        show_default=True,
    )(func)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(exc: BaseException) -> click.ClickException:
    logger.debug("details", exc_info=exc)
    return click.ClickException(
        redact(str(exc)) if isinstance(exc, NurseryWorkerError) else redact(f"{type(exc).__name__}: {exc}")
    )


_POSITIVE = click.FloatRange(min=0, min_open=True)


class _ExitWatchdog:
    """The last resort of a stop: exit the process if the worker has not stopped in time.

    An async job that swallows cancellation, or code that blocks the event loop, can keep a task
    group from ever finishing; structured concurrency cannot abandon a task. The watchdog is a
    timer thread armed by the first signal: if the worker is still not stopped at its deadline, it
    logs the jobs still running and exits non-zero. Those jobs stay executing in the database and
    peers rescue them once this worker's heartbeat lapses (``rescue_after``).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self, worker: Callable[[], Worker | None]) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.seconds, self._fire, args=(worker,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self, worker: Callable[[], Worker | None]) -> None:
        current = worker()
        stuck = ", ".join(f"{j.id} ({j.task})" for j in current.running_jobs) if current is not None else ""
        logger.error(
            "the worker did not stop within %gs of the signal; exiting now. Jobs still running: %s. They stay "
            "executing and peers rescue them once this worker's heartbeat lapses.",
            self.seconds,
            stuck or "none",
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _supervisor_options(func: F) -> F:
    """The options of ``run --processes N`` (the supervisor); see ``_run_supervised``."""
    options = [
        click.option(
            "--processes",
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help="Worker processes; above 1, a supervisor runs and restarts them.",
        ),
        click.option(
            "--health-timeout",
            default=10.0,
            show_default=True,
            type=_POSITIVE,
            help="Seconds without a report before a child is killed and replaced (a hung event loop).",
        ),
        click.option(
            "--max-restarts",
            default=5,
            show_default=True,
            type=click.IntRange(min=0),
            help="Restarts of one child within --restart-window before the supervisor gives up.",
        ),
        click.option("--restart-window", default=60.0, show_default=True, type=_POSITIVE, help="Seconds."),
        click.option(
            "--restart-delay",
            default=1.0,
            show_default=True,
            type=_POSITIVE,
            help="First restart's backoff in seconds; doubles with each recent crash (to 30 s).",
        ),
        click.option(
            "--status-interval",
            default=60.0,
            show_default=True,
            type=_POSITIVE,
            help="Seconds between the supervisor's per-child status lines.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nursery-worker")
def cli() -> None:
    """nursery-worker: durable background jobs for trio and asyncio, on PostgreSQL."""


@cli.command()
@click.option("--app", "app_path", required=True, help="The App to run, as 'package.module:app'.")
@click.option("--queues", default="default", show_default=True, help="Comma-separated queues to work.")
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(min=1), help="Jobs at once.")
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds running jobs get after SIGTERM/SIGINT.",
)
@click.option("--once", is_flag=True, help="Work off the jobs available now, print the count, and exit.")
@click.option("--poll-interval", default=1.0, show_default=True, type=_POSITIVE, help="Seconds between polls.")
@click.option(
    "--heartbeat-interval", default=2.0, show_default=True, type=_POSITIVE, help="Seconds between heartbeats."
)
@click.option(
    "--rescue-after",
    default=15.0,
    show_default=True,
    type=_POSITIVE,
    help="Seconds without a heartbeat before peers rescue a worker's jobs.",
)
@click.option("--no-listen", is_flag=True, help="Do not use LISTEN/NOTIFY; rely on polling alone.")
@click.option(
    "--wait-for-db",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to keep retrying the first database connection (for containers); 0 fails at once.",
)
@click.option(
    "--cancel-grace",
    default=10.0,
    show_default=True,
    type=_POSITIVE,
    help="Seconds a cancelled job gets to stop before it is recorded as abandoned.",
)
@click.option(
    "--backend",
    default=lambda: os.environ.get("NURSERY_WORKER_BACKEND", "asyncio"),
    type=click.Choice(["asyncio", "trio"]),
    show_default="asyncio, or $NURSERY_WORKER_BACKEND",
    help="The event loop your tasks are written for.",
)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus /metrics, /healthz and /readyz on this port (needs nursery-worker[metrics]).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address the metrics endpoint binds; 0.0.0.0 for every interface.",
)
@_supervisor_options
@_common
def run(
    app_path: str,
    queues: str,
    concurrency: int,
    shutdown_timeout: float,
    once: bool,
    poll_interval: float,
    heartbeat_interval: float,
    rescue_after: float,
    no_listen: bool,
    wait_for_db: float,
    cancel_grace: float,
    backend: str,
    metrics_port: int | None,
    metrics_host: str,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    **supervisor: Any,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once).

    With --processes N above 1, run a supervisor of N worker processes instead: SIGTERM/SIGINT stop
    them all gracefully (again: at once), SIGHUP restarts them one at a time.
    """
    _setup_logging(log_level)
    if backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise click.UsageError("--backend trio needs trio: pip install 'nursery-worker[trio]'") from None
    if metrics_port is not None:
        from ._metrics import check_available

        try:
            check_available()
        except NurseryWorkerError as exc:
            raise click.UsageError(f"--metrics-port: {exc}") from None
    app = _make_app(app_path, dsn, schema)
    if supervisor["processes"] > 1:
        if once:
            app.close()
            raise click.UsageError("--once runs a single process: drop --processes or --once")
        options = dict(
            queues=queues,
            concurrency=concurrency,
            shutdown_timeout=shutdown_timeout,
            poll_interval=poll_interval,
            heartbeat_interval=heartbeat_interval,
            rescue_after=rescue_after,
            listen=not no_listen,
            wait_for_db=wait_for_db,
            cancel_grace=cancel_grace,
        )
        supervisor.update(metrics_port=metrics_port, metrics_host=metrics_host)
        _run_supervised(app, app_path, backend, dsn, log_level, options, supervisor)
        return
    # Generous: the grace for running jobs, a cancelled job's grace, and the final writes twice.
    watchdog = _ExitWatchdog(shutdown_timeout + cancel_grace + 25.0)

    async def main() -> Worker | None:
        # Signals are caught from the very start: during startup a signal cancels the start (which
        # still deregisters and runs shutdown hooks); once running, the first signal stops
        # gracefully and the second stops at once.
        running: list[Worker] = []
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                run_scope = anyio.CancelScope()
                tg.start_soon(
                    functools.partial(
                        relay_signals,
                        signals,
                        lambda: running[0] if running else None,
                        run_scope.cancel,
                        on_signal=lambda: watchdog.arm(lambda: running[0] if running else None),
                    )
                )
                with run_scope:
                    async with open_worker(
                        app,
                        queues=queues,
                        concurrency=concurrency,
                        shutdown_timeout=shutdown_timeout,
                        once=once,
                        poll_interval=poll_interval,
                        heartbeat_interval=heartbeat_interval,
                        rescue_after=rescue_after,
                        listen=not no_listen,
                        wait_for_db=wait_for_db,
                        cancel_grace=cancel_grace,
                    ) as worker:
                        running.append(worker)
                        if metrics_port is not None:
                            from ._metrics import serve_metrics

                            await tg.start(functools.partial(serve_metrics, worker, metrics_port, host=metrics_host))
                        await worker.wait_stopped()
                tg.cancel_scope.cancel()
        return running[0] if running else None

    try:
        try:
            worker = anyio.run(main, backend=backend)
        except BaseExceptionGroup as group:
            leaf = unwrap_group(group)
            if leaf is group:
                raise
            raise leaf from leaf.__cause__
    except (NurseryWorkerError, click.ClickException):
        raise
    except Exception as exc:
        raise _fail(exc) from None
    finally:
        watchdog.disarm()
        app.close()
    if worker is None:
        return
    stats = worker.stats()
    if once:
        click.echo(f"processed {stats.processed} job(s): {stats.completed} completed, {stats.failed} failed")
    if worker.sync_threads_alive:
        # Plain-def jobs abandoned at their timeout or at shutdown cannot be interrupted; their jobs
        # are already back in the queue or recorded. Do not let them hold the process open.
        logger.warning("exiting with %d abandoned sync job thread(s) still running", worker.sync_threads_alive)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _run_supervised(
    app: App,
    app_path: str,
    backend: str,
    dsn: str | None,
    log_level: str,
    worker_options: dict[str, Any],
    supervisor: dict[str, Any],
) -> None:
    """``run --processes N``: the supervisor, in this process; the app was imported to validate it."""
    from ._process import set_title
    from ._supervisor import run_supervisor

    app.close()  # the supervisor itself never touches the database
    set_title(f"nursery-worker: supervisor [app={app_path} processes={supervisor['processes']}]")
    call = functools.partial(
        run_supervisor,
        app_path,
        backend=backend,
        dsn=dsn,
        log_level=log_level,
        **worker_options,
        **supervisor,
    )
    try:
        try:
            anyio.run(call, backend=backend)
        except BaseExceptionGroup as group:
            leaf = unwrap_group(group)
            if leaf is group:
                raise
            raise leaf from leaf.__cause__
    except (NurseryWorkerError, click.ClickException):
        raise
    except Exception as exc:
        raise _fail(exc) from None


@cli.command()
@click.option(
    "--app", "app_path", default=None, help="Optional App ('package.module:app') to take DSN and schema from."
)
@_common
def migrate(app_path: str | None, dsn: str | None, schema: str | None, log_level: str) -> None:
    """Create or upgrade the tables (idempotent; safe to run concurrently)."""
    _setup_logging(log_level)
    app = _make_app(app_path, dsn, schema)
    try:
        applied = app.migrate_sync()
    finally:
        app.close()
    if applied:
        click.echo(f"schema {app.schema!r} migrated: applied {', '.join(map(str, applied))}")
    else:
        click.echo(f"schema {app.schema!r} is up to date")


@cli.command()
@click.argument("task")
@click.option("--args", "args_json", default="{}", show_default=True, help="Keyword arguments as a JSON object.")
@click.option("--app", "app_path", default=None, help="Optional App, to check the arguments against the task.")
@click.option("--queue", default=None, help="Queue (default: the task's, else 'default').")
@click.option("--priority", default=None, type=int, help="Priority (higher runs first).")
@click.option("--max-attempts", default=None, type=click.IntRange(min=1))
@_common
def defer(
    task: str,
    args_json: str,
    app_path: str | None,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    dsn: str | None,
    schema: str | None,
    log_level: str,
) -> None:
    """Enqueue one job of TASK and print its id."""
    _setup_logging(log_level)
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--args is not valid JSON ({exc}): {args_json[:80]!r}") from None
    if not isinstance(args, dict):
        raise click.UsageError(f"--args must be a JSON object of keyword arguments, got {type(args).__name__}")
    app = _make_app(app_path, dsn, schema)
    try:
        try:
            spec = app.job_by_name(task, args, queue=queue, priority=priority, max_attempts=max_attempts)
        except (TypeError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        (job,) = app.defer_many_sync([spec])
    finally:
        app.close()
    click.echo(json.dumps({"id": job.id, "task": job.task, "queue": job.queue, "state": job.state.value}))


@cli.command()
@click.option(
    "--app", "app_path", default=None, help="Optional App ('package.module:app') to take DSN and schema from."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@_common
def status(app_path: str | None, as_json: bool, dsn: str | None, schema: str | None, log_level: str) -> None:
    """Show every registered worker: pid, host, state, uptime, restarts, counters, last heartbeat."""
    from ._status import render_json, render_table

    _setup_logging(log_level)
    app = _make_app(app_path, dsn, schema)

    async def rows() -> Any:
        try:
            return await app.driver.list_workers()
        finally:
            await app.aclose()

    try:
        workers = anyio.run(rows)
    except NurseryWorkerError:
        raise
    except Exception as exc:
        raise _fail(exc) from None
    click.echo(render_json(workers) if as_json else render_table(workers, schema=app.schema))


def main() -> None:
    """Entry point of the ``nursery-worker`` console script."""
    try:
        cli.main(prog_name="nursery-worker", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # One line, with where to look, instead of click's usage block.
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"Error: {redact(exc.format_message())}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except NurseryWorkerError as exc:
        click.echo(f"Error: {redact(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug, or user code failing at import; still one line unless debugging
        if os.environ.get("NURSERY_WORKER_DEBUG"):
            raise
        click.echo(
            f"Error: {redact(f'{type(exc).__name__}: {exc}')} (set NURSERY_WORKER_DEBUG=1 for a traceback)", err=True
        )
        sys.exit(1)
