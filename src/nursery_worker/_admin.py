"""The inspect and admin operations: jobs, queues and their limits, circuit breakers, periodic
schedules, and waiting for a job to finish.

:class:`Admin` is one object over one app's database. ``App``'s methods of the same names are
one-line delegations to it (they carry the user-facing docstrings); the CLI and the dashboard call
it directly. It checks arguments, calls the driver and shapes the answer; it holds no state of its
own, and reads ``app.driver`` on every call, so it follows ``App.configure_database``.

Layering: this module imports records, errors, validators and the maintenance services, never
``_app`` (``App`` is named for type checking only).
"""

from __future__ import annotations

import datetime as dt
import difflib
import enum
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc

from ._errors import RETRYABLE_ERRORS, ConfigurationError, JobFailed, JobNotFound, JobStateError
from ._flow import BreakerInfo, check_max_concurrency, parse_rate_limit
from ._maintenance import Pruner
from ._models import CancelResult, Job, QueueInfo
from ._periodic import PeriodicInfo, list_periodic
from ._state import JobState
from ._task import check_queue, check_task_name

if TYPE_CHECKING:
    from ._app import App
    from ._driver import Driver

#: The states :meth:`Admin.retry` names as "already queued" in its refusal.
_QUEUED = ("pending", "available", "scheduled", "retryable")
#: The states :meth:`Admin.prune` may delete.
_FINAL = ("completed", "discarded", "cancelled")


