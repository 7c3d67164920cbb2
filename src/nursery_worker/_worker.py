"""The worker: one task tree whose cancel scopes are its shutdown protocol.

::

    _serve                                     root task group (child of the caller's task)
    ├─ completer                               stops last: closed after the work is done
    ├─ services task group                     cancelled once the work is done
    │  ├─ heartbeat   ├─ reaper   ├─ promoter   ├─ scheduler (periodic jobs)   └─ listener
    └─ _work: jobs task group                  the work scope
       ├─ fetch loop, in fetch_scope           soft stop = cancel fetch_scope
       └─ one task per job, each in its own    timeout = the job scope's deadline;
          cancel scope                         hard stop = cancel every job scope after the grace
                                               deadline (shutdown_timeout), released jobs written back

Final writes (the completer's last batch, deregistering) are shielded under their own deadline.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from ._app import App
from ._backoff import ServiceBackoff
from ._completer import Completer
from ._context import JobContext
from ._errors import RETRYABLE_ERRORS, ConfigurationError
from ._flow import limits_config
from ._logging import set_job_log_context
from ._maintenance import DEFAULT_RETENTION, Heartbeat, Promoter, Pruner, Rescuer, serve_periodically
from ._models import BreakerConfig, Completion, Job, Supervision, WorkerInfo, WorkerLoad
from ._outcomes import Discard, JobOutcome, Retry, Snooze
from ._periodic import Scheduler, schedules_for
from ._retry import policy_from_json
from ._state import (
    RELEASE,
    Cancelled,
    ErrorInfo,
    Failed,
    Outcome,
    Released,
    Snoozed,
    Succeeded,
    Transition,
    WorkerState,
    decide,
)
from ._task import Task, check_queue, encode_result
from ._tracing import process_span, tracing_active

if TYPE_CHECKING:
    from ._metrics import WorkerMetrics

logger = logging.getLogger("nursery_worker.worker")

_MESSAGE_CAP = 2_000
_TRACEBACK_CAP = 8_000


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe *exc* for the job's error list, capped in size (the traceback keeps its tail).

    NUL characters are replaced: PostgreSQL's jsonb cannot hold them, and one would fail the whole
    batch of outcomes it is written with.
    """
    message = str(exc).replace("\x00", "\\x00")
    if len(message) > _MESSAGE_CAP:
        message = message[:_MESSAGE_CAP] + "… (truncated)"
    tb = "".join(traceback.format_exception(exc)).replace("\x00", "\\x00")
    if len(tb) > _TRACEBACK_CAP:
        tb = "(truncated) …" + tb[-_TRACEBACK_CAP:]
    return ErrorInfo(type=type(exc).__qualname__, message=message, traceback=tb)


def _positive(name: str) -> Any:
    def check(_: object, __: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isnan(value):
            raise ConfigurationError(f"open_worker({name}={value!r}): must be a number > 0")

    return check


def _queues(value: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [q.strip() for q in value.split(",") if q.strip()]
    queues = tuple(dict.fromkeys(check_queue(q, where="open_worker(queues=...)") for q in value))
    if not queues:
        raise ConfigurationError("open_worker(queues=...): give at least one queue name, such as ('default',)")
    return queues


_FINAL_STATES = ("completed", "discarded", "cancelled")


class _JobTimeout(TimeoutError):
    """A job's own timeout, raised from ``call_next`` so that middleware sees it."""


def _retention(value: Mapping[str, float | dt.timedelta | None] | None) -> dict[str, float | None]:
    """Validate ``retention=``: seconds (or a timedelta, or None to keep) by final state."""
    if value is None:
        return {state: None for state in _FINAL_STATES}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"open_worker(retention={value!r}): pass a dict such as {{'completed': 3600, 'discarded': 86400}}, "
            "or None to never prune"
        )
    out = dict(DEFAULT_RETENTION)
    for state, age in value.items():
        if state not in _FINAL_STATES:
            raise ConfigurationError(
                f"open_worker(retention=...): {state!r} is not a final state; use {', '.join(_FINAL_STATES)}"
            )
        if isinstance(age, dt.timedelta):
            age = age.total_seconds()
        if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or not age >= 0):
            raise ConfigurationError(
                f"open_worker(retention={{{state!r}: {age!r}}}): must be seconds >= 0, a timedelta, or None to keep"
            )
        out[state] = None if age is None else float(age)
    return out


