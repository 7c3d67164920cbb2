"""Job execution: one attempt from its task's call to its decided outcome, and the outcome bookkeeping.

The fetcher hands each claimed job to :meth:`Executor.start`, which runs it as a task of the jobs
task group under the job's own cancel scope. The attempt ends in an :class:`~._state.Outcome`;
:meth:`Executor.record` decides the state transition (pure, ``_state.decide``), hands it to the
completer without awaiting and wakes the fetch loop; :meth:`Executor.written` counts it on the
:class:`~._board.JobBoard` once the completer knows whether the write took effect.

Only the worker cancels a job's scope: at a hard stop (``released``) or on a cancel request
(``cancel_requested``, from the listener or the cancel watcher through :meth:`Executor.cancel`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread

from ._board import JobBoard, JobGroup, Running
from ._context import JobContext
from ._durable import (
    EXITS,
    CancelRequested,
    DatabaseStore,
    Session,
    StepResultRefused,
    Suspend,
    current_context,
    exit_of,
)
from ._json import check_result_size
from ._logging import set_job_log_context
from ._models import Completion, Job, Lease
from ._outcomes import Discard, JobOutcome, Retry, Snooze
from ._retry import policy_from_json
from ._rollup import RollupCounter
from ._state import (
    SUCCEEDED,
    Cancelled,
    ErrorInfo,
    Failed,
    Outcome,
    Released,
    Snoozed,
    Succeeded,
    Suspended,
    Transition,
    decide,
    error_info,
)
from ._stepwriter import StepWriter
from ._task import Task, encode_result
from ._tracing import process_span, tracing_active

if TYPE_CHECKING:
    from ._app import App
    from ._completer import Completer, Written
    from ._config import WorkerConfig
    from ._metrics import WorkerMetrics

# The worker's own log lines: the executor is a part of it.
logger = logging.getLogger("nursery_worker.worker")
#: One INFO line per finished attempt (``log_attempts``), on a logger of its own so that it can be
#: routed or silenced apart from the worker's other lines.
attempts_logger = logging.getLogger("nursery_worker.attempts")

# What each written outcome is called: the JSON ``outcome`` field (the names of the WorkerStats and
# Prometheus counters, so that the lines add up with them) and the words of the console line.
_OUTCOME_WORDS = {
    "completed": "completed",
    "retried": "failed, retry scheduled",
    "discarded": "failed, discarded",
    "snoozed": "snoozed",
    "cancelled": "cancelled",
    "released": "released (handed back at shutdown)",
    "ignored": "outcome ignored (the job was no longer this attempt's)",
}


class _JobTimeout(TimeoutError):
    """A job's own timeout, raised from ``call_next`` so that middleware sees it."""