class Unchanged(enum.Enum):
    """The type of :data:`UNCHANGED`."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


#: ``set_queue_limits``'s default for a limit it leaves as it is (None lifts a limit instead).
UNCHANGED: Final = Unchanged.UNCHANGED


def check_job_id(job_id: object, where: str) -> int:
    """Return *job_id* if it is an int (a bool is not), else raise ``TypeError`` naming *where*."""
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise TypeError(f"{where}: job_id must be an int, got {job_id!r}")
    return job_id


def retry_refusal(job_id: int, state: JobState) -> str:
    """Why job *job_id*, in *state*, cannot be retried: its state, what that means, and what can be."""
    why = {
        "completed": "",
        "executing": " (it is running now)",
        "retryable": " (it will run again by itself)",
    }.get(state.value, " (it is already queued)" if state.value in _QUEUED else "")
    return f"job {job_id} is {state.value}{why}: only a failed (discarded) or cancelled job can be retried"


class Admin:
    """The inspect and admin operations on *app*'s database.

    Each method is documented in full on the ``App`` method of the same name.

    Args:
        app: the app whose database (driver, error cap and periodic schedules) to use.

    Example:
        >>> admin = Admin(app)
        >>> [job.id for job in await admin.list_jobs(state="discarded", limit=10)]
    """

    __slots__ = ("_app",)

    def __init__(self, app: App) -> None:
        self._app = app

    def __repr__(self) -> str:
        return f"<Admin of {self._app!r}>"

    @property
    def driver(self) -> Driver:
        """The app's driver now (it changes with ``App.configure_database``)."""
        return self._app.driver

    # --- jobs ---------------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> Job:
        """A fresh snapshot of job *job_id*; raises ``JobNotFound`` or ``TypeError``."""
        job_id = check_job_id(job_id, "get_job")
        job = await self.driver.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def cancel(self, job_id: int) -> CancelResult:
        """Cancel a waiting job at once, or ask the worker running it to; see ``App.cancel``."""
        job_id = check_job_id(job_id, "cancel")
        found = await self.driver.cancel_job(job_id, error_cap=self._app.error_cap)
        if found is None:
            raise JobNotFound(job_id)
        return found

    async def retry(self, job_id: int) -> Job:
        """Make a discarded or cancelled job available again; see ``App.retry``."""
        job_id = check_job_id(job_id, "retry")
        job = await self.driver.retry_job(job_id)
        if job is not None:
            return job
        current = await self.get_job(job_id)
        raise JobStateError(retry_refusal(job_id, current.state))

    async def list_jobs(
        self,
        *,
        state: JobState | str | Iterable[JobState | str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered by every option given; see ``App.list_jobs``."""
        states: list[str] | None = None
        if state is not None:
            items = [state] if isinstance(state, str) else list(state)
            states = []
            for item in items:
                try:
                    states.append(JobState(item).value)
                except ValueError:
                    raise ConfigurationError(
                        f"list_jobs(state={item!r}): not a job state; use one of {', '.join(s.value for s in JobState)}"
                    ) from None
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ConfigurationError(f"list_jobs(limit={limit!r}): must be an int from 1 to 10000")
        if queue is not None:
            check_queue(queue, where="list_jobs()")
        if task is not None:
            check_task_name(task, where="list_jobs()")
        if before_id is not None:
            check_job_id(before_id, "list_jobs(before_id=...)")
        return await self.driver.list_jobs(states=states, queue=queue, task=task, limit=limit, before_id=before_id)

    async def prune(self, *, older_than: float | dt.timedelta, states: str | Iterable[str] = _FINAL) -> int:
        """Delete finished jobs older than *older_than*; return how many; see ``App.prune``."""
        if isinstance(older_than, dt.timedelta):
            older_than = older_than.total_seconds()
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
            raise ConfigurationError(f"prune(older_than={older_than!r}): must be seconds >= 0 or a timedelta")
        chosen = [states] if isinstance(states, str) else list(states)
        for state in chosen:
            if state not in _FINAL:
                raise ConfigurationError(f"prune(states=...): {state!r} is not a final state")
        pruner = Pruner(self.driver, retention={s: float(older_than) for s in chosen}, max_batches=1_000_000)
        return sum((await pruner.run_once()).values())

    async def wait_for(self, job_id: int, *, timeout: float | None = None, poll_interval: float = 1.0) -> Job:  # noqa: ASYNC109
        """The job once completed; raises ``JobFailed`` if it ended otherwise; see ``App.wait_for``."""
        job_id = check_job_id(job_id, "wait_for")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
            raise ConfigurationError(f"wait_for(timeout={timeout!r}): must be seconds >= 0 or None")
        finished = await self._wait_finished(job_id, limit=timeout, poll_interval=poll_interval)
        if finished.state is JobState.COMPLETED:
            return finished
        last = finished.errors[-1].message if finished.errors else "no error recorded"
        raise JobFailed(f"job {job_id} ({finished.task}) ended {finished.state.value}: {last}", finished)

    async def _wait_finished(self, job_id: int, *, limit: float | None, poll_interval: float) -> Job:
        """Poll the job, waking early on a 'finished' notification that may name it."""
        woken = anyio.Event()
        result: list[Job] = []
        failure: list[JobNotFound] = []
        wanted = str(job_id)

        async def listen(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            listener = self.driver.listener()
            try:
                try:
                    await listener.connect()
                finally:
                    task_status.started()  # LISTEN is up (or failed: polling alone then)
                while True:
                    for note in await listener.wait(keepalive=15.0):
                        if note.kind == "finished" and (note.value == "*" or wanted in note.value.split(",")):
                            woken.set()
            except RETRYABLE_ERRORS:
                return  # polling goes on
            finally:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()

        async def poll(tg_scope: anyio.CancelScope) -> None:
            nonlocal woken
            try:
                while True:
                    # Read after LISTEN is up, so a finish in between is seen by this read or notified.
                    job = await self.get_job(job_id)
                    if job.state.is_terminal:
                        result.append(job)
                        return
                    with anyio.move_on_after(poll_interval):
                        await woken.wait()
                    woken = anyio.Event()
            except JobNotFound as exc:  # pruned while we waited: raised below, not inside a group
                failure.append(exc)
            finally:
                tg_scope.cancel()

        # The first look is outside any deadline: a finished job is returned even with timeout=0.
        first = await self.get_job(job_id)
        if first.state.is_terminal:
            return first
        with anyio.move_on_after(limit if limit is not None else math.inf) as outer:
            async with anyio.create_task_group() as tg:
                await tg.start(listen)
                tg.start_soon(poll, tg.cancel_scope)
        if failure:
            raise failure[0]
        if result:
            return result[0]
        assert outer.cancelled_caught
        raise TimeoutError(f"job {job_id} did not finish within {limit:g}s" if limit is not None else "")

    # --- queues -------------------------------------------------------------------------------

    async def known_queues(self) -> list[str]:
        """Every queue something names, sorted: a job or a stored pause/limit, a registered task or
        periodic schedule of the app (and ``default``), a periodic schedule in the database, or a
        registered worker."""
        names = {q.name for q in await self.driver.list_queues()}
        names.update(self._app.queue_names())
        names.update(row.queue for row in (await self.driver.list_periodic()).rows)
        for worker in await self.driver.list_workers():
            names.update(worker.queues)
        return sorted(names)

    async def check_known_queue(self, name: str, *, action: str) -> None:
        """Raise ``ConfigurationError`` if nothing names queue *name* (see :meth:`known_queues`).

        A pause or a limit stored for a queue nothing uses is most likely a typo, and it would hold
        nothing back: the message names the known queues, the closest match, and ``--create``.

        Args:
            name: the queue.
            action: what was asked (``"pause"``, ``"limit"``), for the message.
        """
        known = await self.known_queues()
        if name in known:
            return
        near = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigurationError(
            f"queue {name!r} is unknown: no job, registered task, periodic schedule or worker names it "
            f"(known queues: {', '.join(known)}){hint} Nothing was changed; to {action} it anyway "
            "(a queue nothing uses yet), pass --create"
        )

    async def pause_queue(self, name: str, *, create: bool = True) -> bool:
        """Pause queue *name* for every worker; False if it was already paused; see ``App.pause_queue``.

        With ``create=False``, a queue nothing names is refused (:meth:`check_known_queue`).
        """
        queue = check_queue(name, where="pause_queue()")
        if not create:
            await self.check_known_queue(queue, action="pause")
        return await self.driver.set_queue_paused(queue, paused=True)

    async def resume_queue(self, name: str, *, create: bool = True) -> bool:
        """Resume queue *name*; False if it was not paused; see ``App.resume_queue``.

        With ``create=False``, a queue nothing names is refused (:meth:`check_known_queue`).
        """
        queue = check_queue(name, where="resume_queue()")
        if not create:
            await self.check_known_queue(queue, action="resume")
        return await self.driver.set_queue_paused(queue, paused=False)

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue with jobs or a stored pause flag or limit, sorted by name; see ``App.list_queues``."""
        return await self.driver.list_queues()

    async def set_queue_limits(
        self,
        name: str,
        *,
        max_concurrency: int | Unchanged | None = UNCHANGED,
        rate_limit: str | tuple[int, float | dt.timedelta] | Unchanged | None = UNCHANGED,
        create: bool = True,
    ) -> QueueInfo:
        """Change queue *name*'s limits and return the queue; see ``App.set_queue_limits``.

        A limit left at :data:`UNCHANGED` keeps its stored value; None lifts it. With
        ``create=False``, a queue nothing names is refused (:meth:`check_known_queue`).
        """
        where = f"set_queue_limits({name!r})"
        queue = check_queue(name, where=where)
        if max_concurrency is UNCHANGED and rate_limit is UNCHANGED:
            raise ConfigurationError(
                f"{where}: give max_concurrency= or rate_limit= (a value sets a limit, None lifts it; a limit "
                "left out stays as it is)"
            )
        concurrency = None if max_concurrency is UNCHANGED else check_max_concurrency(max_concurrency, where=where)
        rate = None if rate_limit is UNCHANGED else parse_rate_limit(rate_limit, where=where)
        if not create:
            await self.check_known_queue(queue, action="limit")
        if max_concurrency is UNCHANGED or rate_limit is UNCHANGED:
            # Read-then-write: two admins changing different limits of one queue at the same instant
            # may each keep the other's old value; an operator's command, not a hot path.
            stored = await self.driver.list_queues(queue)
            if max_concurrency is UNCHANGED:
                concurrency = stored[0].max_concurrency if stored else None
            if rate_limit is UNCHANGED and stored and stored[0].rate_limit is not None:
                rate = parse_rate_limit(stored[0].rate_limit, where=where)
        await self.driver.set_queue_limits(queue, max_concurrency=concurrency, rate=rate)
        (info,) = await self.driver.list_queues(queue)
        return info

    # --- circuit breakers and periodic schedules ----------------------------------------------

    async def list_breakers(self) -> list[BreakerInfo]:
        """Every task's circuit breaker with its state, sorted by task; see ``App.list_breakers``."""
        return await self.driver.list_breakers()

    async def list_periodic(self) -> list[PeriodicInfo]:
        """The database's periodic schedules and the app's own, sorted by name; see ``App.list_periodic``."""
        return await list_periodic(self._app)
