"""The supervisor: N worker processes, each a fresh interpreter, watched by one structured program.

::

    run_supervisor                            root task group
    ├─ signals                                SIGTERM/SIGINT: stop (again: hard); SIGHUP: rolling restart
    ├─ supervise                              decides on every child exit: restart, give up, or done
    ├─ status log                             one line per child every status_interval
    ├─ one task per child process             spawn; read its reports; kill it if they stop; wait
    ├─ respawn (after a backoff)              one per pending restart
    ├─ rolling restart                        replacement first, RUNNING, then retire the old one
    └─ kill timer                             after a stop: SIGKILL what outlived the deadline

Decisions (restart or not, crash loop, clean stop) are made in synchronous methods from the child's
exit and the slot's history; the tasks only apply them. A child's own pipe is its health signal:
reports are written from the child's event loop, so silence longer than ``health_timeout`` means a
hung loop, and the child is SIGKILLed and replaced. Its executing jobs are rescued by the reapers of
its siblings once its heartbeat lapses (``rescue_after``), as for any dead worker.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Unpack

import anyio
import anyio.abc
import attrs

from ._app import App
from ._config import SupervisedOptions, WorkerConfig, document_options
from ._durations import format_duration
from ._errors import ConfigurationError, SupervisorError
from ._process import ENV_OPTIONS, HARD_STOP_SIGNAL, ChildOptions, import_app
from ._signals import relay_signals

logger = logging.getLogger("nursery_worker.supervisor")

_LEVELS = ("debug", "info", "warning", "error")


@attrs.frozen(kw_only=True)
class ChildStatus:
    """One child process as its supervisor last saw it (see :meth:`Supervisor.children`).

    Attributes:
        index: the child's slot, ``0 .. processes - 1``; a replacement keeps its slot.
        pid: the process id (None while it is being spawned).
        state: ``spawning``, then the worker's state as reported (``starting``, ``running``,
            ``stopping``, ``stopped``, ``error``).
        uptime: seconds since this process was spawned.
        restarts: how many times this slot's process was replaced after a crash or a hang.
        processed, failed, running: the worker's counters at its last report.
        ignored: its late outcomes the database ignored (their jobs had been rescued from it).
        last_report: seconds since its last report (None before the first).
        worker_id: its id in the workers table (None before it reported one).
        breakers_open: tasks whose open circuit breaker held jobs back at the child's last claim.
    """

    index: int
    pid: int | None
    state: str
    uptime: float
    restarts: int
    processed: int
    failed: int
    running: int
    last_report: float | None
    worker_id: str | None
    breakers_open: tuple[str, ...] = ()
    ignored: int = 0


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """The options of :func:`run_supervisor`, validated."""

    app_path: str
    processes: int
    worker: WorkerConfig
    backend: str
    dsn: str | None
    health_timeout: float
    start_timeout: float
    max_restarts: int
    restart_window: float
    restart_delay: float
    max_restart_delay: float
    kill_margin: float
    status_interval: float
    log_level: str
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @property
    def report_interval(self) -> float:
        # Several reports fit into one health_timeout, so one late report is not a hang.
        return min(1.0, self.health_timeout / 4)


@attrs.define(eq=False)
class _Slot:
    index: int
    restarts: int = 0
    #: How the slot's last process that was restarted ended, for the workers table (the dashboard).
    last_exit: str | None = None
    current: _Child | None = None
    candidate: _Child | None = None  # a rolling restart's replacement, until it is RUNNING
    crashes: collections.deque[float] = attrs.field(factory=collections.deque)


@attrs.define(eq=False)
class _Child:
    slot: _Slot
    restarts: int
    spawned_at: float = attrs.field(factory=time.monotonic)
    process: anyio.abc.Process | None = None
    state: str = "spawning"
    report: dict[str, Any] = attrs.field(factory=dict)
    last_report_at: float | None = None
    ever_running: bool = False
    fatal: dict[str, Any] | None = None
    hung: bool = False
    killed: bool = False  # SIGKILLed by the supervisor at a stop deadline
    terms_sent: int = 0
    retiring: bool = False
    returncode: int | None = None
    running_event: anyio.Event = attrs.field(factory=anyio.Event)
    exited: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    def name(self) -> str:
        return f"child {self.slot.index} (pid {self.pid})"

    def send(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def terminate(self) -> None:
        self.terms_sent += 1
        self.send(signal.SIGTERM)

    def stop_gracefully(self) -> None:
        """SIGTERM, once: the child reads a second SIGTERM as its hard stop (issue 17).

        A retiring child of a rolling restart already had its SIGTERM; the supervisor's own
        graceful stop must not turn that into a hard stop, which would cut its grace period short.
        """
        if self.terms_sent == 0:
            self.terminate()

    def stop_now(self) -> None:
        """The child's hard stop: its own signal, since two SIGTERMs close together arrive as one."""
        self.terms_sent += 1
        self.send(HARD_STOP_SIGNAL)

    def exit_reason(self) -> str:
        if self.hung:
            return "hung (no report within the health timeout) and was killed"
        code = self.returncode
        if code is None:
            return "is still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name}"
        return f"exited with code {code}"

    def status(self) -> ChildStatus:
        now = time.monotonic()
        r = self.report
        return ChildStatus(
            index=self.slot.index,
            pid=self.pid,
            state=self.state,
            uptime=now - self.spawned_at,
            restarts=self.restarts,
            processed=int(r.get("processed") or 0),
            failed=int(r.get("failed") or 0),
            running=int(r.get("running") or 0),
            last_report=None if self.last_report_at is None else now - self.last_report_at,
            worker_id=r.get("worker_id"),
            breakers_open=tuple(r.get("breakers_open") or ()),
            ignored=int(r.get("ignored") or 0),
        )


