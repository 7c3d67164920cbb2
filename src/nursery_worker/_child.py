"""A supervised worker process: ``python -m nursery_worker._child``, started by the supervisor.

Each child is a fresh interpreter (spawn, never fork: no inherited locks, threads or connection
pools). Nothing is pickled: the child re-imports the app by its ``module:attr`` path, and its options
arrive as JSON in ``$NURSERY_WORKER_CHILD`` (the environment rather than argv, so that a DSN with a
password never shows in ``ps``).

The child reports to the supervisor over a dedicated pipe (the fd named in the options; stdout and
stderr belong to the user's code), one JSON object per line, about once a second and on every state
change. A report is written from the event loop, so reports that stop mean a hung loop: the
supervisor kills and replaces the child. A startup failure is reported once, as a ``fatal`` report
carrying the traceback, and the child exits with :data:`EXIT_STARTUP_FAILED`.

Signals: SIGTERM stops the worker gracefully, a second SIGTERM at once (as ``nursery-worker run``);
SIGUSR1 is the supervisor's "stop now" (two SIGTERMs sent close together arrive as one).
SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the supervisor, which
receives it too, decides what each child is told.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import traceback
from typing import Any

import anyio

from ._app import App
from ._config import WorkerConfig
from ._errors import NurseryWorkerError
from ._logging import setup_logging
from ._metrics import serve_metrics
from ._models import Supervision
from ._process import ENV_OPTIONS, EXIT_STARTUP_FAILED, HARD_STOP_SIGNAL, ChildOptions, import_app, set_title
from ._signals import relay_signals, single_error
from ._state import WorkerState
from ._worker import Worker, serve_worker

logger = logging.getLogger("nursery_worker.child")


def _attach_trace_context() -> None:
    """Continue the supervisor's trace: W3C ``TRACEPARENT``/``TRACESTATE`` from the environment."""
    traceparent = os.environ.get("TRACEPARENT")
    if not traceparent:
        return
    try:
        from opentelemetry import context, propagate
    except ImportError:
        return
    carrier = {"traceparent": traceparent}
    if tracestate := os.environ.get("TRACESTATE"):
        carrier["tracestate"] = tracestate
    # Attached before the event loop starts, so every task of the worker inherits it.
    context.attach(propagate.extract(carrier))


class Reporter:
    """Writes JSON-line reports to the supervisor's pipe without ever blocking the event loop."""

    def __init__(self, options: ChildOptions) -> None:
        self.options = options
        self.fd = options.report_fd
        os.set_blocking(self.fd, False)
        self.broken = False
        self.queues = ",".join(options.worker.get("queues") or ["the app's"])
        self._title = ""
        self.metrics_port: int | None = None

    def send(self, message: dict[str, Any]) -> None:
        if self.broken:
            return
        line = (json.dumps({"pid": os.getpid(), **message}, default=str) + "\n").encode()
        try:
            os.write(self.fd, line)
        except BlockingIOError:
            pass  # the supervisor is behind; the next report carries the same news
        except OSError:  # EPIPE: the supervisor is gone
            self.broken = True

    def title(self, state: str, processed: int = 0) -> None:
        title = f"nursery-worker: worker {self.options.index} [queues={self.queues}] processed={processed}"
        if state == WorkerState.INITIALIZING.value:
            state = WorkerState.STARTING.value
        if state != WorkerState.RUNNING.value:
            title += f" ({state})"
        if title != self._title:
            self._title = title
            set_title(title)

    def report(self, worker: Worker | None, state: str) -> None:
        if worker is None:
            self.send({"state": state})
            self.title(state)
            return
        s = worker.stats()
        self.send(
            {
                "state": state,
                "worker_id": worker.id,
                "processed": s.processed,
                "completed": s.completed,
                "failed": s.failed,
                "ignored": s.ignored,
                "running": s.running,
                "last_heartbeat": s.last_heartbeat.isoformat() if s.last_heartbeat else None,
                "breakers_open": sorted(worker.breakers_open),
                **self._metrics(worker),
            }
        )
        self.title(state, s.processed)

    def _metrics(self, worker: Worker) -> dict[str, Any]:
        if self.metrics_port is None or worker.metrics is None:
            return {}
        return {"metrics_port": self.metrics_port, "not_ready": worker.metrics.not_ready()}

    def fatal(self, exc: BaseException) -> None:
        expected = isinstance(exc, NurseryWorkerError)
        self.send(
            {
                "state": "error",
                "fatal": {
                    "type": type(exc).__qualname__,
                    "message": str(exc),
                    # A NurseryWorkerError's message names the fix; anything else needs its traceback.
                    "traceback": None if expected else "".join(traceback.format_exception(exc)),
                },
            }
        )

    async def serve(self, worker: Worker, on_orphaned: Any) -> None:
        """Report every ``report_interval`` and on each state change; look every 0.1 s."""
        last_state = ""
        next_at = 0.0
        orphaned = False
        while True:
            state = worker.state.value
            now = anyio.current_time()
            if state != last_state or now >= next_at:
                self.report(worker, state)
                last_state, next_at = state, now + self.options.report_interval
                if self.broken and not orphaned:
                    orphaned = True
                    logger.warning("the supervisor is gone: stopping")
                    on_orphaned()
            await anyio.sleep(min(0.1, self.options.report_interval))


