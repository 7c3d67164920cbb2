"""What the parts of one worker share: the jobs it runs, its counters, and the fetch loop's wake-up.

The task tree (``_worker``) makes one :class:`JobBoard` and hands it to the fetcher, the executor
and the listener; none of them knows the others. The executor adds and removes running jobs and
counts outcomes once they are written, the fetcher reads how many run, and anything that learns of
new work (a notification, a written outcome, a stop) sets ``more`` or calls :meth:`JobBoard.wake`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

from ._models import Job, WorkerLoad
from ._state import Cancelled, Outcome, Released, Snoozed, Succeeded, Transition

if TYPE_CHECKING:
    from ._context import JobContext
    from ._task import Task

#: The outcome counters of :class:`~nursery_worker.WorkerStats`, in its order.
COUNTERS = (
    "processed",
    "completed",
    "failed",
    "retried",
    "discarded",
    "snoozed",
    "cancelled",
    "released",
    "ignored",
)


class Scope(Protocol):
    """A job's cancel scope: anyio's, or on trio trio's own (the same scope without anyio's wrapper)."""

    def cancel(self) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(self, *exc_info: Any) -> bool | None: ...


@attrs.frozen
class JobGroup:
    """Where the jobs run: ``spawn(func, *args, name=...)`` starts one, ``new_scope()`` makes its scope."""

    spawn: Callable[..., object]
    new_scope: Callable[[], Scope]


@attrs.define(eq=False)
class Running:
    """One attempt this worker is executing."""

    job: Job
    task: Task[..., Any] | None
    scope: Scope
    released: bool = False
    cancel_requested: bool = False
    abandoned: bool = False  # its outcome was written while it still ran (it ignored cancellation)
    #: Cancelled through its scope as from outside it: the worker's jobs group is being left by an
    #: exception (asyncio's group, see ``_worker._AsyncioJobs``); it is released like a job whose
    #: parent scope was cancelled.
    outside: bool = False
    started: float = attrs.field(factory=time.monotonic)  # for the duration metric
    #: The job's context, once made (for the task, its middleware or a ``@step`` function).
    context: JobContext | None = None


@attrs.define(eq=False)
class JobBoard:
    """The running attempts by (job id, attempt), the outcome counters, and the fetch signal."""

    running: dict[tuple[int, int], Running] = attrs.field(factory=dict)
    counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(COUNTERS, 0))
    #: There may be available jobs the worker has not fetched: fetch now rather than at the poll.
    more: bool = True
    _wakeup: anyio.Event = attrs.field(init=False, factory=anyio.Event)

    def wake(self) -> None:
        """Wake the fetch loop (capacity was freed, work was announced, or a stop was asked for)."""
        self._wakeup.set()

    async def wait_wakeup(self, seconds: float) -> None:
        """Wait for :meth:`wake`, at most *seconds*."""
        with anyio.move_on_after(seconds):
            await self._wakeup.wait()
        self._wakeup = anyio.Event()

    def count(self, outcome: Outcome, written: Transition | None) -> None:
        """Count an attempt's *outcome* once its write is known: *written* is the transition the
        database applied, or None when it ignored a late write (then only ``ignored`` moves)."""
        c = self.counts
        if written is None:
            c["ignored"] += 1
        elif isinstance(outcome, Released):
            c["released"] += 1
        else:
            c["processed"] += 1
            if isinstance(outcome, Succeeded):
                c["completed"] += 1
            elif isinstance(outcome, Snoozed):
                c["snoozed"] += 1
            elif isinstance(outcome, Cancelled):
                c["cancelled"] += 1
            else:
                c["failed"] += 1
                c["retried" if written.state == "retryable" else "discarded"] += 1

    def load(self, state: str) -> WorkerLoad:
        """What the heartbeat records: *state* and the counters."""
        c = self.counts
        return WorkerLoad(state=state, processed=c["processed"], failed=c["failed"], running=len(self.running))
