"""The worker: one task tree whose cancel scopes are its shutdown protocol.

::

    _serve                                     root task group (child of the caller's task)
    ├─ completer                               stops last: closed after the work is done
    ├─ services task group                     cancelled once the work is done
    │  ├─ heartbeat   ├─ reaper (rescuer, lost claims)   ├─ cancel watcher   ├─ pruner
    │  ├─ promoter    ├─ scheduler (periodic jobs)       ├─ cancel watchdogs (one per stuck job)
    │  └─ listener                             started with start(): RUNNING means LISTEN is active
    └─ _work: jobs task group                  the work scope
       ├─ fetch loop, in fetch_scope           soft stop = cancel fetch_scope
       └─ one task per job, each in its own    timeout = the job scope's deadline;
          cancel scope                         hard stop = cancel every job scope after the grace
                                               deadline (shutdown_timeout), released jobs written back

Final writes (the completer's last batch, deregistering) are shielded under their own deadline.

This module holds the tree and the worker's controls only. Its parts are small objects handed what
they need: the fetch loop (``_fetcher``), job execution and outcome bookkeeping (``_executor``),
the listener (``_listener``), the completer (``_completer``) and the maintenance services
(``_maintenance/``). What they share (running jobs, counters, the fetch wake-up) is one
:class:`~._board.JobBoard`; the options are declared in ``_config``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
import os
import random
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Unpack

import anyio
import anyio.abc
import attrs

from ._backoff import ServiceBackoff
from ._board import JobBoard, JobGroup, Running, Scope
from ._completer import Completer, Written
from ._config import WorkerConfig, WorkerOptions, WorkerStats, document_options
from ._dsn import embedded_fallback, warn_embedded_worker
from ._errors import RETRYABLE_ERRORS
from ._executor import Executor
from ._fetcher import Fetcher
from ._flow import limits_config
from ._listener import Listener
from ._maintenance import (
    CancelWatcher,
    Heartbeat,
    LostClaims,
    Promoter,
    Pruner,
    Rescuer,
    RollupWriter,
    Scheduler,
    serve_periodically,
)
from ._models import BreakerConfig, Job, Supervision, WorkerInfo
from ._periodic import schedules_for
from ._signals import relay_signals, single_error
from ._state import WorkerState

if TYPE_CHECKING:
    from ._app import App
    from ._metrics import WorkerMetrics

logger = logging.getLogger("nursery_worker.worker")


@asynccontextmanager
async def _job_group() -> AsyncIterator[JobGroup]:
    """The task group the jobs run in, and the kind of cancel scope each job gets.

    On trio both are trio's own: anyio's task group on trio wraps every task in a handle with its own
    cancel scope and event, and anyio's cancel scope wraps trio's; together that cost more than a
    no-op job's run (``python -m benchmarks --only levers``, "job spawn": 36 against 15 µs a task).
    Cancel scopes nest the same either way (anyio's scopes on trio are trio's), and a job is still
    cancelled only through its own scope.

    On asyncio anyio's task group does the same (a handle, a scope and an event per task), so the
    jobs run in an :class:`asyncio.TaskGroup` instead (:class:`_AsyncioJobs`), each under its own
    anyio scope, as before.
    """
    if _trio_running():
        import trio

        async with trio.open_nursery() as nursery:
            yield JobGroup(spawn=nursery.start_soon, new_scope=trio.CancelScope)
    elif _ASYNCIO_TASK_GROUP:
        async with _AsyncioJobs.open() as group:
            yield group
    else:
        async with anyio.create_task_group() as tg:
            # The class of anyio's scopes on this loop: ``anyio.CancelScope()`` looks the backend up
            # for every scope it makes, which a scope per job need not repeat.
            yield JobGroup(spawn=tg.start_soon, new_scope=type(anyio.CancelScope()))


#: Jobs on asyncio in an asyncio.TaskGroup (False: anyio's task group, the harness's lever).
_ASYNCIO_TASK_GROUP = True


class _AsyncioJobs:
    """The jobs of a worker on asyncio: tasks of an :class:`asyncio.TaskGroup`, each under an anyio scope.

    Cancellation stays anyio's. A job is cancelled through its own scope (a timeout, a cancel
    request, a hard stop), as on anyio's task group. When the block is left by an exception (the
    worker cancelled from outside, or failing), each running job is cancelled as from outside,
    through its scope (it records its release as it did when its parent scope was cancelled), and
    the group waits for them all, shielded, as anyio's task group waits for its tasks. asyncio's
    own cancellation of the group's tasks is thereby never used: it would interrupt a job's shielded
    scopes, and deliver only once.
    """

    def __init__(self, tg: asyncio.TaskGroup, new_scope: Callable[[], Scope]) -> None:
        self._tg = tg
        self.new_scope = new_scope
        #: The tasks still running, with their job.
        self._live: dict[asyncio.Task[None], Running] = {}

    @classmethod
    @asynccontextmanager
    async def open(cls) -> AsyncIterator[JobGroup]:
        """Open the group; leaving the block waits for every job."""
        async with asyncio.TaskGroup() as tg:
            jobs = cls(tg, type(anyio.CancelScope()))
            try:
                yield JobGroup(spawn=jobs.spawn, new_scope=jobs.new_scope)
                # The jobs still running (handed back and finishing) are waited for here, where a
                # cancellation from outside meanwhile is handled as below, not by asyncio's group.
                await jobs._join()
            except BaseException:
                await jobs._cancel_all()
                raise

    def spawn(self, run: Callable[[Running], Coroutine[Any, Any, None]], r: Running, *, name: str) -> None:
        """Start ``run(r)`` as a task of the group."""
        task = self._tg.create_task(run(r), name=name)
        self._live[task] = r
        task.add_done_callback(self._live.pop)

    async def _join(self) -> None:
        """Wait until every job has finished."""
        while self._live:
            await asyncio.wait(list(self._live))

    async def _cancel_all(self) -> None:
        """Cancel every running job as from outside its scope, and wait for all of them (shielded)."""
        with anyio.CancelScope(shield=True):
            while self._live:
                for r in self._live.values():
                    if not r.outside:
                        r.outside = True
                        r.scope.cancel()
                await asyncio.wait(list(self._live))


def _trio_running() -> bool:
    """Whether the current event loop is trio's (without importing trio when it is not loaded)."""
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