class Executor:
    """Runs the attempts the fetcher claims and records their outcomes.

    Attributes:
        metrics: the worker's Prometheus metrics while they are served, else None.
        on_outcome: called with (job, outcome, transition) after each attempt (the testing helpers).
        watchdogs: the task group cancel watchdogs run in (the worker's services), while it is open.
        thread_limiter: bounds the plain-``def`` tasks running in threads (set when the worker runs).
    """

    def __init__(
        self,
        app: App,
        config: WorkerConfig,
        *,
        worker_id: str,
        board: JobBoard,
        completer: Completer,
    ) -> None:
        self.app = app
        self.config = config
        self.worker_id = worker_id
        self.board = board
        self.completer = completer
        self.metrics: WorkerMetrics | None = None
        self.on_outcome: Callable[[Job, Outcome, Transition], None] | None = None
        self.watchdogs: anyio.abc.TaskGroup | None = None
        self.thread_limiter: anyio.CapacityLimiter | None = None
        self._threads_lock = threading.Lock()
        self._threads_alive = 0
        # What each submitted completion counts as, once the completer says it was written.
        # (job, outcome, seconds the attempt ran)
        self._unwritten: dict[tuple[int, int, dt.datetime | None], tuple[Job, Outcome, float]] = {}
        #: The finished attempts whose outcome took effect, for the metric rollups (``_rollup.py``).
        self.rollups = RollupCounter()
        #: Writes the step records of this worker's durable jobs together.
        self.steps = StepWriter(completer.driver)

    def start(self, jobs: JobGroup, batch: Sequence[Job]) -> None:
        """Run each job of *batch* (one claim) as a task of *jobs*, under a cancel scope of its own."""
        # Looked up once per claim rather than per job: whether spans are recorded costs a few µs
        # to find out, a no-op job's run costs not much more.
        run = self._run_traced if tracing_active() else self._run_job
        tasks = self.app.tasks
        running = self.board.running
        spawn, new_scope = jobs.spawn, jobs.new_scope
        for job in batch:
            r = Running(job=job, task=tasks.get(job.task), scope=new_scope())
            running[job.id, job.attempt] = r
            spawn(run, r, name=f"job {job.id} {job.task}")

    def release_all(self) -> None:
        """The hard stop: cancel every running job; each is written back as available."""
        for r in list(self.board.running.values()):
            r.released = True
            r.scope.cancel()

    @property
    def threads_alive(self) -> int:
        """Threads still running plain ``def`` jobs, including ones the worker abandoned."""
        return self._threads_alive

    async def _run_job(self, r: Running) -> None:
        outcome: Outcome | None = None
        result: str | None = None
        job = r.job
        # Every log line of this job's task (its code, middleware, our own) carries these fields.
        # Set, not reset: this task is the job's own, and its context ends with it (and a context
        # manager per job costs more than a no-op job's run).
        set_job_log_context(job, self.worker_id, job.args if self.config.log_args else None)
        current_context.set(functools.partial(self._context_of, r))
        try:
            outcome, result = await self._execute(r)
        finally:
            if outcome is None:  # cancelled from outside the job's own scope, or a BaseException
                outcome = Released(reason="worker cancelled")
            if not r.abandoned:
                self.record(r, outcome, result)

    async def _run_traced(self, r: Running) -> None:
        """:meth:`_run_job` inside a CONSUMER span (when a tracer provider records spans)."""
        outcome: Outcome | None = None
        result: str | None = None
        job = r.job
        set_job_log_context(job, self.worker_id, job.args if self.config.log_args else None)
        current_context.set(functools.partial(self._context_of, r))
        try:
            with process_span(job, worker_id=self.worker_id) as traced:
                outcome, result = await self._execute(r)
                traced(outcome)
        finally:
            if outcome is None:
                outcome = Released(reason="worker cancelled")
            if not r.abandoned:
                self.record(r, outcome, result)

    def _context_of(self, r: Running) -> JobContext:
        """*r*'s context, made at the first need (the task's parameter, middleware, a ``@step``)."""
        if r.context is None:
            r.context = self._context(r)
        return r.context

    def _session(self, r: Running) -> Session:
        """The durable session of *r*'s attempt: its steps in the database, guarded by its lease."""
        job = r.job
        claimed = job.attempted_at
        started = r.started

        def clock() -> dt.datetime:
            # The database's time now, as the deadline is reckoned: the claim's time plus the time since.
            base = claimed if claimed is not None else dt.datetime.now(dt.UTC)
            return base + dt.timedelta(seconds=time.monotonic() - started)

        return Session(
            DatabaseStore(
                self.completer.driver,
                Lease(job_id=job.id, attempt=job.attempt, worker_id=self.worker_id, attempted_at=claimed),
                self.steps,
            ),
            job_id=job.id,
            attempt=job.attempt,
            max_result_bytes=self.config.max_result_bytes,
            sleep_threshold=self.config.durable_sleep_threshold,
            final_timeout=self.config.final_timeout,
            clock=clock,
        )

    def _context(self, r: Running) -> JobContext:
        factory = functools.partial(self._session, r)
        if r.task is None or r.task.timeout is None:
            return JobContext(job=r.job, worker_id=self.worker_id, app=self.app, _session_factory=factory)
        # The deadline by the database's clock, like every time of a job: the claim's timestamp
        # plus the time since the claim reached this worker by its monotonic clock (the claim's
        # return trip makes it early by at most that trip). time_left reads the monotonic clock
        # alone. This machine's wall clock never enters (issue 17).
        since = time.monotonic() - r.started
        claimed = r.job.attempted_at if r.job.attempted_at is not None else dt.datetime.now(dt.UTC)
        deadline = claimed + dt.timedelta(seconds=since + r.task.timeout)
        expires = time.monotonic() + r.task.timeout
        return JobContext(
            job=r.job,
            worker_id=self.worker_id,
            deadline=deadline,
            app=self.app,
            _expires=expires,
            _session_factory=factory,
        )

    async def _execute(self, r: Running) -> tuple[Outcome, str | None]:
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
        context = self._context_of(r) if (middlewares or task.context_param) else None
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
                try:
                    value = await handler()
                finally:
                    if r.context is not None and r.context._session is not None:
                        await self._flush_progress(r.context._session)
                if isinstance(value, JobOutcome):
                    return self._steered(value), None
                try:
                    encoded = encode_result(value, task=task.name)
                    if encoded is not None:
                        # Refused here, before any write, rather than by the database in the completer.
                        check_result_size(encoded, self.config.max_result_bytes, task=task.name)
                    return SUCCEEDED, encoded
                except (TypeError, ValueError) as exc:
                    # Not JSON, or too large. The work is done; running it again would not change
                    # what it returns, only repeat its side effects.
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
            # A step's result that cannot be stored: the step ran, and would only run again.
            return Failed(error=error_info(exc), permanent=isinstance(exc, StepResultRefused)), None
        except EXITS as ended:
            return self._durable_exit(ended), None
        except BaseExceptionGroup as group:
            # A durable call in a task group of the job's own: its exit arrives wrapped.
            wrapped = exit_of(group)
            cancelled = anyio.get_cancelled_exc_class()
            if wrapped is None or group.subgroup(lambda e: isinstance(e, cancelled)) is not None:
                raise  # a cancellation from outside the job goes on (its outcome: released)
            return self._durable_exit(wrapped), None
        # Only the worker cancels the job's scope: at shutdown (released) or by a cancel request.
        return self._interrupted(r, task), None

    @staticmethod
    def _durable_exit(exit: BaseException) -> Outcome:
        """The outcome of an attempt a durable call ended (see ``_durable.EXITS``)."""
        if isinstance(exit, Suspend):
            # A durable wait wrote the job's suspension itself: nothing is left to write.
            return exit.outcome
        if isinstance(exit, CancelRequested):
            return Cancelled(reason="cancelled by request while it waited durably")
        # AttemptLost: another attempt owns the job now; what is submitted is ignored as a late write.
        return Released(reason=str(exit))

    async def _flush_progress(self, session: Session) -> None:
        """Write the progress report the interval held back, as the attempt ends; a failure to
        write it is logged, not the attempt's (progress is for people to read)."""
        if not session.progress_held:
            return
        try:
            await session.flush_progress()
        except Exception as exc:
            logger.warning("job %d: its last progress report was not written: %s", session.job_id, exc)

    @staticmethod
    def _interrupted(r: Running, task: Task[..., Any]) -> Outcome:
        if r.outside:  # as when the cancellation of a scope around the job's own reached it
            return Released(reason="worker cancelled")
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
            error = ErrorInfo(type="Retry", message=reason)
            if outcome.at is not None:  # a time, as the database's clock reads it: not a wait by ours
                return Failed(error=error, retry_at=outcome.at)
            return Failed(error=error, retry_after=outcome.seconds)
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
            limiter=self.thread_limiter,
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

    def record(self, r: Running, outcome: Outcome, result: str | None = None) -> None:
        """Decide *r*'s transition, hand it to the completer, and free its slot (counted once written).

        Synchronous on purpose: a job being cancelled can still record that it was released.
        """
        job, task = r.job, r.task
        backoff = policy_from_json(job.retry_policy) if job.retry_policy else None
        if backoff is None:
            backoff = task.backoff if task is not None else (lambda attempt: 0.0)
        transition = decide(outcome, attempt=job.attempt, max_attempts=job.max_attempts, backoff=backoff)
        duration = time.monotonic() - r.started
        self._unwritten[job.id, job.attempt, job.attempted_at] = (job, outcome, duration)
        completion = Completion(
            job_id=job.id,
            attempt=job.attempt,
            attempted_at=job.attempted_at,
            transition=transition,
            result_json=result,
            max_attempts=job.max_attempts,
            backoff=backoff,
        )
        if isinstance(outcome, Suspended):
            # Written by the job itself (Driver.wait_step, guarded by its lease): counted as written.
            self.written([(completion, transition)])
        else:
            self.completer.submit(completion)
        if self.on_outcome is not None:
            self.on_outcome(job, outcome, transition)
        if self.metrics is not None:
            self.metrics.observe(job, outcome, duration)
        if not isinstance(outcome, (Released, Succeeded, Snoozed)):
            if isinstance(outcome, Cancelled):
                logger.warning("job %d (%s) attempt %d: %s", job.id, job.task, job.attempt, outcome.reason)
            else:
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
        del self.board.running[job.id, job.attempt]
        self.board.wake()

    def written(self, results: Sequence[Written]) -> None:
        """Count the outcomes the completer wrote: by outcome where the write took effect, as
        ``ignored`` where the database refused a late one (the job was no longer this attempt's)."""
        ignored = 0
        log = self.config.log_attempts and attempts_logger.isEnabledFor(logging.INFO)
        for c, applied in results:
            entry = self._unwritten.pop((c.job_id, c.attempt, c.attempted_at), None)
            if entry is None:
                continue
            job, outcome, duration = entry
            if applied is not None and applied is not c.transition:
                # Refused and recorded as failed instead (see _completer.refused_transition).
                outcome = Failed(error=applied.error or ErrorInfo(type="OutcomeRefused", message=""))
            self.board.count(outcome, applied)
            if applied is not None:
                self.rollups.count(
                    queue=job.queue,
                    task=job.task,
                    state=applied.state.value,
                    error_type=applied.error.type if applied.error is not None else None,
                    duration=duration,
                )
            if self.metrics is not None:
                self.metrics.count(job, outcome, applied)
            if log:
                self._log_attempt(job, outcome, applied, duration)
            ignored += applied is None
        if ignored:
            logger.warning(
                "%d late outcome(s) ignored: their jobs were no longer this worker's attempts (rescued after a "
                "lapsed heartbeat, or handed back)",
                ignored,
            )

    def _log_attempt(self, job: Job, outcome: Outcome, applied: Transition | None, duration: float) -> None:
        """The attempt's INFO line: each figure a field of the record (top-level keys in JSON logs)."""
        if applied is None:
            name = "ignored"
        elif isinstance(outcome, Succeeded):
            name = "completed"
        elif isinstance(outcome, Snoozed):
            name = "snoozed"
        elif isinstance(outcome, Cancelled):
            name = "cancelled"
        elif isinstance(outcome, Released):
            name = "released"
        else:
            name = "retried" if applied.state == "retryable" else "discarded"
        fields: dict[str, Any] = {
            "job_id": job.id,
            "task": job.task,
            "queue": job.queue,
            "attempt": job.attempt,
            "worker_id": self.worker_id,
            "max_attempts": job.max_attempts,
            "duration": round(duration, 6),
            "outcome": name,
        }
        if isinstance(outcome, Failed):
            fields["error"] = outcome.error.type
        elif isinstance(outcome, Suspended):  # counted as a snooze; what it waits for, to tell them apart
            fields["waiting"] = f"{outcome.kind} {outcome.step}"
        # The message is formatted only if a handler emits it (lazy %-arguments).
        attempts_logger.info(
            "%s attempt %d/%d %s in %.3fs",
            job.task,
            job.attempt,
            job.max_attempts,
            _OUTCOME_WORDS[name],
            duration,
            extra=fields,
        )

    def cancel(self, job_id: int, attempt: int | None = None) -> None:
        """Cancel the scope of a running job whose cancel was requested (no-op if not ours)."""
        for (jid, att), r in list(self.board.running.items()):
            if jid != job_id or (attempt is not None and att != attempt) or r.cancel_requested:
                continue
            logger.info("job %d (%s): cancel requested; cancelling it", jid, r.job.task)
            r.cancel_requested = True
            r.scope.cancel()
            if self.watchdogs is not None:
                self.watchdogs.start_soon(self._abandon_if_stuck, r, name=f"cancel watchdog {jid}")

    async def _abandon_if_stuck(self, r: Running) -> None:
        """A job that ignores its cancellation is recorded as cancelled and abandoned after a grace."""
        await anyio.sleep(self.config.cancel_grace)
        key = (r.job.id, r.job.attempt)
        if self.board.running.get(key) is not r:
            return
        logger.error(
            "job %d (%s) ignored its cancellation for %gs; recorded as cancelled and abandoned (it may still run)",
            r.job.id,
            r.job.task,
            self.config.cancel_grace,
        )
        r.abandoned = True
        self.record(
            r,
            Cancelled(
                reason=f"cancelled by request; the job did not stop within {self.config.cancel_grace:g}s and was "
                "abandoned (it may still be running)",
                abandoned=True,
            ),
        )
