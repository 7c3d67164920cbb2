"""``nursery-worker run``: one worker in this process, or (``--processes N``) a supervisor of N."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click

from .._app import App
from .._config import OptionInfo, WorkerConfig, worker_options
from .._errors import ConfigurationError, NurseryWorkerError
from .._process import set_title
from .._signals import relay_signals, single_error
from .._worker import Worker, open_worker
from ._context import CliContext, EnvOption, app_option, common_options, fail
from ._types import DURATION, POSITIVE_DURATION

T = TypeVar("T")
logger = logging.getLogger("nursery_worker.cli")

#: Worker options that only Python can pass (a mapping has no command-line form).
_PYTHON_ONLY = frozenset({"retention"})


def _worker_option(info: OptionInfo) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """The ``run`` option of one worker option, generated from its declaration in ``_config``.

    Its value is checked by ``WorkerConfig`` itself (see :func:`_worker_settings`), so a bound is
    declared once too; click converts only the type.
    """
    flag = "--" + info.name.replace("_", "-")
    text = info.help[0].upper() + info.help[1:]
    env = _env(info.name)
    if isinstance(info.default, bool):
        if info.default:  # on by default: --listen/--no-listen
            return click.option(f"{flag}/--no-{flag[2:]}", default=True, show_default=True, help=text, **env)
        return click.option(flag, is_flag=True, help=text, **env)
    if info.name == "queues":  # the comma-separated form; unset: the app's queues
        text = (
            "The queues to work, comma-separated. Default: 'default' and every queue the app's tasks and "
            "periodic schedules name; a task whose queue is left out is warned of at start."
        )
        return click.option(flag, default=None, help=text, **env)
    # Every float option is a number of seconds, so it takes the compound forms too (1h30m, 500ms).
    kind: click.ParamType[Any] = click.INT if info.type.startswith("int") else DURATION
    return click.option(flag, default=info.default, type=kind, show_default=info.default is not None, help=text, **env)


def _env(name: str) -> dict[str, Any]:
    """``envvar=`` of the ``run`` option *name*: ``NURSERY_WORKER_<NAME>``, shown in ``--help``."""
    return {"envvar": f"NURSERY_WORKER_{name.upper()}", "show_envvar": True, "cls": EnvOption}


def _worker_options(func: Callable[..., T]) -> Callable[..., T]:
    for info in reversed(worker_options()):
        if info.name not in _PYTHON_ONLY:
            func = _worker_option(info)(func)
    return func


def _worker_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Take the worker's options out of the command's *params*, checked by ``WorkerConfig``.

    Returns:
        ``open_worker``'s keyword arguments.

    Raises:
        click.BadParameter: an option's value is invalid (the message is the config's own).
    """
    settings = {o.name: params.pop(o.name) for o in worker_options() if o.name not in _PYTHON_ONLY}
    try:
        WorkerConfig.from_options("open_worker", settings)
    except ConfigurationError as exc:
        bad = next((name for name in settings if f"({name}=" in str(exc)), None)
        hint = f"--{bad.replace('_', '-')}" if bad else None
        raise click.BadParameter(str(exc), param_hint=hint) from None
    return settings