def _warn_unserved(app: App, queues: Sequence[str]) -> None:
    """Log a WARNING for each registered task whose queue *queues* leaves out: its jobs would wait silently."""
    served = set(queues)
    for task in sorted(app.tasks.values(), key=lambda t: t.name):
        if task.queue not in served:
            logger.warning(
                "task %r goes to queue %r, which this worker does not serve (queues=%s): its jobs wait for "
                "a worker that does. Add %r to --queues (queues=), leave --queues out to serve every queue "
                "the app names, or run another worker for it",
                task.name,
                task.queue,
                ",".join(queues),
                task.queue,
            )


class Worker:
    """A running worker, as yielded by :func:`open_worker`.

    Attributes:
        id: unique for this worker instance (``host:pid:random``), as stored on executing jobs.
        state: the :class:`WorkerState`.
        config: the validated options.
        metrics: its Prometheus metrics while :func:`serve_metrics` serves them, else None.
    """

    def __init__(self, app: App, config: WorkerConfig, *, supervision: Supervision | None = None) -> None:
        self.app = app
        if not config.queues:  # queues=None: every queue the app names, resolved now that its tasks are known
            config = attrs.evolve(config, queues=app.queue_names())
        self.config = config
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        _warn_unserved(app, config.queues)
        if (embedded := embedded_fallback(app._settings.dsn)) is not None:
            warn_embedded_worker(embedded)
        self.info = WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=config.queues,
            concurrency=config.concurrency,
            **(attrs.asdict(supervision) if supervision is not None else {}),
        )
        self.state = WorkerState.INITIALIZING
        self._started_at: dt.datetime | None = None
        self._stop_requested = False
        self._hard = False
        self._fetch_scope: anyio.CancelScope | None = None
        self._grace_scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        driver = app.driver
        driver.set_idle_in_transaction_timeout(config.idle_in_transaction_timeout)
        board = self._board = JobBoard()
        self._completer = Completer(
            driver, self.id, error_cap=app.error_cap, final_timeout=config.final_timeout, on_written=self._on_written
        )
        self._executor = Executor(app, config, worker_id=self.id, board=board, completer=self._completer)
        self._heartbeat = Heartbeat(driver, self.info, load=lambda: board.load(self.state.value))
        self._rescuer = Rescuer(driver, self.id, config.rescue_after, error_cap=app.error_cap)
        self._lost_claims = LostClaims(
            driver,
            self.id,
            known=lambda: board.running.keys() | self._completer.pending,
            lost_after=max(60.0, 4 * config.poll_interval),
            error_cap=app.error_cap,
        )
        self._cancel_watcher = CancelWatcher(
            driver, self.id, config.poll_interval, busy=lambda: bool(board.running), cancel=self._executor.cancel
        )
        self._promoter = Promoter(driver)
        self._pruner = Pruner(
            driver,
            retention=dict(config.retention),
            rollup_retention=config.rollup_retention,
            event_retention=config.event_retention,
        )
        self._rollups = RollupWriter(driver, self._executor.rollups)
        # Periodic jobs: every worker that serves a schedule's queue runs it (not in once-mode,
        # which works off what is there); the database keeps each tick to one job.
        schedules = () if config.once else schedules_for(app, config.queues)
        self._scheduler = Scheduler(driver, schedules) if schedules else None
        self._listener = (
            Listener(
                driver,
                queues=config.queues,
                poll_interval=config.poll_interval,
                board=board,
                cancel=self._executor.cancel,
            )
            if config.listen
            else None
        )
        self._fetcher = Fetcher(
            driver,
            config,
            worker_id=self.id,
            board=board,
            pending=self._completer.pending,
            limits=limits_config(app.tasks.values()),
            promote=self._promoter.run_once,
        )
        self._completer.claimer = self._fetcher

    def __repr__(self) -> str:
        running = len(self._board.running)
        return f"<Worker {self.id} {self.state.value} running={running} queues={list(self.config.queues)}>"

    # --- public controls ----------------------------------------------------------------------

    def stats(self) -> WorkerStats:
        """Return the worker's counters now.

        Returns:
            A :class:`WorkerStats` snapshot.
        """
        return WorkerStats(
            worker_id=self.id,
            state=self.state,
            running=len(self._board.running),
            started_at=self._started_at,
            last_heartbeat=self._heartbeat.last,
            **self._board.counts,
        )

    @property
    def running_jobs(self) -> tuple[Job, ...]:
        """Snapshots of the jobs executing now (as they were when fetched)."""
        return tuple(r.job for r in self._board.running.values())

    @property
    def listener_connected(self) -> bool:
        """Whether the worker's LISTEN is active now (always False with ``listen=False``)."""
        return self._listener is not None and self._listener.connected

    @property
    def breakers_open(self) -> frozenset[str]:
        """Tasks whose open circuit breaker held jobs back at this worker's last claim."""
        return self._fetcher.breakers_open

    @property
    def sync_threads_alive(self) -> int:
        """Threads still running plain ``def`` jobs, including ones the worker abandoned."""
        return self._executor.threads_alive

    @property
    def metrics(self) -> WorkerMetrics | None:
        """Its Prometheus metrics while :func:`serve_metrics` serves them, else None."""
        return self._executor.metrics

    @metrics.setter
    def metrics(self, metrics: WorkerMetrics | None) -> None:
        # Set by ``_metrics.serve_metrics`` while it serves them; the executor counts each attempt.
        self._executor.metrics = metrics

    def stop(self, *, hard: bool = False) -> None:
        """Ask the worker to stop; returns at once (await :meth:`wait_stopped` to wait).

        Graceful (default): stop fetching, let running jobs finish for up to ``shutdown_timeout``,
        then cancel the rest and write them back as available without using an attempt.
        Hard: skip the wait and cancel running jobs now (still written back); it may follow a
        graceful stop that is under way (the CLI does so on a second signal).

        Args:
            hard: cancel running jobs at once instead of giving them ``shutdown_timeout``.
        """
        self._stop_requested = True
        self._fetcher.close()
        if hard:
            self._hard = True
            if self._grace_scope is not None:
                self._grace_scope.cancel()
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        self._board.wake()

    async def wait_stopped(self) -> None:
        """Wait until the worker is STOPPED or in ERROR."""
        await self._stopped.wait()

    async def serve_until_signalled(self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Run until the worker stops, stopping it on SIGTERM or SIGINT as the CLI does.

        The first signal stops gracefully; a second one stops at once. Only the main thread can
        receive signals, and a library should not take over a process's signals unasked, so
        ``open_worker`` never does this by itself.

        Args:
            signals: the signal numbers to handle.

        Example:
            >>> async with open_worker(app) as worker:
            ...     await worker.serve_until_signalled()
        """
        with anyio.open_signal_receiver(*signals) as received:
            async with anyio.create_task_group() as tg:
                tg.start_soon(relay_signals, received, lambda: self)
                await self.wait_stopped()
                tg.cancel_scope.cancel()

    # --- the tree -----------------------------------------------------------------------------

    def _set_state(self, state: WorkerState) -> None:
        if state is not self.state:
            logger.debug("worker %s: %s -> %s", self.id, self.state.value, state.value)
            self.state = state

    def _on_written(self, written: Sequence[Written]) -> None:
        self._executor.written(written)
        # Capacity is free now. In once-mode a write may also be the retry that is due next, so
        # look again rather than wait for the poll.
        if self.config.once:
            self._board.more = True
        self._board.wake()

    async def _run_hooks(self, hooks: Sequence[Any], *, reverse: bool = False, strict: bool) -> None:
        for hook in reversed(hooks) if reverse else hooks:
            if strict:
                await hook()
                continue
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook %r failed", hook)

    async def _final(self, *, hooks: bool, deregister: bool) -> None:
        """The last steps, shielded under a deadline: shutdown hooks, then leave the workers table."""
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = (
                anyio.current_time() + self.config.final_timeout + (self.config.shutdown_timeout if hooks else 0)
            )
            if hooks:
                await self._run_hooks(self.app.shutdown_hooks, reverse=True, strict=False)
            try:
                await self._rollups.run_once()  # the last attempts' counts, written by now
            except RETRYABLE_ERRORS as exc:
                logger.warning("could not write the metric rollups of worker %s: %s", self.id, exc)
            if deregister:
                try:
                    await self.app.driver.deregister_worker(self.id)
                except RETRYABLE_ERRORS as exc:
                    logger.warning("could not deregister worker %s: %s (peers will remove it)", self.id, exc)
        if scope.cancelled_caught:
            logger.error("worker %s: shutdown steps overran final_timeout=%ss", self.id, self.config.final_timeout)

    async def _connect_first(self) -> None:
        """Reach the database and check the schema; with ``wait_for_db``, retry with backoff until then."""
        driver = self.app.driver
        deadline = anyio.current_time() + self.config.wait_for_db
        backoff = ServiceBackoff(cap=5.0)
        while True:
            try:
                await driver.open()
                await driver.check_schema()
                return
            except RETRYABLE_ERRORS as exc:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    if self.config.wait_for_db:
                        logger.error("gave up waiting %gs for the database", self.config.wait_for_db)
                    raise
                # The last try lands on the deadline itself, not a backoff step before it.
                delay = min(backoff.next(), remaining)
                logger.warning("waiting for the database: %s; retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED) -> None:
        self._set_state(WorkerState.STARTING)
        driver = self.app.driver
        registered = hooks_started = False
        try:
            await self._connect_first()
            await driver.register_worker(self.info)
            registered = True
            breakers = [
                BreakerConfig(
                    task=t.name, threshold=t.circuit_breaker.threshold, cooldown=float(t.circuit_breaker.cooldown)
                )
                for t in self.app.tasks.values()
                if t.circuit_breaker is not None
            ]
            await driver.register_breakers(breakers)
            self._heartbeat.last = dt.datetime.now(dt.UTC)
            hooks_started = True
            await self._run_hooks(self.app.startup_hooks, strict=True)
        except BaseException:  # including cancellation (a signal during startup): clean up, re-raise
            self._set_state(WorkerState.ERROR)
            await self._final(hooks=hooks_started, deregister=registered)
            self._stopped.set()
            raise
        c = self.config
        self._executor.thread_limiter = anyio.CapacityLimiter(c.sync_threads or min(c.concurrency, 32))
        failed = False
        try:
            async with anyio.create_task_group() as root:
                await root.start(self._completer.serve)
                try:
                    async with anyio.create_task_group() as services:
                        self._executor.watchdogs = services
                        await self._start_services(services)
                        self._started_at = dt.datetime.now(dt.UTC)
                        self._set_state(WorkerState.RUNNING)
                        logger.info(
                            "worker %s running: queues=%s concurrency=%d", self.id, ",".join(c.queues), c.concurrency
                        )
                        task_status.started(self)
                        await self._work()
                        services.cancel_scope.cancel()
                    self._executor.watchdogs = None
                finally:
                    self._completer.close()
        except Exception:
            failed = True
            self._set_state(WorkerState.ERROR)
            raise
        finally:
            if not failed:
                self._set_state(WorkerState.STOPPING)
            await self._final(hooks=True, deregister=True)
            if not failed:
                self._set_state(WorkerState.STOPPED)
            self._stopped.set()
            counts = self._board.counts
            # Each figure is a field of the record (a key of its own in JSON logs), the message a sentence.
            logger.info(
                "worker %s stopped: %d processed (%d completed, %d failed: %d retried, %d discarded; %d snoozed, "
                "%d cancelled), %d released, %d ignored",
                self.id,
                counts["processed"],
                counts["completed"],
                counts["failed"],
                counts["retried"],
                counts["discarded"],
                counts["snoozed"],
                counts["cancelled"],
                counts["released"],
                counts["ignored"],
                extra={"worker_id": self.id, **counts},
            )

    async def _start_services(self, services: anyio.abc.TaskGroup) -> None:
        c = self.config
        # Registering stamped the first heartbeat: the next one is due an interval later.
        services.start_soon(
            functools.partial(
                serve_periodically,
                "heartbeat",
                c.heartbeat_interval,
                self._heartbeat.run_once,
                first_after=c.heartbeat_interval,
            )
        )
        # Jittered widely: many workers started together must not all reap at once.
        services.start_soon(functools.partial(serve_periodically, "reaper", c.reap_interval, self._reap, jitter=0.3))
        services.start_soon(self._cancel_watcher.serve)
        services.start_soon(serve_periodically, "rollups", c.rollup_interval, self._rollups.run_once)
        # Always: with retention=None it still prunes the metric rollups.
        services.start_soon(
            functools.partial(
                serve_periodically,
                "pruner",
                c.prune_interval,
                self._pruner.run_once,
                jitter=0.3,
                first_after=c.prune_interval * random.uniform(0.1, 1.0),
            )
        )
        if not c.once:
            # In once-mode the fetch loop promotes before its last look (Fetcher.promote); a promoter
            # service beside it could hold the due row at that moment, and the last look's promotion
            # skips locked rows, so the worker would stop with a due retry left behind.
            services.start_soon(serve_periodically, "promoter", c.promote_interval, self._promoter.run_once)
        if self._scheduler is not None:
            services.start_soon(self._scheduler.serve)
        if self._listener is not None:
            await services.start(self._listener.serve)

    async def _reap(self) -> None:
        rescued = await self._rescuer.run_once()
        if self.metrics is not None:
            self.metrics.record_rescue(rescued)
        await self._lost_claims.run_once()

    async def _work(self) -> None:
        board = self._board
        async with _job_group() as jobs:
            with anyio.CancelScope() as fetch_scope:
                self._fetch_scope = fetch_scope
                if not self._stop_requested:
                    await self._fetcher.run(functools.partial(self._executor.start, jobs))
            self._set_state(WorkerState.STOPPING)
            if board.running and not self._hard:
                with anyio.CancelScope() as grace:
                    self._grace_scope = grace
                    grace.deadline = anyio.current_time() + self.config.shutdown_timeout
                    while board.running:
                        await board.wait_wakeup(math.inf)
            if board.running:
                logger.warning("cancelling %d running job(s); they go back to the queue", len(board.running))
            self._executor.release_all()


@asynccontextmanager
async def open_worker(app: App, **options: Unpack[WorkerOptions]) -> AsyncIterator[Worker]:
    """Run a worker as a child of the calling task; leaving the block stops it gracefully.

    The worker is RUNNING when the block starts. On leaving (normally or by an exception) it stops
    fetching, waits up to *shutdown_timeout* for running jobs, cancels the rest and writes them back
    as available (no attempt used), runs shutdown hooks and deregisters. If the caller's scope is
    cancelled, the same happens at once, with the final writes shielded under *final_timeout*.

    Args:
        app: the :class:`App` whose tasks this worker runs.
        **options: the worker options, as keyword arguments (each declared once, in ``_config``).

    Keyword Args:
        {options}

    Yields:
        The RUNNING :class:`Worker`.

    Raises:
        ConfigurationError: an option is invalid.
        SchemaNotReady: the schema is missing, older or newer (the message names the command).
        DatabaseError: the database cannot be reached at start.
        Exception: whatever a startup hook raised (the worker is then in ERROR).

    Example:
        >>> async with open_worker(app, queues=["default", "emails"], concurrency=20) as worker:
        ...     await anyio.sleep(60)
    """
    config = WorkerConfig.from_options("open_worker", options)
    async with serve_worker(Worker(app, config)) as worker:
        yield worker


# The options' lines of the docstring come from their one declaration.
open_worker.__doc__ = document_options(open_worker.__doc__)


@asynccontextmanager
async def serve_worker(worker: Worker) -> AsyncIterator[Worker]:
    """:func:`open_worker` for a :class:`Worker` built by the caller (the supervisor's child does)."""
    # One error: raise it as itself, not wrapped in a group the caller did not create.
    with single_error():
        async with anyio.create_task_group() as tg:
            await tg.start(worker._serve)
            try:
                yield worker
            finally:
                worker.stop()
                await worker.wait_stopped()
