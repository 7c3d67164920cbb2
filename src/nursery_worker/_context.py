"""JobContext: what a running job may know about itself, and the middleware protocol."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

import attrs

from ._durable import Session, memory_session
from ._models import Job

if TYPE_CHECKING:
    from ._app import App

P = ParamSpec("P")
R = TypeVar("R")

#: Sleeps shorter than this wait in the worker when no worker option says otherwise (testing).
_DEFAULT_SLEEP_THRESHOLD = 10.0


@attrs.frozen(kw_only=True)
class JobContext:
    """The running job, for a task that declares a parameter annotated ``JobContext``.

    Attributes:
        job: the job as it was fetched (``job.args`` are the arguments of this call).
        worker_id: the worker running it (``"testing"`` under the testing helpers).
        deadline: when the attempt's timeout expires (UTC), or None without a timeout. It is by
            the database's clock, like the job's own times (``attempted_at``, ``scheduled_at``):
            the claim's timestamp plus the time since, as the worker's monotonic clock measures
            it. The timeout itself is a duration on the worker's monotonic clock; compare with
            :attr:`time_left` rather than with this machine's ``datetime.now()``, which may be
            set differently.
        app: the :class:`App` the task belongs to (to enqueue follow-up jobs).

    Example:
        >>> @app.task
        ... async def import_file(context: JobContext, path: str) -> None:
        ...     log.info("job %d attempt %d on %s", context.job_id, context.attempt, context.worker_id)
    """

    job: Job
    worker_id: str
    deadline: dt.datetime | None = None
    app: App | None = attrs.field(default=None, repr=False)
    #: The deadline by the worker's monotonic clock (``time.monotonic()``), which time_left reads.
    _expires: float | None = attrs.field(default=None, repr=False, alias="_expires")
    #: Makes the attempt's durable session (the worker's: in the database), at its first durable call.
    _session_factory: Callable[[], Session] | None = attrs.field(
        default=None, repr=False, eq=False, alias="_session_factory"
    )
    _session: Session | None = attrs.field(default=None, repr=False, eq=False, alias="_session")

    @property
    def job_id(self) -> int:
        """The job's id."""
        return self.job.id

    @property
    def attempt(self) -> int:
        """The attempt running now (1 for the first)."""
        return self.job.attempt

    @property
    def max_attempts(self) -> int:
        """The job's attempt budget."""
        return self.job.max_attempts

    @property
    def queue(self) -> str:
        """The queue the job runs on."""
        return self.job.queue

    @property
    def task(self) -> str:
        """The task name."""
        return self.job.task

    @property
    def time_left(self) -> float | None:
        """Seconds until the deadline, or None without a timeout.

        Measured by the worker's monotonic clock, so neither a wall clock set wrong nor one that
        jumps changes it. (A context made by hand with only a ``deadline``, as
        ``testing.make_context`` does, measures it against this machine's wall clock.)
        """
        if self.deadline is None:
            return None
        if self._expires is not None:
            return self._expires - time.monotonic()
        return (self.deadline - dt.datetime.now(dt.UTC)).total_seconds()

    # --- durable steps, sleeps, events and progress (see _durable.py) -----------------------

    def _durable(self) -> Session:
        """The attempt's durable session (made at first use): in the database under a worker, in
        memory for a context made by hand or by ``testing.make_context``."""
        session = self._session
        if session is None:
            if self._session_factory is not None:
                session = self._session_factory()
            else:
                session = memory_session(self.job.id, self.job.attempt, sleep_threshold=_DEFAULT_SLEEP_THRESHOLD)
            object.__setattr__(self, "_session", session)
        return session

    @overload
    async def step(self, name: str, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    async def step(self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once as the durable step *name* of this job, and return its result.

        The first time, the function runs (awaited if it is ``async``; a plain function is called
        on the event loop) and its JSON result is stored, guarded by this attempt's lease. When the
        job runs again (a retry, a rescue after a crash, a hand-back at shutdown, a durable wait),
        a completed step returns its stored result without running. The result is returned as JSON
        gives it back, the first time too (a tuple comes back as a list), so every attempt sees the
        same value. A step that raises is recorded as failed with its error, and the exception
        propagates: the job's retry policy decides, and the next attempt runs the step again.

        Args:
            name: the step's name, unique within the job (use ``f"email-{user_id}"`` in a loop).
            fn: the function the step runs.
            *args: its positional arguments.
            **kwargs: its keyword arguments.

        Returns:
            The step's result (stored or fresh).

        Raises:
            ConfigurationError: *name* is empty, too long, or already used in this job.
            StepResultRefused: the result is not JSON or over ``max_result_bytes``; the job fails for
                good (the step's side effects happened; running it again would repeat them).
            AttemptLost: the attempt is no longer this worker's (nothing was written).

        Example:
            >>> charge_id = await context.step("charge", payments.charge, order_id, amount=total)
        """
        return await self._durable().step(name, fn, args, kwargs)

    async def sleep(self, seconds: float | dt.timedelta, *, name: str | None = None) -> None:
        """Sleep for *seconds*; beyond the worker's ``durable_sleep_threshold``, durably.

        A durable sleep ends this attempt without using it up: the job is ``scheduled`` until the
        sleep's end, its slot freed, and runs again then, from the top, its completed steps returning
        their stored results, and this sleep returning at once. The end is stored at the first call,
        so a job that runs again before it (the dashboard's "Run now") goes back to sleep until then. A
        shorter sleep waits in the worker (``anyio.sleep``).

        Args:
            seconds: how long (a number >= 0 or a ``timedelta``, at most 100 years).
            name: the step's name (default: ``sleep-1``, ``sleep-2``, ... in the order of the job's calls).

        Raises:
            ConfigurationError: *seconds* is negative, not finite or not a time; *name* is taken.
            AttemptLost: the attempt is no longer this worker's.
        """
        await self._durable().sleep(seconds, name)

    async def sleep_until(self, when: dt.datetime, *, name: str | None = None) -> None:
        """Sleep until *when* (compared with the database's clock); durably beyond the threshold.

        As :meth:`sleep`, with an aware ``datetime`` for the end.

        Args:
            when: an aware datetime.
            name: the step's name (default: ``sleep-N`` in call order).

        Raises:
            ConfigurationError: *when* is naive or not a datetime; *name* is taken.
            AttemptLost: the attempt is no longer this worker's.
        """
        await self._durable().sleep_until(when, name)

    async def wait_for_event(
        self,
        key: str,
        *,
        timeout: float | dt.timedelta | None = None,  # noqa: ASYNC109 (a durable wait's end, not a cancel scope)
        name: str | None = None,
    ) -> Any:
        """Wait durably for ``app.emit(key, payload)`` and return the payload.

        An event emitted before (by anyone, at any time within ``event_retention``) is returned at
        once: the first emit of a key wins, and a late waiter still receives it. Otherwise this
        attempt ends without using up an attempt and the job is ``scheduled`` until *timeout*: an
        emit makes it available at once, and when it runs again this call returns the payload. The
        outcome is stored as a step: every later attempt gets the same payload (or timeout).

        Args:
            key: the event's key (a non-empty str such as ``f"payment:{order_id}"``).
            timeout: seconds (or a ``timedelta``) to wait, counted from the first call; None waits
                for as long as it takes.
            name: the step's name (default: ``event:<key>``).

        Returns:
            The emitted payload (JSON).

        Raises:
            EventTimeout: the timeout passed before the event was emitted (a ``TimeoutError``);
                the task may catch it and go on.
            ConfigurationError: *key*, *timeout* or *name* is invalid, or *name* is taken.
            AttemptLost: the attempt is no longer this worker's.
        """
        return await self._durable().wait_for_event(key, timeout, name)

    async def progress(self, done: float, total: float | None = None, *, note: str | None = None) -> None:
        """Report how far the job is: stored on the job (``job.progress``) and shown by ``jobs show``,
        ``status`` and the dashboard; kept across attempts.

        Written at most once a second: a report within a second of the last write is held and the
        latest held one is written by the next report after the second, or when the attempt ends;
        a report with ``done >= total`` is written at once.

        Args:
            done: the units done (a finite number >= 0).
            total: the units in all, or None when unknown.
            note: a short text (at most 500 characters are kept).

        Raises:
            ConfigurationError: *done* or *total* is negative or not a finite number, or *note* is not a str.
            AttemptLost: the attempt is no longer this worker's.
        """
        await self._durable().progress(done, total, note)


CallNext = Callable[[], Awaitable[Any]]
"""The ``call_next`` a :class:`Middleware` receives: awaiting it runs the rest of the chain and the task,
and returns the task's result (or the outcome it returned)."""


class Middleware(Protocol):
    """An ``async`` callable wrapped around each job: ``await middleware(context, call_next)``.

    It runs before the job, calls ``await call_next()`` to run the rest of the chain and the task,
    and may act on the result or the exception afterwards. It must return what ``call_next``
    returned (or another JSON result). An exception it raises fails the job (like the task's own),
    never the worker.

    Example:
        >>> @app.middleware
        ... async def timing(context: JobContext, call_next: CallNext) -> Any:
        ...     start = time.perf_counter()
        ...     try:
        ...         return await call_next()
        ...     finally:
        ...         log.info("job %d took %.3fs", context.job_id, time.perf_counter() - start)
    """

    def __call__(self, context: JobContext, call_next: CallNext, /) -> Awaitable[Any]: ...