def _supervisor_options(func: Callable[..., T]) -> Callable[..., T]:
    """The options of ``run --processes N`` (the supervisor); see ``_run_supervised``."""
    options = [
        click.option(
            "--processes",
            **_env("processes"),
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help="Worker processes; above 1, a supervisor runs and restarts them.",
        ),
        click.option(
            "--health-timeout",
            **_env("health_timeout"),
            default=10.0,
            show_default=True,
            type=POSITIVE_DURATION,
            help="Seconds without a report before a child is killed and replaced (a hung event loop).",
        ),
        click.option(
            "--max-restarts",
            **_env("max_restarts"),
            default=5,
            show_default=True,
            type=click.IntRange(min=0),
            help="Restarts of one child within --restart-window before the supervisor gives up.",
        ),
        click.option(
            "--restart-window",
            **_env("restart_window"),
            default=60.0,
            show_default=True,
            type=POSITIVE_DURATION,
            help="Seconds.",
        ),
        click.option(
            "--restart-delay",
            **_env("restart_delay"),
            default=1.0,
            show_default=True,
            type=POSITIVE_DURATION,
            help="First restart's backoff in seconds; doubles with each recent crash (to 30 s).",
        ),
        click.option(
            "--status-interval",
            **_env("status_interval"),
            default=60.0,
            show_default=True,
            type=POSITIVE_DURATION,
            help="Seconds between the supervisor's per-child status lines.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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


@click.command()
@app_option("The App to run, as 'package.module:app'.", required=True, **_env("app"))
@_worker_options
@click.option(
    "--backend",
    default="asyncio",
    type=click.Choice(["asyncio", "trio"]),
    show_default=True,
    **_env("backend"),
    help="The event loop your tasks are written for.",
)
@click.option(
    "--metrics-port",
    default=None,
    **_env("metrics_port"),
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus /metrics, /healthz and /readyz on this port (needs nursery-worker[metrics]).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    **_env("metrics_host"),
    show_default=True,
    help="The address the metrics endpoint binds; 0.0.0.0 for every interface.",
)
@_supervisor_options
@click.option(
    "--reload",
    is_flag=True,
    help="Development: restart the worker (gracefully) when a .py file of the app's package changes "
    "(needs nursery-worker[reload]).",
    **_env("reload"),
)
@common_options
def run(
    ctx: CliContext, backend: str, metrics_port: int | None, metrics_host: str, reload: bool, **options: Any
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once).

    With --processes N above 1, run a supervisor of N worker processes instead: SIGTERM/SIGINT stop
    them all gracefully (again: at once), SIGHUP restarts them one at a time. With --reload, run the
    worker as a child process and restart it when the app's source files change.
    """
    settings = _worker_settings(options)
    supervisor = options  # what is left: the supervisor's options
    if reload:
        _run_reloading(ctx, backend, settings, supervisor)
        return
    # --dsn may hold a password, and /proc/PID/cmdline is readable by every user: replace the command
    # line with a title naming the app (setproctitle overwrites argv in place), before the app is
    # imported or anything connects. $NURSERY_WORKER_DSN never shows there at all.
    if supervisor["processes"] > 1:
        set_title(f"nursery-worker: supervisor [app={ctx.app_path} processes={supervisor['processes']}]")
    else:
        queues = ",".join(q.strip() for q in (settings["queues"] or "").split(",") if q.strip()) or "the app's"
        set_title(f"nursery-worker: worker [app={ctx.app_path} queues={queues}]")
    if backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise click.UsageError("--backend trio needs trio: pip install 'nursery-worker[trio]'") from None
    if metrics_port is not None:
        from .._metrics import check_available

        try:
            check_available()
        except NurseryWorkerError as exc:
            raise click.UsageError(f"--metrics-port: {exc}") from None
    app = ctx.app()
    if supervisor["processes"] == 1 and not settings["queues"]:  # now that the app names its queues
        set_title(f"nursery-worker: worker [app={ctx.app_path} queues={','.join(app.queue_names())}]")
    if supervisor["processes"] > 1:
        if settings.pop("once"):
            app.close()
            raise click.UsageError("--once runs a single process: drop --processes or --once")
        supervisor.update(metrics_port=metrics_port, metrics_host=metrics_host)
        _run_supervised(ctx, app, backend, settings, supervisor)
        return
    # The grace for running jobs, a cancelled job's grace, the final writes (10 s) and a margin.
    watchdog = _ExitWatchdog(settings["shutdown_timeout"] + settings["cancel_grace"] + 15.0)

    async def main() -> Worker | None:
        # Signals are caught from the very start: during startup a signal cancels the start (which
        # still deregisters and runs shutdown hooks); once running, the first signal stops
        # gracefully and the second stops at once.
        running: list[Worker] = []

        def current() -> Worker | None:
            return running[0] if running else None

        async with anyio.create_task_group() as tg:
            run_scope = anyio.CancelScope()
            await tg.start(_relay_signals, current, run_scope.cancel, lambda: watchdog.arm(current))
            with run_scope:
                async with open_worker(app, **settings) as worker:
                    running.append(worker)
                    if metrics_port is not None:
                        from .._metrics import serve_metrics

                        await tg.start(functools.partial(serve_metrics, worker, metrics_port, host=metrics_host))
                    await worker.wait_stopped()
            tg.cancel_scope.cancel()
        return current()

    try:
        worker = _run_loop(main, backend)
    finally:
        watchdog.disarm()
        app.close()
    if worker is None:
        return
    stats = worker.stats()
    if settings["once"]:
        # Late outcomes the database ignored (the jobs were rescued meanwhile) are in no other count.
        ignored = f", {stats.ignored} ignored (rescued meanwhile)" if stats.ignored else ""
        click.echo(f"processed {stats.processed} job(s): {stats.completed} completed, {stats.failed} failed{ignored}")
    if worker.sync_threads_alive:
        # Plain-def jobs abandoned at their timeout or at shutdown cannot be interrupted; their jobs
        # are already back in the queue or recorded. Do not let them hold the process open.
        logger.warning("exiting with %d abandoned sync job thread(s) still running", worker.sync_threads_alive)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _relay_signals(
    worker: Callable[[], Worker | None],
    during_startup: Callable[[], None],
    on_signal: Callable[[], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Catch SIGTERM and SIGINT until cancelled, and relay each to *worker()* (see ``relay_signals``).

    Ready (``started()``) once the handlers are installed. *on_signal* is called at every signal
    first (it arms the exit watchdog).
    """
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        await relay_signals(signals, worker, during_startup, on_signal=on_signal)


def _run_reloading(ctx: CliContext, backend: str, settings: dict[str, Any], supervisor: dict[str, Any]) -> None:
    """``run --reload``: the reloader in this process (which never imports the app), the worker in a child."""
    from . import _reload

    if supervisor["processes"] > 1:
        raise click.UsageError("--reload restarts one worker process: drop --processes or --reload")
    if settings["once"]:
        raise click.UsageError("--reload restarts a long-running worker: drop --once or --reload")
    if backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise click.UsageError("--backend trio needs trio: pip install 'nursery-worker[trio]'") from None
    _reload.check_available()
    assert ctx.app_path is not None  # --app is required
    root = _reload.source_root(ctx.app_path)
    set_title(f"nursery-worker: reloader [app={ctx.app_path}]")
    status = _run_loop(lambda: _reload.reload(sys.argv[1:], root), backend)
    if status:
        sys.exit(status if status > 0 else 128 - status)


def _run_supervised(
    ctx: CliContext, app: App, backend: str, settings: dict[str, Any], supervisor: dict[str, Any]
) -> None:
    """``run --processes N``: the supervisor, in this process; the app was imported to validate it."""
    from .._supervisor import run_supervisor

    assert ctx.app_path is not None  # --app is required
    app.close()  # the supervisor itself never touches the database
    call = functools.partial(
        run_supervisor,
        ctx.app_path,
        backend=backend,
        dsn=ctx.dsn,
        log_level=ctx.log_level,
        **settings,
        **supervisor,
    )
    _run_loop(call, backend)


def _run_loop(main: Callable[[], Awaitable[T]], backend: str) -> T:
    """``anyio.run(main)``; the one error out of its task groups, and unexpected errors as one line."""
    try:
        with single_error():
            return anyio.run(main, backend=backend)
    except (NurseryWorkerError, click.ClickException):
        raise
    except Exception as exc:
        raise fail(exc) from None
