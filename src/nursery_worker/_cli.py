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
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click

from ._app import App
from ._dsn import redact
from ._errors import NurseryWorkerError
from ._logging import LOG_FORMATS, setup_logging
from ._models import JobSpec
from ._signals import relay_signals, unwrap_group
from ._state import JobState
from ._worker import Worker, open_worker

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
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
        help="PostgreSQL DSN, or sqlite:///PATH; default: the app's, $NURSERY_WORKER_DSN, ./nursery-worker.sqlite3.",
    )(func)
    func = click.option(
        "--schema",
        default=None,
        help="Schema holding the tables; default: the app's, $NURSERY_WORKER_SCHEMA, nursery_worker.",
    )(func)
    func = click.option(
        "--log-format",
        default="console",
        envvar="NURSERY_WORKER_LOG_FORMAT",
        type=click.Choice(LOG_FORMATS),
        show_default=True,
        help="console: human lines; json: one object per line. Job lines carry job id, task, queue, attempt, worker.",
    )(func)
    return click.option(
        "--log-level",
        default="info",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        show_default=True,
    )(func)


def _setup_logging(level: str, log_format: str = "console") -> None:
    setup_logging(level, log_format)
    # The supervisor's children read it from their environment.
    os.environ["NURSERY_WORKER_LOG_FORMAT"] = log_format


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
    "--log-args",
    is_flag=True,
    help="Add each job's arguments to its log lines (off by default: arguments often hold personal data).",
)
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
    log_args: bool,
    wait_for_db: float,
    cancel_grace: float,
    backend: str,
    metrics_port: int | None,
    metrics_host: str,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
    **supervisor: Any,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once).

    With --processes N above 1, run a supervisor of N worker processes instead: SIGTERM/SIGINT stop
    them all gracefully (again: at once), SIGHUP restarts them one at a time.
    """
    _setup_logging(log_level, log_format)
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
            log_args=log_args,
        )
        supervisor.update(metrics_port=metrics_port, metrics_host=metrics_host)
        _run_supervised(app, app_path, backend, dsn, log_level, options, supervisor)
        return
    # The grace for running jobs, a cancelled job's grace, the final writes (10 s) and a margin.
    watchdog = _ExitWatchdog(shutdown_timeout + cancel_grace + 15.0)

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
                        log_args=log_args,
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
def migrate(app_path: str | None, dsn: str | None, schema: str | None, log_level: str, log_format: str) -> None:
    """Create or upgrade the tables (idempotent; safe to run concurrently)."""
    _setup_logging(log_level, log_format)
    app = _make_app(app_path, dsn, schema)
    try:
        applied = app.migrate_sync()
    finally:
        app.close()
    if applied:
        click.echo(f"schema {app.schema!r} migrated: applied {', '.join(map(str, applied))}")
    else:
        click.echo(f"schema {app.schema!r} is up to date")


_LOOKUP_APP = click.option(
    "--app", "app_path", default=None, help="Optional App ('package.module:app') to take DSN and schema from."
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (for scripts).")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` as seconds."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise click.UsageError(f"{text!r} is not a duration: use seconds or a number with s, m, h, d or w (e.g. 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _with_app(app: App, body: Callable[[App], Awaitable[T]]) -> T:
    """Run ``body(app)`` on an event loop, close the app, and turn failures into one-line errors."""

    async def main() -> T:
        try:
            return await body(app)
        finally:
            await app.aclose()

    try:
        return anyio.run(main)
    except (NurseryWorkerError, click.ClickException):
        raise
    except Exception as exc:
        raise _fail(exc) from None


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _unknown_task(app: App, task: str) -> str | None:
    """With ``--app``, a task name its app does not register is a mistake: say so, and the names it has.

    (Without ``--app`` any name goes: a producer need not import the worker's code.)
    """
    if task in app.tasks:
        return None
    near = sorted(name for name in app.tasks if name.rsplit(".", 1)[-1] == task)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
    known = ", ".join(sorted(app.tasks)) or "none"
    return f"no task named {task!r} is registered in the --app (registered: {known}){hint}"


# --- defer ---------------------------------------------------------------------------------------

_LINE_KEYS = frozenset({"task", "args", "queue", "priority", "max_attempts", "depends_on"})


def _read_specs(app: App, stream: Any, name: str, *, check_known: bool = False) -> list[JobSpec]:
    """Every job of a JSON-lines stream, validated before anything is inserted.

    *check_known* (``--app`` given): a task name the app does not register is an error.
    """
    specs: list[JobSpec] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{where}: not valid JSON ({exc}); nothing was deferred") from None
        if not isinstance(item, dict):
            raise click.ClickException(
                f"{where}: expected a JSON object, got {type(item).__name__}; nothing was deferred"
            )
        unknown = sorted(set(item) - _LINE_KEYS)
        if unknown:
            raise click.ClickException(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(_LINE_KEYS))}); "
                "nothing was deferred"
            )
        task = item.get("task")
        if not isinstance(task, str):
            raise click.ClickException(f"{where}: 'task' must be a task name (a string); nothing was deferred")
        args = item.get("args", {})
        if not isinstance(args, dict):
            raise click.ClickException(f"{where}: 'args' must be a JSON object; nothing was deferred")
        if check_known and (problem := _unknown_task(app, task)):
            raise click.ClickException(f"{where}: {problem}; nothing was deferred")
        try:
            specs.append(
                app.job_by_name(
                    task,
                    args,
                    queue=item.get("queue"),
                    priority=item.get("priority"),
                    max_attempts=item.get("max_attempts"),
                    depends_on=item.get("depends_on"),
                )
            )
        except (TypeError, ValueError) as exc:
            raise click.ClickException(f"{where}: {exc}; nothing was deferred") from None
    return specs


@cli.command()
@click.argument("task", required=False)
@click.option("--args", "args_json", default="{}", show_default=True, help="Keyword arguments as a JSON object.")
@click.option(
    "--file",
    "jobs_file",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help='Defer many jobs from a JSON-lines file (- for stdin): {"task": ..., "args": {...}, "queue": ...} a line.',
)
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000), help="Jobs per insert.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr while deferring a file (default: when stderr is a terminal).",
)
@click.option("--app", "app_path", default=None, help="Optional App, to check the arguments against the task.")
@click.option("--queue", default=None, help="Queue (default: the task's, else 'default').")
@click.option("--priority", default=None, type=int, help="Priority (higher runs first).")
@click.option("--max-attempts", default=None, type=click.IntRange(min=1))
@click.option(
    "--depends-on",
    "depends_on",
    multiple=True,
    type=click.IntRange(min=1),
    help="A job id this job waits for (repeat for several): it stays pending until they all completed.",
)
@_common
def defer(
    task: str | None,
    args_json: str,
    jobs_file: Any,
    batch_size: int,
    progress: bool | None,
    app_path: str | None,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    depends_on: tuple[int, ...],
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Enqueue one job of TASK and print it as JSON, or many with --file.

    With --file, every line is validated first (a bad line names its number and nothing is
    inserted); the jobs are then inserted in batches of --batch-size and the count printed.
    """
    _setup_logging(log_level, log_format)
    if (task is None) == (jobs_file is None):
        raise click.UsageError("give either TASK (one job) or --file PATH|- (many jobs), not both or neither")
    if jobs_file is not None:
        _defer_file(jobs_file, batch_size, progress, app_path, dsn, schema)
        return
    assert task is not None
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--args is not valid JSON ({exc}): {args_json[:80]!r}") from None
    if not isinstance(args, dict):
        raise click.UsageError(f"--args must be a JSON object of keyword arguments, got {type(args).__name__}")
    app = _make_app(app_path, dsn, schema)
    try:
        if app_path and (problem := _unknown_task(app, task)):
            raise click.UsageError(problem)
        try:
            spec = app.job_by_name(
                task,
                args,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                depends_on=list(depends_on) or None,
            )
        except (TypeError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        (job,) = app.defer_many_sync([spec])
    finally:
        app.close()
    click.echo(json.dumps({"id": job.id, "task": job.task, "queue": job.queue, "state": job.state.value}))


def _defer_file(
    jobs_file: Any, batch_size: int, progress: bool | None, app_path: str | None, dsn: str | None, schema: str | None
) -> None:
    app = _make_app(app_path, dsn, schema)
    name = "stdin" if jobs_file.name == "<stdin>" else jobs_file.name
    done = 0
    try:
        specs = _read_specs(app, jobs_file, name, check_known=bool(app_path))
        interactive = sys.stderr.isatty()
        show = interactive if progress is None else progress
        batches = [specs[i : i + batch_size] for i in range(0, len(specs), batch_size)]
        if show and interactive:
            with click.progressbar(length=len(specs), label="deferring", file=sys.stderr) as bar:
                for batch in batches:
                    done += len(app.defer_many_sync(batch))
                    bar.update(len(batch))
        else:
            for batch in batches:
                done += len(app.defer_many_sync(batch))
                if show:
                    click.echo(f"deferred {done}/{len(specs)}", err=True)
    except (NurseryWorkerError, click.ClickException) as exc:
        if done:
            raise click.ClickException(f"{redact(str(exc))} (after {done} job(s) were deferred)") from None
        raise
    finally:
        app.close()
    click.echo(f"deferred {done} job(s) from {name}")


# --- status, healthcheck -----------------------------------------------------------------------


@cli.command()
@_LOOKUP_APP
@_JSON
@click.option(
    "--watch",
    type=_POSITIVE,
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Redraw every SECONDS (default 2) until Ctrl-C.",
)
@_common
def status(
    app_path: str | None,
    as_json: bool,
    watch: float | None,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Show each queue (paused?, jobs by state, oldest available job's age, limits), the circuit
    breakers, and every worker.

    Workers: pid, host, state, uptime, restarts, counters, and the age of the last heartbeat, all by
    the database's clock.
    """
    from ._status import render_status, status_dict

    _setup_logging(log_level, log_format)
    app = _make_app(app_path, dsn, schema)

    def draw(queues: Any, workers: Any, breakers: Any) -> None:
        if as_json:
            data = status_dict(queues, workers, schema=app.schema, breakers=breakers)
            click.echo(json.dumps(data) if watch is not None else json.dumps(data, indent=2))
        else:
            text = render_status(queues, workers, schema=app.schema, breakers=breakers)
            if watch is not None:
                if sys.stdout.isatty():
                    click.clear()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                head = f"nursery-worker status: schema {app.schema!r} at {stamp} (every {watch:g}s; Ctrl-C stops)"
                text = f"{head}\n\n{text}\n"
            click.echo(text)
        sys.stdout.flush()

    async def body(app: App) -> None:
        while True:
            draw(await app.list_queues(), await app.driver.list_workers(), await app.list_breakers())
            if watch is None:
                return
            await anyio.sleep(watch)

    try:
        _with_app(app, body)
    except KeyboardInterrupt:
        return


_DEFAULT_HEALTH_AGE = 10.0


@cli.command()
@_LOOKUP_APP
@click.option("--worker-id", default=None, help="This worker (an id from `status --json`).")
@click.option("--pid", type=int, default=None, help="The worker of this process id on this host.")
@click.option("--any-host", is_flag=True, help="Any worker in the schema, not only those of this host (the default).")
@click.option(
    "--max-age",
    default=_DEFAULT_HEALTH_AGE,
    show_default=True,
    type=_POSITIVE,
    help="Seconds: a heartbeat older than this is unhealthy (5 beats at the default --heartbeat-interval).",
)
@_common
def healthcheck(
    app_path: str | None,
    worker_id: str | None,
    pid: int | None,
    any_host: bool,
    max_age: float,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Exit 0 if a worker has a heartbeat within --max-age seconds, else print why and exit 1.

    For container probes: it asks the database (and its clock), so it checks what peers see: a
    worker whose heartbeat lapses is the one whose jobs get rescued. By default it looks for any
    worker of this host (the container's hostname).
    """
    _setup_logging(log_level, log_format)
    host = socket.gethostname()
    try:
        app = _make_app(app_path, dsn, schema)
        workers = _with_app(app, lambda a: a.driver.list_workers())
    except (NurseryWorkerError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"unhealthy: {redact(message)}", err=True)
        sys.exit(1)
    if worker_id is not None:
        chosen, what = [w for w in workers if w.id == worker_id], f"worker {worker_id!r}"
    elif pid is not None:
        chosen, what = [w for w in workers if w.pid == pid and w.hostname == host], f"pid {pid} on {host}"
    elif any_host:
        chosen, what = list(workers), f"schema {app.schema!r}"
    else:
        chosen, what = [w for w in workers if w.hostname == host], f"host {host}"
    if not chosen:
        click.echo(f"unhealthy: no worker is registered for {what}", err=True)
        sys.exit(1)
    best = min(chosen, key=lambda w: w.now - w.heartbeat_at)
    age = max(0.0, (best.now - best.heartbeat_at).total_seconds())
    if age > max_age:
        click.echo(
            f"unhealthy: the last heartbeat for {what} was {age:.1f}s ago (worker {best.id}; --max-age {max_age:g}s)",
            err=True,
        )
        sys.exit(1)
    click.echo(f"healthy: worker {best.id} beat {age:.1f}s ago")


# --- jobs ----------------------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """List, show, retry and cancel jobs."""


_STATE_CHOICE = click.Choice([s.value for s in JobState])


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise click.UsageError(f"{text!r} is not a job id (a positive integer)") from None
    if value < 1:
        raise click.UsageError(f"{text!r} is not a job id (a positive integer)")
    return value


@jobs.command("list")
@_LOOKUP_APP
@click.option("--state", "states", multiple=True, type=_STATE_CHOICE, help="Only this state (repeatable).")
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--task", default=None, help="Only this task.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--before-id", default=None, type=click.IntRange(min=1), help="Page: only ids below this one.")
@_JSON
@_common
def jobs_list(
    app_path: str | None,
    states: tuple[str, ...],
    queue: str | None,
    task: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """List jobs, newest first."""
    from ._status import job_dict, render_jobs

    _setup_logging(log_level, log_format)
    app = _make_app(app_path, dsn, schema)
    found = _with_app(
        app,
        lambda a: a.list_jobs(state=states or None, queue=queue, task=task, limit=limit, before_id=before_id),
    )
    if as_json:
        _echo_json([job_dict(j) for j in found])
    else:
        click.echo(render_jobs(found))


@jobs.command("show")
@click.argument("job_id")
@_LOOKUP_APP
@_JSON
@_common
def jobs_show(
    job_id: str,
    app_path: str | None,
    as_json: bool,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Show one job in full: arguments, result, and each error with its traceback."""
    from ._status import job_dict, render_job

    _setup_logging(log_level, log_format)
    ident = _job_id(job_id)
    app = _make_app(app_path, dsn, schema)
    job = _with_app(app, lambda a: a.get_job(ident))
    if as_json:
        _echo_json(job_dict(job))
    else:
        click.echo(render_job(job))


@jobs.command("retry")
@click.argument("job_id", required=False)
@click.option(
    "--state",
    default=None,
    type=click.Choice(["discarded", "cancelled"]),
    help="Retry every job in this state (with --queue/--task to narrow it).",
)
@click.option("--queue", default=None, help="With --state: only this queue.")
@click.option("--task", default=None, help="With --state: only this task.")
@click.option(
    "--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="With --state: at most."
)
@_LOOKUP_APP
@_JSON
@_common
def jobs_retry(
    job_id: str | None,
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    app_path: str | None,
    as_json: bool,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Put a discarded or cancelled job (ID), or all of them (--state), back in their queue."""
    _setup_logging(log_level, log_format)
    if (job_id is None) == (state is None):
        raise click.UsageError("give either a job ID or --state discarded|cancelled, not both or neither")
    if job_id is not None and (queue is not None or task is not None):
        raise click.UsageError("--queue and --task narrow --state; they do not apply to one job ID")
    app = _make_app(app_path, dsn, schema)
    if job_id is not None:
        ident = _job_id(job_id)
        job = _with_app(app, lambda a: a.retry(ident))
        if as_json:
            _echo_json({"retried": [job.id], "skipped": []})
        else:
            click.echo(f"job {job.id} ({job.task}) is available again in queue {job.queue!r}")
        return
    assert state is not None

    async def retry_all(a: App) -> tuple[list[int], list[tuple[int, str]]]:
        retried: list[int] = []
        skipped: list[tuple[int, str]] = []
        before: int | None = None
        while len(retried) + len(skipped) < limit:
            page = await a.list_jobs(
                state=state,
                queue=queue,
                task=task,
                limit=min(500, limit - len(retried) - len(skipped)),
                before_id=before,
            )
            if not page:
                break
            for job in page:
                try:
                    retried.append((await a.retry(job.id)).id)
                except NurseryWorkerError as exc:  # raced with another retry, or a unique key is taken
                    skipped.append((job.id, str(exc)))
            before = page[-1].id
        return retried, skipped

    retried, skipped = _with_app(app, retry_all)
    if as_json:
        _echo_json({"retried": retried, "skipped": [{"id": i, "reason": r} for i, r in skipped]})
        return
    for ident, reason in skipped:
        click.echo(f"skipped job {ident}: {reason}", err=True)
    click.echo(f"retried {len(retried)} {state} job(s)" + (f"; skipped {len(skipped)}" if skipped else ""))


@jobs.command("cancel")
@click.argument("job_id")
@_LOOKUP_APP
@_JSON
@_common
def jobs_cancel(
    job_id: str,
    app_path: str | None,
    as_json: bool,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Cancel a waiting job at once, or ask the worker running it to cancel it."""
    _setup_logging(log_level, log_format)
    ident = _job_id(job_id)
    app = _make_app(app_path, dsn, schema)
    result = _with_app(app, lambda a: a.cancel(ident))
    if as_json:
        _echo_json(
            {"id": result.job.id, "status": result.status, "state": result.job.state.value, "message": result.message}
        )
    else:
        click.echo(result.message)


# --- queues, prune -------------------------------------------------------------------------------


@cli.group()
def queues() -> None:
    """List queues; pause, resume and limit them."""


@queues.command("list")
@_LOOKUP_APP
@_JSON
@_common
def queues_list(
    app_path: str | None, as_json: bool, dsn: str | None, schema: str | None, log_level: str, log_format: str
) -> None:
    """Every queue with jobs or a pause record: running or paused, and its jobs by state."""
    from ._status import queue_dict, render_queues

    _setup_logging(log_level, log_format)
    app = _make_app(app_path, dsn, schema)
    found = _with_app(app, lambda a: a.list_queues())
    if as_json:
        _echo_json([queue_dict(q) for q in found])
    else:
        click.echo(render_queues(found))


def _set_paused(
    name: str, paused: bool, app_path: str | None, as_json: bool, dsn: str | None, schema: str | None
) -> None:
    app = _make_app(app_path, dsn, schema)
    changed = _with_app(app, lambda a: a.pause_queue(name) if paused else a.resume_queue(name))
    if as_json:
        _echo_json({"queue": name, "paused": paused, "changed": changed})
    elif paused:
        click.echo(
            f"queue {name!r} paused: workers stop fetching its jobs; running jobs finish"
            if changed
            else f"queue {name!r} was already paused"
        )
    else:
        click.echo(f"queue {name!r} resumed" if changed else f"queue {name!r} was not paused")


@queues.command("pause")
@click.argument("name")
@_LOOKUP_APP
@_JSON
@_common
def queues_pause(
    name: str, app_path: str | None, as_json: bool, dsn: str | None, schema: str | None, log_level: str, log_format: str
) -> None:
    """Stop every worker from fetching NAME's jobs (running jobs finish; deferring still works)."""
    _setup_logging(log_level, log_format)
    _set_paused(name, True, app_path, as_json, dsn, schema)


@queues.command("limit")
@click.argument("name")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=None, help="Jobs of NAME running at once.")
@click.option("--rate-limit", default=None, help="Starts of NAME's jobs per window: '100/m', '10/s', '30/10s'.")
@click.option("--clear", is_flag=True, help="Lift both limits.")
@_LOOKUP_APP
@_JSON
@_common
def queues_limit(
    name: str,
    max_concurrency: int | None,
    rate_limit: str | None,
    clear: bool,
    app_path: str | None,
    as_json: bool,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Set NAME's limits across every worker and host; each call sets both (an omitted one is lifted)."""
    from ._status import queue_dict

    _setup_logging(log_level, log_format)
    if clear and (max_concurrency is not None or rate_limit is not None):
        raise click.UsageError("--clear lifts both limits; do not combine it with --max-concurrency or --rate-limit")
    if not clear and max_concurrency is None and rate_limit is None:
        raise click.UsageError("give --max-concurrency, --rate-limit, or --clear to lift both")
    app = _make_app(app_path, dsn, schema)
    info = _with_app(app, lambda a: a.set_queue_limits(name, max_concurrency=max_concurrency, rate_limit=rate_limit))
    if as_json:
        _echo_json(queue_dict(info))
    else:
        limits = [f"at most {info.max_concurrency} running"] if info.max_concurrency is not None else []
        limits += [f"at most {info.rate_limit} starts"] if info.rate_limit is not None else []
        click.echo(f"queue {name!r}: " + (", ".join(limits) if limits else "no limits"))


@cli.group()
def breakers() -> None:
    """Show the circuit breakers of tasks (circuit_breaker=)."""


@breakers.command("list")
@_LOOKUP_APP
@_JSON
@_common
def breakers_list(
    app_path: str | None, as_json: bool, dsn: str | None, schema: str | None, log_level: str, log_format: str
) -> None:
    """Every circuit breaker: closed, open (jobs held back) or half open (a probe runs), and its failures."""
    from ._status import breaker_dict, render_breakers

    _setup_logging(log_level, log_format)
    app = _make_app(app_path, dsn, schema)
    found = _with_app(app, lambda a: a.list_breakers())
    if as_json:
        _echo_json([breaker_dict(b) for b in found])
    else:
        click.echo(render_breakers(found))


@queues.command("resume")
@click.argument("name")
@_LOOKUP_APP
@_JSON
@_common
def queues_resume(
    name: str, app_path: str | None, as_json: bool, dsn: str | None, schema: str | None, log_level: str, log_format: str
) -> None:
    """Let workers fetch NAME's jobs again; they are notified at once."""
    _setup_logging(log_level, log_format)
    _set_paused(name, False, app_path, as_json, dsn, schema)


@cli.command()
@click.option(
    "--older-than",
    default="7d",
    show_default=True,
    help="Finished over this long ago: seconds, or a number with s, m, h, d or w.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["completed", "discarded", "cancelled"]),
    help="Only this final state (repeatable; default: all three).",
)
@_LOOKUP_APP
@_JSON
@_common
def prune(
    older_than: str,
    states: tuple[str, ...],
    app_path: str | None,
    as_json: bool,
    dsn: str | None,
    schema: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Delete finished jobs (and their results) older than --older-than, in bounded batches."""
    _setup_logging(log_level, log_format)
    seconds = _duration(older_than)
    chosen = states or ("completed", "discarded", "cancelled")
    app = _make_app(app_path, dsn, schema)
    count = _with_app(app, lambda a: a.prune(older_than=seconds, states=chosen))
    if as_json:
        _echo_json({"pruned": count, "older_than": seconds, "states": list(chosen)})
    else:
        age = f"{older_than}s" if older_than.replace(".", "", 1).isdigit() else older_than
        click.echo(f"pruned {count} job(s) ({', '.join(chosen)}) finished over {age} ago")


# --- periodic jobs ----------------------------------------------------------------------------


@cli.group()
def cron() -> None:
    """Periodic jobs: list the schedules, their next run and their last job."""


@cron.command("list")
@_LOOKUP_APP
@_JSON
@_common
def cron_list(
    app_path: str | None, as_json: bool, dsn: str | None, schema: str | None, log_level: str, log_format: str
) -> None:
    """Every periodic schedule: expression, time zone, task, next run, last tick and last job.

    The schedules are read from the database (a worker registers those of its queues when it
    starts); with --app, the app's own are listed too, and those it does not define are marked.
    Next runs are computed from the database's clock.
    """
    from ._status import periodic_dict, render_periodic

    _setup_logging(log_level, log_format)
    app = _make_app(app_path, dsn, schema)
    found = _with_app(app, lambda a: a.list_periodic())
    if as_json:
        _echo_json([periodic_dict(p) for p in found])
    else:
        click.echo(render_periodic(found, app_given=bool(app_path)))


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