class Supervisor:
    """A running supervisor, as handed out by ``await task_group.start(run_supervisor, ...)``.

    Attributes:
        id: unique for this supervisor (``host:pid``), recorded on its children's worker rows.
        config: the validated options.
    """

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self._slots = [_Slot(index=i) for i in range(config.processes)]
        self._live: set[_Child] = set()
        self._stopping = False
        self._hard = False
        self._failure: str | None = None
        self._unclean: list[str] = []
        self._restarting = False
        self._started = anyio.Event()
        self._stopped = anyio.Event()
        self._tracebacks: set[str] = set()
        self._kill_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        #: The port of the metrics endpoint once it listens (with ``metrics_port``), else None.
        self.metrics_port: int | None = None
        # Every child's exit, and None as a wake-up when a stop finds no child alive.
        self._exits_in, self._exits = anyio.create_memory_object_stream[_Child | None](math.inf)

    def __repr__(self) -> str:
        return f"<Supervisor {self.id} processes={self.config.processes} live={len(self._live)}>"

    # --- public controls ----------------------------------------------------------------------

    def children(self) -> tuple[ChildStatus, ...]:
        """The current child of each slot (and a rolling restart's replacement), as last reported.

        Returns:
            One :class:`ChildStatus` per live child process, by slot.
        """
        live = sorted(self._live, key=lambda c: (c.slot.index, c.spawned_at))
        return tuple(c.status() for c in live)

    def metrics_ports(self) -> list[tuple[int, int]]:
        """``(slot, port)`` of each current child serving metrics (with ``metrics_port``)."""
        out = []
        for slot in self._slots:
            child = slot.current
            if child is not None and child.alive and isinstance(child.report.get("metrics_port"), int):
                out.append((slot.index, int(child.report["metrics_port"])))
        return out

    def not_ready(self) -> list[str]:
        """Why the supervisor is not ready (empty when every child is RUNNING and ready)."""
        if self._stopping:
            return ["the supervisor is stopping"]
        reasons = []
        for slot in self._slots:
            child = slot.current
            if child is None or not child.alive:
                reasons.append(f"child {slot.index} is restarting")
            elif child.state != "running":
                reasons.append(f"child {slot.index} is {child.state}")
            elif "not_ready" not in child.report:
                # Its worker runs, but its metrics endpoint (which tells its readiness) is not up yet.
                reasons.append(f"child {slot.index} has not reported its readiness yet")
            elif child.report["not_ready"]:
                reasons.append(f"child {slot.index}: " + "; ".join(map(str, child.report["not_ready"])))
        return reasons

    def stop(self, *, hard: bool = False) -> None:
        """Stop every child; returns at once (``run_supervisor`` returns once they have exited).

        Graceful (default): SIGTERM to each child, which drains like a single worker; any child
        still alive ``shutdown_timeout + kill_margin`` seconds later is SIGKILLed. A child that a
        rolling restart is already retiring got its SIGTERM then and is not sent another (a
        second SIGTERM is a child's hard stop): it keeps draining within the deadline that began
        at its retirement. Hard (or a
        second call): SIGUSR1, which makes each child cancel its jobs and hand them back now;
        SIGKILL after ``kill_margin``.

        Args:
            hard: skip the children's grace period.
        """
        if not self._stopping:
            self._stopping = True
            self._started.set()
            for child in list(self._live):
                child.stop_gracefully()
            if not self._live:
                self._notify(None)
            self._set_kill_deadline(self.config.worker.shutdown_timeout + self.config.kill_margin)
            if not hard:
                return
        if not self._hard:
            self._hard = True
            for child in list(self._live):
                if child.terms_sent < 2 and child.state != "stopped":
                    child.stop_now()
            self._set_kill_deadline(self.config.kill_margin)

    def restart(self) -> None:
        """Replace every child, one at a time, without a pause in processing (what SIGHUP does).

        For each slot a new process is started first; once it reports RUNNING the old one is
        stopped gracefully. New code is picked up because each child imports the app afresh. If a
        replacement fails to start, the restart stops there and the old children keep running.
        """
        if self._stopping:
            logger.warning("rolling restart ignored: the supervisor is stopping")
            return
        if self._restarting:
            logger.warning("rolling restart ignored: one is already under way")
            return
        assert self._tg is not None
        self._restarting = True
        self._tg.start_soon(self._rolling_restart)

    # --- decisions ----------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            logger.error("%s; stopping every child", reason)
        self.stop()

    def _log_traceback_once(self, child: _Child) -> None:
        fatal = child.fatal or {}
        text = fatal.get("traceback") or f"{fatal.get('type')}: {fatal.get('message')}"
        if text not in self._tracebacks:
            self._tracebacks.add(text)
            logger.error("%s failed to start:\n%s", child.name(), text.rstrip())

    def _startup_error(self, child: _Child) -> str:
        fatal = child.fatal or {}
        message = " ".join(str(fatal.get("message", "")).split())
        detail = f"{fatal.get('type')}: {message}" if fatal.get("traceback") else message
        return f"{child.name()} failed to start: {detail}"

    def _on_exit(self, child: _Child) -> None:
        """Decide what a child's exit means. Synchronous: it only schedules what is to happen."""
        slot = child.slot
        reason = child.exit_reason()
        if self._stopping:
            # SIGTERM is harmless before the worker ran (nothing claimed) and after it had stopped
            # (everything written back, deregistered): a second signal can meet a child on its way out.
            harmless = not child.ever_running or child.state == "stopped"
            clean = child.returncode == 0 or (child.returncode in (-signal.SIGTERM, -HARD_STOP_SIGNAL) and harmless)
            if child.killed or child.hung or not clean:
                self._unclean.append(f"{child.name()} {reason}")
                logger.warning("%s %s while stopping", child.name(), reason)
            else:
                logger.info("%s stopped", child.name())
            return
        if child.retiring or child is slot.candidate:
            return  # the rolling restart handles its own children
        if child is not slot.current:
            return
        slot.current = None
        if child.fatal is not None:
            self._log_traceback_once(child)
            if not self._started.is_set():
                self._fail(self._startup_error(child) + " (its traceback is above)")
                return
        if slot.candidate is not None:
            logger.warning("%s %s; its replacement is starting", child.name(), reason)
            return
        now = time.monotonic()
        slot.crashes.append(now)
        while slot.crashes and slot.crashes[0] < now - self.config.restart_window:
            slot.crashes.popleft()
        if len(slot.crashes) > self.config.max_restarts:
            self._fail(
                f"{child.name()} {reason}: crash loop, {len(slot.crashes)} exits within "
                f"{self.config.restart_window:g}s (max_restarts={self.config.max_restarts})"
            )
            return
        delay = min(self.config.max_restart_delay, self.config.restart_delay * 2 ** (len(slot.crashes) - 1))
        slot.restarts += 1
        slot.last_exit = reason
        logger.warning("%s %s; restarting it in %.1fs (restart %d)", child.name(), reason, delay, slot.restarts)
        assert self._tg is not None
        self._tg.start_soon(self._respawn, slot, delay)

    # --- tasks --------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot, *, candidate: bool = False) -> _Child:
        child = _Child(slot=slot, restarts=slot.restarts)
        if candidate:
            slot.candidate = child
        else:
            slot.current = child
        self._live.add(child)
        assert self._tg is not None
        self._tg.start_soon(self._run_child, child, name=f"child {slot.index}")
        return child

    async def _respawn(self, slot: _Slot, delay: float) -> None:
        await anyio.sleep(delay)
        if not self._stopping and slot.current is None and slot.candidate is None:
            self._spawn(slot)

    def _child_env(self, child: _Child, report_fd: int) -> dict[str, str]:
        c = self.config
        options = ChildOptions(
            app=c.app_path,
            index=child.slot.index,
            supervisor_id=self.id,
            restarts=child.restarts,
            last_exit=child.slot.last_exit,
            report_fd=report_fd,
            report_interval=c.report_interval,
            backend=c.backend,
            dsn=c.dsn,
            log_level=c.log_level,
            sys_path=[p for p in sys.path if isinstance(p, str)],
            worker=c.worker.to_options(),
            metrics=c.metrics_port is not None,
        )
        return {**os.environ, **_trace_env(), ENV_OPTIONS: options.to_json()}

    async def _run_child(self, child: _Child) -> None:
        read_fd, write_fd = os.pipe()
        try:
            try:
                env = self._child_env(child, write_fd)
                child.process = await anyio.open_process(
                    [sys.executable, "-m", "nursery_worker._child"],
                    env=env,
                    pass_fds=(write_fd,),
                    stdin=subprocess.DEVNULL,
                    stdout=None,
                    stderr=None,
                )
            finally:
                os.close(write_fd)
            logger.info("%s started", child.name())
            if self._stopping:
                child.stop_gracefully()
                if self._hard:
                    child.stop_now()
            await self._watch(child, read_fd)
            await child.process.wait()
        except BaseException:
            # Cancelled from outside (or a bug): never leave a child behind. A hard stop hands its
            # jobs back at once; SIGKILL if even that does not end it within kill_margin.
            with anyio.CancelScope(shield=True):
                await self._hard_stop_one(child)
            raise
        finally:
            os.close(read_fd)
            if child.process is not None:
                child.returncode = child.process.returncode
                with anyio.CancelScope(shield=True):
                    await child.process.aclose()
            child.state = "exited"
            self._live.discard(child)
            child.exited.set()
            self._notify(child)

    def _notify(self, child: _Child | None) -> None:
        # After the supervising task has gone (cancelled from outside) nobody needs to know.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._exits_in.send_nowait(child)

    async def _hard_stop_one(self, child: _Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        child.terminate()
        child.stop_now()
        with anyio.move_on_after(self.config.kill_margin):
            await process.wait()
            return
        child.killed = True
        child.send(signal.SIGKILL)
        await process.wait()

    async def _watch(self, child: _Child, fd: int) -> None:
        """Read the child's reports until its pipe closes (it exited), or kill it if they stop."""
        os.set_blocking(fd, False)
        buffer = b""
        while True:
            timeout = self.config.health_timeout if child.ever_running else self.config.start_timeout
            since = child.spawned_at if child.last_report_at is None else child.last_report_at
            with anyio.move_on_after(max(0.0, since + timeout - time.monotonic())) as idle:
                await anyio.wait_readable(fd)
            if idle.cancelled_caught:
                silent = time.monotonic() - since
                logger.error("%s sent no report for %.1fs (a hung event loop?): killing it", child.name(), silent)
                child.hung = True
                child.send(signal.SIGKILL)
                return
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                return  # the child exited (it holds the only write end)
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._on_report(child, line)

    def _on_report(self, child: _Child, line: bytes) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            logger.warning("%s sent an unreadable report: %r", child.name(), line[:200])
            return
        child.last_report_at = time.monotonic()
        child.report = report
        state = str(report.get("state", child.state))
        if report.get("fatal"):
            child.fatal = report["fatal"]
        if state != child.state:
            logger.debug("%s: %s -> %s", child.name(), child.state, state)
            child.state = state
        if state == "running" and not child.ever_running:
            child.ever_running = True
            child.running_event.set()
            logger.info("%s running", child.name())
            if all(s.current is not None and s.current.ever_running for s in self._slots):
                self._started.set()

    async def _supervise(self) -> None:
        async with self._exits:
            async for child in self._exits:
                if child is not None:
                    self._on_exit(child)
                if self._stopping and not self._live:
                    break
        assert self._tg is not None
        self._tg.cancel_scope.cancel()

    async def _rolling_restart(self) -> None:
        try:
            logger.warning("rolling restart of %d child(ren), one at a time", len(self._slots))
            for slot in self._slots:
                if self._stopping:
                    return
                old = slot.current
                new = self._spawn(slot, candidate=True)
                async with anyio.create_task_group() as either:
                    for event in (new.running_event, new.exited):
                        either.start_soon(_set_then_cancel, event, either.cancel_scope)
                slot.candidate = None
                if not new.ever_running:
                    if new.fatal is not None:
                        self._log_traceback_once(new)
                    logger.error(
                        "rolling restart stopped: the new %s %s; the old children keep running",
                        new.name(),
                        new.exit_reason(),
                    )
                    if slot.current is None and not self._stopping:
                        self._tg.start_soon(self._respawn, slot, self.config.restart_delay)  # type: ignore[union-attr]
                    return
                slot.current = new
                if old is not None and old.alive:
                    old.retiring = True
                    logger.info("%s replaced by pid %s: stopping it", old.name(), new.pid)
                    # Its grace period counts from this SIGTERM, even if the supervisor is told to
                    # stop meanwhile (which already sent it one): a graceful stop never shortens it.
                    old.stop_gracefully()
                    with anyio.move_on_after(self.config.worker.shutdown_timeout + self.config.kill_margin):
                        await old.exited.wait()
                    if old.alive:
                        old.killed = True
                        old.send(signal.SIGKILL)
                        await old.exited.wait()
            logger.warning("rolling restart done")
        finally:
            self._restarting = False

    def _set_kill_deadline(self, seconds: float) -> None:
        deadline = anyio.current_time() + seconds
        if self._kill_scope is not None:
            self._kill_scope.deadline = min(self._kill_scope.deadline, deadline)
            return
        assert self._tg is not None
        scope = self._kill_scope = anyio.CancelScope(deadline=deadline)
        self._tg.start_soon(self._kill_at_deadline, scope)

    async def _kill_at_deadline(self, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep_forever()
        for child in list(self._live):
            if child.process is not None and child.process.returncode is None:
                logger.error("%s did not stop in time: SIGKILL", child.name())
                child.killed = True
                child.send(signal.SIGKILL)

    async def _handle_signals(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        def rolling_restart() -> None:
            logger.warning("SIGHUP: rolling restart")
            self.restart()

        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            task_status.started()
            await relay_signals(
                received,
                lambda: self,
                actions={signal.SIGHUP: rolling_restart},
                subject="every child ",
                logger=logger,
            )

    async def _log_status(self) -> None:
        while True:
            await anyio.sleep(self.config.status_interval)
            for s in self.children():
                logger.info(
                    "child %d pid=%s state=%s uptime=%s restarts=%d processed=%d failed=%d running=%d%s%s",
                    s.index,
                    s.pid,
                    s.state,
                    format_duration(s.uptime),
                    s.restarts,
                    s.processed,
                    s.failed,
                    s.running,
                    f" ignored={s.ignored}" if s.ignored else "",
                    f" breakers_open={','.join(s.breakers_open)}" if s.breakers_open else "",
                    extra={
                        "child": s.index,
                        "child_pid": s.pid,
                        "child_state": s.state,
                        "uptime_seconds": s.uptime,
                        "restarts": s.restarts,
                        "processed": s.processed,
                        "failed": s.failed,
                        "running": s.running,
                        "ignored": s.ignored,
                        "breakers_open": list(s.breakers_open),
                    },
                )

    async def _serve(
        self, handle_signals: bool, task_status: anyio.abc.TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        c = self.config
        logger.info(
            "supervisor %s: starting %d worker process(es) of %s (queues=%s, backend=%s)",
            self.id,
            c.processes,
            c.app_path,
            ",".join(c.worker.queues) or "every queue the app names",
            c.backend,
        )
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if handle_signals:
                    await tg.start(self._handle_signals)
                if c.metrics_port is not None:
                    from ._metrics import serve_supervisor_metrics

                    self.metrics_port = await tg.start(
                        functools.partial(serve_supervisor_metrics, self, c.metrics_port, host=c.metrics_host)
                    )
                tg.start_soon(self._supervise)
                tg.start_soon(self._log_status)
                for slot in self._slots:
                    self._spawn(slot)
                await self._started.wait()
                if self._failure is None:
                    task_status.started(self)
                await anyio.sleep_forever()
        finally:
            self._stopped.set()
        if self._failure is not None:
            raise SupervisorError(self._failure)
        if self._unclean:
            raise SupervisorError("the stop was not clean: " + "; ".join(self._unclean))
        logger.info("supervisor %s: every child stopped cleanly", self.id)

    async def wait_stopped(self) -> None:
        """Wait until every child has exited and the supervisor has finished."""
        await self._stopped.wait()


async def _set_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _trace_env() -> dict[str, str]:
    """The current OpenTelemetry context as W3C ``TRACEPARENT``/``TRACESTATE`` variables, if any."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    env = {}
    if "traceparent" in carrier:
        env["TRACEPARENT"] = carrier["traceparent"]
        if "tracestate" in carrier:
            env["TRACESTATE"] = carrier["tracestate"]
    return env


def _current_backend() -> str:
    try:
        import trio

        trio.lowlevel.current_task()
    except (ImportError, RuntimeError):
        return "asyncio"
    return "trio"


def app_path_of(app: App | str) -> str:
    """The ``module:attr`` path a fresh interpreter imports *app* by.

    Raises:
        ConfigurationError: the path does not import or is not an App, or *app* cannot be found
            in any importable module (it lives in a script run by path).
    """
    if isinstance(app, str):
        import_app(app, wrap_import_errors=True)
        return app
    if not isinstance(app, App):
        raise ConfigurationError(
            f"run_supervisor(app=...) must be an App or a 'module:attr' string, got {type(app).__name__}"
        )
    found_in_main = False
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if value is not app:
                continue
            if name == "__main__":
                found_in_main = True
                spec = getattr(module, "__spec__", None)
                if spec is not None and spec.name and spec.name != "__main__":
                    return f"{spec.name}:{attr}"
                continue
            return f"{name}:{attr}"
    where = "a script run by path (__main__)" if found_in_main else "no module's globals"
    raise ConfigurationError(
        f"run_supervisor: cannot tell which module defines {app!r} (found in {where}); each child is a fresh "
        "interpreter that imports the app, so define it in an importable module, run your program with "
        "`python -m package.module`, or pass its path as a string, 'package.module:app'"
    )


async def run_supervisor(
    app: App | str,
    *,
    processes: int,
    backend: str | None = None,
    dsn: str | None = None,
    health_timeout: float = 10.0,
    start_timeout: float = 60.0,
    max_restarts: int = 5,
    restart_window: float = 60.0,
    restart_delay: float = 1.0,
    max_restart_delay: float = 30.0,
    kill_margin: float = 10.0,
    status_interval: float = 60.0,
    log_level: str = "info",
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    handle_signals: bool = True,
    task_status: anyio.abc.TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED,
    **options: Unpack[SupervisedOptions],
) -> None:
    """Run *processes* worker processes of *app* and keep them running until stopped.

    Each child is a fresh interpreter (``python -m nursery_worker._child``, spawned, never forked)
    that imports the app by its ``module:attr`` path and runs one worker with the worker options
    given here. A child that dies, or whose reports stop for *health_timeout* seconds (a hung event
    loop), is killed and replaced after a backoff (*restart_delay*, doubling up to
    *max_restart_delay*); its executing jobs are rescued by its siblings after *rescue_after*. More
    than *max_restarts* exits of one slot within *restart_window* seconds is a crash loop: every child
    is stopped and :class:`SupervisorError` raised. So is a child that fails to start before all
    children first ran (its traceback is logged once).

    With *handle_signals* (the default; needs the main thread), SIGTERM or SIGINT stops every child
    gracefully (each drains like a single worker; SIGKILL after *shutdown_timeout* + *kill_margin*),
    a second one stops them at once, and SIGHUP replaces the children one at a time
    (:meth:`Supervisor.restart`). Started with ``await task_group.start(run_supervisor, ...)``, it
    hands back the :class:`Supervisor` once every child is RUNNING. Cancelling it stops every child
    at once (their jobs go back to the queue), shielded, within *kill_margin*.

    Args:
        app: the :class:`App`, or its path ``"package.module:app"``. An App object must be a global
            of an importable module (a script run by path cannot be imported by a child: use
            ``python -m`` or the string form).
        processes: how many worker processes (>= 1).
        backend: the children's event loop, ``"asyncio"`` or ``"trio"`` (default: the caller's).
        dsn: a DSN for the children instead of the app's own.
        health_timeout: seconds without a report from a running child before it is killed.
        start_timeout: the same, until the child first reports RUNNING (imports can be slow).
        max_restarts: restarts of one slot allowed within *restart_window* seconds.
        restart_window: the crash-loop window, in seconds.
        restart_delay: the first restart's backoff, in seconds; doubles with each recent crash.
        max_restart_delay: the longest backoff.
        kill_margin: seconds a stopping child gets beyond its *shutdown_timeout* before SIGKILL.
        status_interval: seconds between the supervisor's per-child status log lines.
        log_level: the children's logging level.
        metrics_port: serve Prometheus metrics and health endpoints on this port (0: any free
            one; ``Supervisor.metrics_port`` tells which): ``/metrics`` merges every child's
            metrics with a ``worker`` label (the slot), ``/readyz`` is 200 once every child is
            RUNNING and ready. Needs the ``metrics`` extra. None (the default): no endpoint.
        metrics_host: the address the endpoint binds (loopback by default).
        handle_signals: handle SIGTERM, SIGINT and SIGHUP as described above.
        **options: each child's worker options, as for :func:`open_worker` (all but ``once``).

    Keyword Args:
        {options}

    Returns:
        None, once every child has exited after a clean stop.

    Raises:
        ConfigurationError: an option is invalid, the app cannot be imported (before any child
            starts), or metrics were asked for without prometheus-client or their port is taken.
        SupervisorError: a child failed to start, a slot crash-looped, or a child had to be killed at
            the stop; the message names the child and its last exit.

    Example:
        >>> from nursery_worker import run_supervisor
        >>> anyio.run(functools.partial(run_supervisor, "myapp.tasks:app", processes=4, concurrency=20))
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigurationError(f"run_supervisor(processes={processes!r}): must be an int >= 1")
    for label, value in (
        ("health_timeout", health_timeout),
        ("start_timeout", start_timeout),
        ("restart_window", restart_window),
        ("restart_delay", restart_delay),
        ("max_restart_delay", max_restart_delay),
        ("kill_margin", kill_margin),
        ("status_interval", status_interval),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isnan(value):
            raise ConfigurationError(f"run_supervisor({label}={value!r}): must be a number > 0")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ConfigurationError(f"run_supervisor(max_restarts={max_restarts!r}): must be an int >= 0")
    if backend is None:
        backend = _current_backend()
    if backend not in ("asyncio", "trio"):
        raise ConfigurationError(f"run_supervisor(backend={backend!r}): must be 'asyncio' or 'trio'")
    if metrics_port is not None:
        if isinstance(metrics_port, bool) or not isinstance(metrics_port, int) or not 0 <= metrics_port <= 65535:
            raise ConfigurationError(f"run_supervisor(metrics_port={metrics_port!r}): must be a port, 0 to 65535")
        from ._metrics import check_available

        check_available()
    if log_level.lower() not in _LEVELS:
        raise ConfigurationError(f"run_supervisor(log_level={log_level!r}): must be one of {', '.join(_LEVELS)}")
    worker = WorkerConfig.from_options("run_supervisor", options)
    config = SupervisorConfig(
        app_path=app_path_of(app),
        processes=processes,
        worker=worker,
        backend=backend,
        dsn=dsn,
        health_timeout=float(health_timeout),
        start_timeout=float(start_timeout),
        max_restarts=max_restarts,
        restart_window=float(restart_window),
        restart_delay=float(restart_delay),
        max_restart_delay=float(max_restart_delay),
        kill_margin=float(kill_margin),
        status_interval=float(status_interval),
        log_level=log_level.lower(),
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    await Supervisor(config)._serve(handle_signals, task_status=task_status)


# The worker options' lines of the docstring come from their one declaration.
run_supervisor.__doc__ = document_options(run_supervisor.__doc__, supervised=True)