class _StartupFailed(Exception):
    pass


async def _serve(app: App, options: ChildOptions, reporter: Reporter) -> Worker:
    supervision = Supervision(
        supervisor_id=options.supervisor_id,
        child_index=options.index,
        restarts=options.restarts,
        last_exit=options.last_exit,
    )
    try:
        worker = Worker(app, WorkerConfig(**options.worker), supervision=supervision)
    except Exception as exc:  # no DSN, an invalid option: the child cannot start
        raise _StartupFailed from exc
    reporter.queues = ",".join(worker.config.queues)  # resolved from the app when not given
    started = False
    with anyio.open_signal_receiver(signal.SIGTERM, HARD_STOP_SIGNAL) as signals:
        async with anyio.create_task_group() as tg:
            run_scope = anyio.CancelScope()

            def hard_stop() -> None:
                # The supervisor's "stop now". A second SIGTERM would do, but two SIGTERMs sent
                # close together reach a process as one (standard signals are not queued).
                if started:
                    logger.warning("the supervisor asks to stop now")
                    worker.stop(hard=True)
                else:
                    run_scope.cancel()

            def orphaned() -> None:
                if started:
                    worker.stop()
                else:
                    run_scope.cancel()

            tg.start_soon(
                functools.partial(
                    relay_signals,
                    signals,
                    lambda: worker if started else None,
                    run_scope.cancel,
                    actions={HARD_STOP_SIGNAL: hard_stop},
                )
            )
            tg.start_soon(reporter.serve, worker, orphaned)
            with run_scope:
                try:
                    async with serve_worker(worker):
                        started = True
                        if options.metrics:
                            # On loopback only: the supervisor's endpoint is the one exposed.
                            reporter.metrics_port = await tg.start(serve_metrics, worker, 0)
                        await worker.wait_stopped()
                except Exception as exc:
                    if not started:
                        raise _StartupFailed from exc
                    raise
            tg.cancel_scope.cancel()
    reporter.report(worker, worker.state.value)
    return worker


def main() -> None:
    """Run one supervised worker until SIGTERM; exit 0 after a clean stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    options = ChildOptions.from_json(os.environ[ENV_OPTIONS])
    reporter = Reporter(options)
    reporter.report(None, WorkerState.STARTING.value)
    setup_logging(
        options.log_level,
        os.environ.get("NURSERY_WORKER_LOG_FORMAT", "console"),
        prefix=f"[worker {options.index} pid {os.getpid()}] ",
        static={"child": options.index, "pid": os.getpid()},
    )
    for entry in reversed(options.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    _attach_trace_context()
    try:
        app = import_app(options.app)
        if options.dsn is not None:
            app.close()  # this process owns the app: release what its module may have opened at import
            app.configure_database(dsn=options.dsn)
    except BaseException as exc:
        reporter.fatal(exc)
        sys.exit(EXIT_STARTUP_FAILED)
    try:
        with single_error():
            worker = anyio.run(_serve, app, options, reporter, backend=options.backend)
    except _StartupFailed as exc:
        reporter.fatal(exc.__cause__ or exc)
        sys.exit(EXIT_STARTUP_FAILED)
    except Exception as exc:
        logger.error("worker %d failed", options.index, exc_info=exc)
        reporter.send({"state": "error", "error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    finally:
        # The worker has stopped: a late SIGTERM or hard stop from the supervisor must not kill the exit.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(HARD_STOP_SIGNAL, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            app.close()
    if worker.sync_threads_alive:
        # As `nursery-worker run`: abandoned plain-def jobs are already written back; do not wait for them.
        logger.warning("exiting with %d abandoned sync job thread(s) still running", worker.sync_threads_alive)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
