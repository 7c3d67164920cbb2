"""JobContext: what a running job may know about itself, and the middleware protocol."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._models import Job

if TYPE_CHECKING:
    from ._app import App


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