#: How many batches of unwritten outcomes (of `concurrency` each) may wait for the completer while
#: their slots run new jobs. 0 frees a slot only once its outcome is written (a serial cycle: claim,
#: run, write, claim); 1 overlaps the claim with the write (docs/performance.md has both).
_OVERLAP = 1


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """The options of :func:`open_worker`, validated."""

    queues: tuple[str, ...] = attrs.field(default=("default",), converter=_queues)
    concurrency: int = attrs.field(default=10)
    shutdown_timeout: float = attrs.field(default=30.0, validator=_positive("shutdown_timeout"))
    poll_interval: float = attrs.field(default=1.0, validator=_positive("poll_interval"))
    heartbeat_interval: float = attrs.field(default=2.0, validator=_positive("heartbeat_interval"))
    rescue_after: float = attrs.field(default=15.0, validator=_positive("rescue_after"))
    reap_interval: float = attrs.field(default=5.0, validator=_positive("reap_interval"))
    promote_interval: float = attrs.field(default=1.0, validator=_positive("promote_interval"))
    final_timeout: float = attrs.field(default=10.0, validator=_positive("final_timeout"))
    sync_threads: int | None = attrs.field(default=None)
    listen: bool = True
    once: bool = False
    cancel_grace: float = attrs.field(default=10.0, validator=_positive("cancel_grace"))
    retention: dict[str, float | None] = attrs.field(factory=lambda: dict(DEFAULT_RETENTION), converter=_retention)
    prune_interval: float = attrs.field(default=60.0, validator=_positive("prune_interval"))
    wait_for_db: float = attrs.field(default=0.0)
    log_args: bool = False

    @wait_for_db.validator
    def _check_wait(self, _: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigurationError(f"open_worker(wait_for_db={value!r}): must be seconds >= 0 (0: fail at once)")

    @concurrency.validator
    def _check_concurrency(self, _: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"open_worker(concurrency={value!r}): must be an int >= 1")

    @sync_threads.validator
    def _check_threads(self, _: object, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"open_worker(sync_threads={value!r}): must be an int >= 1 or None")

    @rescue_after.validator
    def _check_rescue(self, _: object, value: float) -> None:
        if value < 2 * self.heartbeat_interval:
            raise ConfigurationError(
                f"open_worker(rescue_after={value!r}) must be at least twice heartbeat_interval="
                f"{self.heartbeat_interval!r}, or live workers would be rescued"
            )


@attrs.frozen(kw_only=True)
class WorkerStats:
    """Counters of one worker since it started.

    Attributes:
        processed: attempts that ran to an outcome (completed, failed, snoozed or cancelled).
        completed: attempts that succeeded.
        failed: attempts that raised or timed out (retried or discarded).
        retried: failed attempts that will run again.
        discarded: jobs given up on (attempts exhausted, ``Discard``, unknown task, bad arguments).
        snoozed: attempts that asked to run again later (``Snooze``), not using an attempt.
        cancelled: executing jobs stopped by ``app.cancel``.
        released: attempts handed back at shutdown, to run again without using an attempt.
        running: jobs executing now.
        started_at: when the worker became RUNNING (wall clock, UTC).
        last_heartbeat: when its heartbeat last reached the database.
    """

    worker_id: str
    state: WorkerState
    processed: int
    completed: int
    failed: int
    retried: int
    discarded: int
    snoozed: int
    cancelled: int
    released: int
    running: int
    started_at: dt.datetime | None
    last_heartbeat: dt.datetime | None


class _Scope(Protocol):
    """A job's cancel scope: anyio's, or on trio trio's own (the same scope without anyio's wrapper)."""

    def cancel(self) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(self, *exc_info: Any) -> bool | None: ...


@attrs.frozen
class _JobGroup:
    """Where the jobs run: ``spawn(func, *args, name=...)`` starts one, ``new_scope()`` makes its scope."""

    spawn: Callable[..., object]
    new_scope: Callable[[], _Scope]


@asynccontextmanager
async def _job_group() -> AsyncIterator[_JobGroup]:
    """The task group the jobs run in, and the kind of cancel scope each job gets.

    On trio both are trio's own: anyio's task group on trio wraps every task in a handle with its own
    cancel scope and event, and anyio's cancel scope wraps trio's; together that cost more than a
    no-op job's run (``python -m benchmarks --only levers``, "job spawn": 36 against 15 µs a task).
    Cancel scopes nest the same either way (anyio's scopes on trio are trio's), and a job is still
    cancelled only through its own scope.
    """
    if _trio_running():
        import trio

        async with trio.open_nursery() as nursery:
            yield _JobGroup(spawn=nursery.start_soon, new_scope=trio.CancelScope)
    else:
        async with anyio.create_task_group() as tg:
            yield _JobGroup(spawn=tg.start_soon, new_scope=anyio.CancelScope)


def _trio_running() -> bool:
    """Whether the current event loop is trio's (without importing trio when it is not loaded)."""
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


@attrs.define(eq=False)
class _Running:
    job: Job
    task: Task[..., Any] | None
    scope: _Scope
    released: bool = False
    cancel_requested: bool = False
    abandoned: bool = False  # its outcome was written while it still ran (it ignored cancellation)
    started: float = attrs.field(factory=time.monotonic)  # for the duration metric


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
        self.config = config
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.info = WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=config.queues,
            concurrency=config.concurrency,
            **(attrs.asdict(supervision) if supervision is not None else {}),
        )
        self.state = WorkerState.INITIALIZING
        self._running: dict[tuple[int, int], _Running] = {}
        self._counts = {
            "processed": 0,
            "completed": 0,
            "failed": 0,
            "retried": 0,
            "discarded": 0,
            "snoozed": 0,
            "cancelled": 0,
            "released": 0,
        }
        self._started_at: dt.datetime | None = None
        self._stop_requested = False
        self._hard = False
        self._fetch_scope: anyio.CancelScope | None = None
        self._grace_scope: anyio.CancelScope | None = None
        self._wakeup = anyio.Event()
        self._more = True  # there may be available jobs we have not fetched
        self._stopped = anyio.Event()
        self.listener_connected = False
        driver = app.driver
        self._heartbeat = Heartbeat(driver, self.info, load=self._load)
        self._rescuer = Rescuer(driver, self.id, config.rescue_after, error_cap=app.error_cap)
        self._promoter = Promoter(driver)
        self._pruner = Pruner(driver, retention=dict(config.retention))
        # Periodic jobs: every worker that serves a schedule's queue runs it (not in once-mode,
        # which works off what is there); the database keeps each tick to one job.
        schedules = () if config.once else schedules_for(app, config.queues)
        self._scheduler = Scheduler(driver, schedules) if schedules else None
        self._services: anyio.abc.TaskGroup | None = None
        #: Called with (job, outcome, transition) after each attempt (the testing helpers use it).
        self._on_outcome: Callable[[Job, Outcome, Transition], None] | None = None
        #: Prometheus metrics, while they are served (see ``_metrics.serve_metrics``); else None.
        self.metrics: WorkerMetrics | None = None
        self._completer = Completer(
            driver, self.id, error_cap=app.error_cap, final_timeout=config.final_timeout, on_written=self._on_written
        )
        self._thread_limiter: anyio.CapacityLimiter | None = None
        #: The task limits the limited claim enforces, from the registry (see ``_flow``).
        self._limits = limits_config(app.tasks.values())
        self._limited_tasks = tuple(sorted(self._limits))
        #: Whether the last limited claim found limited work (queue limits are only in the database).
        self._limited_seen = False
        self._breakers_open: frozenset[str] = frozenset()
        self._threads_lock = threading.Lock()
        self._threads_alive = 0

    def __repr__(self) -> str:
        return f"<Worker {self.id} {self.state.value} running={len(self._running)} queues={list(self.config.queues)}>"

    # --- public controls ----------------------------------------------------------------------

    def stats(self) -> WorkerStats:
        """Return the worker's counters now.

        Returns:
            A :class:`WorkerStats` snapshot.
        """
        return WorkerStats(
            worker_id=self.id,
            state=self.state,
            running=len(self._running),
            started_at=self._started_at,
            last_heartbeat=self._heartbeat.last,
            **self._counts,
        )

    def _load(self) -> WorkerLoad:
        c, state = self._counts, self.state.value
        return WorkerLoad(state=state, processed=c["processed"], failed=c["failed"], running=len(self._running))

    @property
    def running_jobs(self) -> tuple[Job, ...]:
        """Snapshots of the jobs executing now (as they were when fetched)."""
        return tuple(r.job for r in self._running.values())

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
        if hard:
            self._hard = True
            if self._grace_scope is not None:
                self._grace_scope.cancel()
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        self._wake()

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
                tg.start_soon(relay_signals, received, lambda: self, lambda: None)
                await self.wait_stopped()
                tg.cancel_scope.cancel()

    # --- internals ----------------------------------------------------------------------------

    def _set_state(self, state: WorkerState) -> None:
        if state is not self.state:
            logger.debug("worker %s: %s -> %s", self.id, self.state.value, state.value)
            self.state = state

    def _wake(self) -> None:
        self._wakeup.set()

    def _on_written(self) -> None:
        # Capacity is free now. In once-mode a write may also be the retry that is due next, so
        # look again rather than wait for the poll.
        if self.config.once:
            self._more = True
        self._wake()

    async def _wait_wakeup(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wakeup.wait()
        self._wakeup = anyio.Event()

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
        self._thread_limiter = anyio.CapacityLimiter(self.config.sync_threads or min(self.config.concurrency, 32))
        failed = False
        try:
            async with anyio.create_task_group() as root:
                await root.start(self._completer.serve)
                try:
                    async with anyio.create_task_group() as services:
                        self._services = services
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
                        services.start_soon(
                            functools.partial(serve_periodically, "reaper", c.reap_interval, self._reap, jitter=0.3)
                        )
                        services.start_soon(self._watch_cancel_requests)
                        if any(age is not None for age in c.retention.values()):
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
                        services.start_soon(serve_periodically, "promoter", c.promote_interval, self._promoter.run_once)
                        if self._scheduler is not None:
                            services.start_soon(self._scheduler.serve)
                        if c.listen:
                            services.start_soon(self._listen)
                        self._started_at = dt.datetime.now(dt.UTC)
                        self._set_state(WorkerState.RUNNING)
                        logger.info(
                            "worker %s running: queues=%s concurrency=%d", self.id, ",".join(c.queues), c.concurrency
                        )
                        task_status.started(self)
                        await self._work()
                        services.cancel_scope.cancel()
                    self._services = None
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
            logger.info("worker %s stopped: %s", self.id, self._counts)

    async def _work(self) -> None:
        async with _job_group() as jobs:
            with anyio.CancelScope() as fetch_scope:
                self._fetch_scope = fetch_scope
                if not self._stop_requested:
                    await self._fetch_loop(jobs)
            self._set_state(WorkerState.STOPPING)
            if self._running and not self._hard:
                with anyio.CancelScope() as grace:
                    self._grace_scope = grace
                    grace.deadline = anyio.current_time() + self.config.shutdown_timeout
                    while self._running:
                        await self._wait_wakeup(math.inf)
            if self._running:
                logger.warning("cancelling %d running job(s); they go back to the queue", len(self._running))
            for r in list(self._running.values()):
                r.released = True
                r.scope.cancel()

    async def _fetch_loop(self, jobs: _JobGroup) -> None:
        c = self.config
        driver = self.app.driver
        backoff = ServiceBackoff()
        next_poll = 0.0
        next_limited = math.inf
        next_adopt = 0.0
        promoted_while_empty = False
        while True:
            # A slot is free again when its job returns, so the next claim overlaps the completer's
            # write of the last outcomes (two statements in flight, not one after the other). The
            # rows of unwritten outcomes are still executing: at most `concurrency` of them may wait
            # for the completer beside the running jobs, so a completer that cannot write (the
            # database is away) stops the claims too.
            running = len(self._running)
            free = c.concurrency - running - max(0, len(self._completer.pending) - c.concurrency * _OVERLAP)
            now = anyio.current_time()
            if free > 0 and (self._more or now >= next_poll):
                self._more = False
                try:
                    fetched: list[Job] = []
                    # Limited jobs first (the limits bound them anyway): on every fetch when the app has
                    # limited tasks or the last claim found limited work, else once per poll, which is
                    # how a worker learns of queue limits set in the database.
                    if self._limits or self._limited_seen or now >= next_poll:
                        adopt = bool(self._limits) and now >= next_adopt
                        if adopt:
                            next_adopt = now + c.reap_interval
                        claim = await driver.fetch_limited(
                            worker_id=self.id, queues=c.queues, limit=free, config=self._limits, adopt=adopt
                        )
                        fetched.extend(claim.jobs)
                        self._limited_seen = bool(claim.jobs) or claim.wake is not None
                        if claim.wake is not None:
                            next_limited = anyio.current_time() + claim.wake
                        self._note_breakers(claim.breakers_open)
                    if free - len(fetched) > 0:
                        fetched.extend(
                            await driver.fetch_jobs(
                                worker_id=self.id,
                                queues=c.queues,
                                limit=free - len(fetched),
                                exclude_tasks=self._limited_tasks,
                            )
                        )
                except RETRYABLE_ERRORS as exc:
                    delay = backoff.next()
                    logger.warning("fetch failed: %s; retrying in %.1fs", exc, delay)
                    self._more = True
                    await anyio.sleep(delay)
                    continue
                backoff.reset()
                next_poll = min(anyio.current_time() + c.poll_interval, next_limited)
                next_limited = math.inf
                for job in fetched:
                    r = _Running(job=job, task=self.app.tasks.get(job.task), scope=jobs.new_scope())
                    self._running[job.id, job.attempt] = r
                    jobs.spawn(self._run_job, r, name=f"job {job.id} {job.task}")
                if len(fetched) >= free:
                    self._more = True
                if fetched:
                    promoted_while_empty = False
                elif c.once and not self._running and not self._completer.pending:
                    if promoted_while_empty:
                        return
                    # Work off what is due now, including scheduled and retryable jobs.
                    await self._promoter.run_once()
                    promoted_while_empty = self._more = True
                continue
            await self._wait_wakeup(next_poll - now if free > 0 else math.inf)

    def _note_breakers(self, open_now: Sequence[str]) -> None:
        """Log each circuit breaker this worker finds holding jobs back, and when it lets them go."""
        current = frozenset(open_now)
        for task in sorted(current - self._breakers_open):
            logger.warning("circuit breaker of task %s is open: its jobs are held back until the cooldown ends", task)
        for task in sorted(self._breakers_open - current):
            logger.info("circuit breaker of task %s no longer holds jobs back", task)
        self._breakers_open = current

    @property
    def breakers_open(self) -> frozenset[str]:
        """Tasks whose open circuit breaker held jobs back at this worker's last claim."""
        return self._breakers_open

    async def _run_job(self, r: _Running) -> None:
        outcome: Outcome | None = None
        result: str | None = None
        job = r.job
        # Every log line of this job's task (its code, middleware, our own) carries these fields.
        # Set, not reset: this task is the job's own, and its context ends with it (and a context
        # manager per job costs more than a no-op job's run).
        set_job_log_context(
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            attempt=job.attempt,
            worker_id=self.id,
            args=job.args if self.config.log_args else None,
        )
        try:
            if tracing_active():
                with process_span(job, worker_id=self.id) as traced:
                    outcome, result = await self._execute(r)
                    traced(outcome)
            else:
                outcome, result = await self._execute(r)
        finally:
            if outcome is None:  # cancelled from outside the job's own scope, or a BaseException
                outcome = Released(reason="worker cancelled")
            if not r.abandoned:
                self._record(r, outcome, result)

    def _context(self, r: _Running) -> JobContext:
        deadline = None
        if r.task is not None and r.task.timeout is not None:
            deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=r.task.timeout)
        return JobContext(job=r.job, worker_id=self.id, deadline=deadline, app=self.app)

    async def _execute(self, r: _Running) -> tuple[Outcome, str | None]:
        job, task = r.job, r.task
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            return (
                Failed(
                    permanent=True,
                    error=ErrorInfo(
                        type="TaskNotFound",
                        message=f"no task named {job.task!r} is registered in this worker's app (registered: {known}); "
                        f"the job was discarded: run a worker whose app registers {job.task!r} on queue {job.queue!r}, "
                        f"then `nursery-worker jobs retry {job.id}` (or app.retry({job.id}))",
                    ),
                ),
                None,
            )
        args = job.args
        try:
            if not isinstance(args, dict):
                raise TypeError(f"job arguments must be a JSON object, got {type(args).__name__}")
            if not task.fits(args):
                task.signature.bind(**args)  # raises the TypeError that says what does not fit
        except TypeError as exc:
            return (
                Failed(
                    permanent=True,
                    error=ErrorInfo(
                        type="TypeError", message=f"arguments do not fit {task.name}{task.signature}: {exc}"
                    ),
                ),
                None,
            )
        middlewares = self.app.middlewares
        context = self._context(r) if (middlewares or task.context_param) else None
        kwargs = dict(args)
        if task.context_param is not None:
            kwargs[task.context_param] = context

        async def call_task() -> Any:
            # The timeout is the deadline of a scope around the function alone, turned into a
            # TimeoutError raised from call_next: middleware sees it like any other failure.
            if task.timeout is None:  # no scope at all: a scope per job costs as much as a no-op job
                return await self._invoke(task, kwargs)
            with anyio.CancelScope(deadline=anyio.current_time() + task.timeout):
                return await self._invoke(task, kwargs)
            detail = "" if task.is_async else "; the sync function was abandoned and may still run in its thread"
            raise _JobTimeout(f"job exceeded its timeout of {task.timeout:g}s{detail}")

        handler: Callable[[], Any] = call_task
        if context is not None:
            for middleware in reversed(middlewares):
                handler = functools.partial(middleware, context, handler)
        try:
            with r.scope:
                value = await handler()
                if isinstance(value, JobOutcome):
                    return self._steered(value), None
                try:
                    return Succeeded(), encode_result(value, task=task.name)
                except (TypeError, ValueError) as exc:
                    # The work is done; running it again would not change what it returns.
                    return Failed(permanent=True, error=ErrorInfo(type=type(exc).__name__, message=str(exc))), None
        except JobOutcome as steer:
            if r.released or r.cancel_requested:
                return self._interrupted(r, task), None
            return self._steered(steer), None
        except Exception as exc:
            if r.released or r.cancel_requested:
                return self._interrupted(r, task), None
            if isinstance(exc, _JobTimeout):
                # Our own timeout: the traceback of the job's cancellation says nothing useful.
                return Failed(error=ErrorInfo(type="TimeoutError", message=str(exc))), None
            return Failed(error=error_info(exc)), None
        # Only the worker cancels the job's scope: at shutdown (released) or by a cancel request.
        return self._interrupted(r, task), None

    @staticmethod
    def _interrupted(r: _Running, task: Task[..., Any]) -> Outcome:
        if r.cancel_requested:
            detail = "" if task.is_async else "; the sync function was abandoned and may still run in its thread"
            return Cancelled(reason=f"cancelled by request while executing{detail}", abandoned=not task.is_async)
        return Released()

    @staticmethod
    def _steered(outcome: JobOutcome) -> Outcome:
        if isinstance(outcome, Snooze):
            return Snoozed(delay=outcome.seconds)
        if isinstance(outcome, Retry):
            reason = outcome.reason.replace("\x00", "\\x00")
            return Failed(error=ErrorInfo(type="Retry", message=reason), retry_after=outcome.seconds)
        if isinstance(outcome, Discard):
            reason = outcome.reason.replace("\x00", "\\x00")
            return Failed(error=ErrorInfo(type="Discard", message=reason), permanent=True)
        return Failed(error=error_info(outcome))

    async def _invoke(self, task: Task[..., Any], kwargs: dict[str, Any]) -> Any:
        """Call the task's function: awaited on the loop, or a plain def in a (bounded) thread."""
        if task.is_async:
            return await task.func(**kwargs)
        return await anyio.to_thread.run_sync(
            functools.partial(self._call_in_thread, task.func, kwargs),
            abandon_on_cancel=True,
            limiter=self._thread_limiter,
        )

    def _call_in_thread(self, func: Any, args: dict[str, Any]) -> Any:
        # Counted so that the CLI knows when abandoned threads (timed out, or cancelled at
        # shutdown: they cannot be interrupted) are still running after the worker stopped.
        with self._threads_lock:
            self._threads_alive += 1
        try:
            return func(**args)
        finally:
            with self._threads_lock:
                self._threads_alive -= 1

    @property
    def sync_threads_alive(self) -> int:
        """Threads still running plain ``def`` jobs, including ones the worker abandoned."""
        return self._threads_alive

    def _record(self, r: _Running, outcome: Outcome, result: str | None = None) -> None:
        job, task = r.job, r.task
        backoff = policy_from_json(job.retry_policy) if job.retry_policy else None
        if backoff is None:
            backoff = task.backoff if task is not None else (lambda attempt: 0.0)
        transition = decide(outcome, attempt=job.attempt, max_attempts=job.max_attempts, backoff=backoff)
        self._completer.submit(
            Completion(
                job_id=job.id,
                attempt=job.attempt,
                attempted_at=job.attempted_at,
                transition=transition,
                result_json=result,
                max_attempts=job.max_attempts,
                backoff=backoff,
            )
        )
        if self._on_outcome is not None:
            self._on_outcome(job, outcome, transition)
        if self.metrics is not None:
            self.metrics.record(job, outcome, transition, time.monotonic() - r.started)
        counts = self._counts
        if isinstance(outcome, Released):
            counts["released"] += 1
        else:
            counts["processed"] += 1
            if isinstance(outcome, Succeeded):
                counts["completed"] += 1
            elif isinstance(outcome, Snoozed):
                counts["snoozed"] += 1
            elif isinstance(outcome, Cancelled):
                counts["cancelled"] += 1
                logger.warning("job %d (%s) attempt %d: %s", job.id, job.task, job.attempt, outcome.reason)
            else:
                counts["failed"] += 1
                counts["retried" if transition.state == "retryable" else "discarded"] += 1
                level = logging.WARNING if transition.state == "retryable" else logging.ERROR
                logger.log(
                    level,
                    "job %d (%s) attempt %d/%d failed: %s: %s -> %s",
                    job.id,
                    job.task,
                    job.attempt,
                    job.max_attempts,
                    outcome.error.type,
                    outcome.error.message,
                    transition.state.value,
                )
        del self._running[job.id, job.attempt]
        self._wake()

    async def _reap(self) -> None:
        rescued = await self._rescuer.run_once()
        if self.metrics is not None:
            self.metrics.record_rescue(rescued)
        # Our own claims whose fetch result never reached us (the connection broke after the
        # commit): executing under our id, unknown to us, and old. Hand them back.
        lost_after = max(60.0, 4 * self.config.poll_interval)
        rows = await self.app.driver.executing_ids(worker_id=self.id, older_than=lost_after)
        known = self._running.keys() | self._completer.pending
        lost = [(r.job_id, r.attempt, r.attempted_at) for r in rows if (r.job_id, r.attempt) not in known]
        if lost:
            logger.warning("handing back %d job(s) claimed by this worker but never received", len(lost))
            await self.app.driver.finish_jobs(
                worker_id=self.id,
                completions=[
                    Completion(job_id=i, attempt=a, attempted_at=lease, transition=RELEASE) for i, a, lease in lost
                ],
                error_cap=self.app.error_cap,
            )

    def _cancel_running(self, job_id: int, attempt: int | None = None) -> None:
        """Cancel the scope of a running job whose cancel was requested (no-op if not ours)."""
        for (jid, att), r in list(self._running.items()):
            if jid != job_id or (attempt is not None and att != attempt) or r.cancel_requested:
                continue
            logger.info("job %d (%s): cancel requested; cancelling it", jid, r.job.task)
            r.cancel_requested = True
            r.scope.cancel()
            if self._services is not None:
                self._services.start_soon(self._abandon_if_stuck, r, name=f"cancel watchdog {jid}")

    async def _abandon_if_stuck(self, r: _Running) -> None:
        """A job that ignores its cancellation is recorded as cancelled and abandoned after a grace."""
        await anyio.sleep(self.config.cancel_grace)
        key = (r.job.id, r.job.attempt)
        if self._running.get(key) is not r:
            return
        logger.error(
            "job %d (%s) ignored its cancellation for %gs; recorded as cancelled and abandoned (it may still run)",
            r.job.id,
            r.job.task,
            self.config.cancel_grace,
        )
        r.abandoned = True
        self._record(
            r,
            Cancelled(
                reason=f"cancelled by request; the job did not stop within {self.config.cancel_grace:g}s and was "
                "abandoned (it may still be running)",
                abandoned=True,
            ),
        )

    async def _watch_cancel_requests(self) -> None:
        """The durable side of cancellation: a lost NOTIFY must not lose a cancel request."""
        interval = self.config.poll_interval
        backoff = ServiceBackoff(cap=max(interval, 1.0))
        while True:
            await anyio.sleep(interval)
            if not self._running:
                continue
            try:
                requested = await self.app.driver.cancel_requested(worker_id=self.id)
            except RETRYABLE_ERRORS as exc:
                delay = backoff.next()
                logger.warning("cancel check: %s; retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                continue
            backoff.reset()
            for request in requested:
                self._cancel_running(request.job_id, request.attempt)

    async def _listen(self) -> None:
        listener = self.app.driver.listener()
        backoff = ServiceBackoff(cap=max(5.0, self.config.poll_interval))
        queues = set(self.config.queues)
        try:
            while True:
                try:
                    await listener.connect()
                    if not self.listener_connected:
                        self.listener_connected = True
                        # Anything notified while we were deaf is found by fetching now.
                        self._more = True
                        self._wake()
                    backoff.reset()
                    while True:
                        for note in await listener.wait(keepalive=15.0):
                            if note.kind == "available" and note.value in queues:
                                self._more = True
                                self._wake()
                            elif note.kind == "cancel" and note.value.isdigit():
                                self._cancel_running(int(note.value))
                except RETRYABLE_ERRORS as exc:
                    self.listener_connected = False
                    delay = backoff.next()
                    logger.warning(
                        "listener: %s; polling every %gs, reconnecting in %.1fs", exc, self.config.poll_interval, delay
                    )
                    await anyio.sleep(delay)
        finally:
            self.listener_connected = False
            with anyio.CancelScope(shield=True):
                await listener.aclose()


async def relay_signals(
    received: AsyncIterator[int],
    worker: Callable[[], Worker | None],
    during_startup: Callable[[], None],
    *,
    on_signal: Callable[[], None] | None = None,
) -> None:
    """First signal: stop *worker()* gracefully; second: stop it at once; before it runs: *during_startup*.

    *on_signal* is called at every signal first (the CLI arms its exit watchdog).
    """
    seen = 0
    async for signum in received:
        seen += 1
        if on_signal is not None:
            on_signal()
        name = signal.Signals(signum).name
        current = worker()
        if current is None:
            logger.warning("%s during startup: stopping", name)
            during_startup()
        elif seen == 1:
            logger.warning("%s: stopping gracefully (send it again to stop now)", name)
            current.stop()
        else:
            logger.warning("%s again: stopping now", name)
            current.stop(hard=True)


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside *group* (however nested), or *group* itself if it holds several."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for e in exc.exceptions:
                walk(e)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else group


@asynccontextmanager
async def open_worker(
    app: App,
    *,
    queues: Sequence[str] | str = ("default",),
    concurrency: int = 10,
    shutdown_timeout: float = 30.0,
    poll_interval: float = 1.0,
    heartbeat_interval: float = 2.0,
    rescue_after: float = 15.0,
    reap_interval: float = 5.0,
    promote_interval: float = 1.0,
    final_timeout: float = 10.0,
    sync_threads: int | None = None,
    listen: bool = True,
    once: bool = False,
    cancel_grace: float = 10.0,
    retention: Mapping[str, float | dt.timedelta | None] | None = DEFAULT_RETENTION,
    prune_interval: float = 60.0,
    wait_for_db: float = 0.0,
    log_args: bool = False,
) -> AsyncIterator[Worker]:
    """Run a worker as a child of the calling task; leaving the block stops it gracefully.

    The worker is RUNNING when the block starts. On leaving (normally or by an exception) it stops
    fetching, waits up to *shutdown_timeout* for running jobs, cancels the rest and writes them back
    as available (no attempt used), runs shutdown hooks and deregisters. If the caller's scope is
    cancelled, the same happens at once, with the final writes shielded under *final_timeout*.

    Args:
        app: the :class:`App` whose tasks this worker runs.
        queues: the queues to work (a sequence, or a comma-separated string).
        concurrency: the most jobs running at once.
        shutdown_timeout: seconds running jobs get to finish after a graceful stop.
        poll_interval: seconds between fetches when no notification arrives.
        heartbeat_interval: seconds between heartbeats.
        rescue_after: seconds without a heartbeat after which peers rescue a worker's jobs.
        reap_interval: seconds between orphan rescues.
        promote_interval: seconds between promotions of due scheduled/retryable jobs.
        final_timeout: the deadline of the shielded final writes.
        sync_threads: the most plain-``def`` tasks running in threads at once (default:
            ``min(concurrency, 32)``).
        listen: use LISTEN/NOTIFY to pick up jobs at once (polling always runs as a fallback).
        once: stop by itself when no job is available or running (what ``run --once`` does).
        cancel_grace: seconds a cancelled job gets to stop; one that ignores its cancellation is
            then recorded as cancelled and abandoned (its task may still run).
        retention: seconds (or a timedelta) to keep finished jobs, by final state
            (``completed``, ``discarded``, ``cancelled``); a state given None is kept forever, and
            ``retention=None`` turns pruning off. Default: completed 1 day, the others 7 days.
        prune_interval: seconds between pruning passes (each deletes in bounded batches).
        wait_for_db: seconds to keep retrying the first connection (and schema check) with
            backoff, for containers that start before their database; 0 fails at once.
        log_args: add each job's arguments to the log lines of its context (off by default:
            arguments often hold personal data).

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
    config = WorkerConfig(
        queues=queues,
        concurrency=concurrency,
        shutdown_timeout=shutdown_timeout,
        poll_interval=poll_interval,
        heartbeat_interval=heartbeat_interval,
        rescue_after=rescue_after,
        reap_interval=reap_interval,
        promote_interval=promote_interval,
        final_timeout=final_timeout,
        sync_threads=sync_threads,
        listen=listen,
        once=once,
        cancel_grace=cancel_grace,
        retention=retention,
        prune_interval=prune_interval,
        wait_for_db=wait_for_db,
        log_args=log_args,
    )
    async with serve_worker(Worker(app, config)) as worker:
        yield worker


@asynccontextmanager
async def serve_worker(worker: Worker) -> AsyncIterator[Worker]:
    """:func:`open_worker` for a :class:`Worker` built by the caller (the supervisor's child does)."""
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(worker._serve)
            try:
                yield worker
            finally:
                worker.stop()
                await worker.wait_stopped()
    except BaseExceptionGroup as group:
        leaf = unwrap_group(group)
        if leaf is group:
            raise
        # One error: raise it as itself, not wrapped in a group the caller did not create.
        raise leaf from leaf.__cause__
