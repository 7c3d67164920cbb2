"""The inspect and admin operations: jobs, queues and their limits, circuit breakers, periodic
schedules, waiting for a job to finish, and what the dashboard reads (``_insights.py``: process
health, job graphs, failures, metrics history, the audit trail).

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
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import attrs

from . import _insights
from ._errors import RETRYABLE_ERRORS, ConfigurationError, JobFailed, JobNotFound, JobStateError, PeriodicNotFound
from ._flow import BreakerInfo, check_max_concurrency, parse_rate_limit
from ._insights import FailureReport, JobGraph, MetricsHistory, PeriodicOverview, WorkerHealth
from ._jobfilter import BulkAction, BulkResult, JobFilter
from ._maintenance import Pruner
from ._models import (
    AuditEntry,
    BulkChange,
    CancelResult,
    DashboardCounts,
    DatabaseHealth,
    DurableOverview,
    Job,
    JobSearch,
    JobSelection,
    JobStep,
    QueueInfo,
    WorkerRow,
)
from ._periodic import PeriodicInfo, list_periodic
from ._state import JobState
from ._task import check_queue, check_task_name

if TYPE_CHECKING:
    from ._app import App
    from ._driver import Driver
    from ._task import Task

logger = logging.getLogger("nursery_worker.periodic")

#: The states :meth:`Admin.retry` names as "already queued" in its refusal.
_QUEUED = ("pending", "available", "scheduled", "retryable")
#: The states :meth:`Admin.prune` may delete.
_FINAL = ("completed", "discarded", "cancelled")
#: The default and the largest number of jobs a bulk operation changes per transaction.
DEFAULT_CHUNK = 500
_MAX_CHUNK = 10_000

#: A bulk operation's progress callback: called after each chunk with how many jobs it examined.
Progress = Callable[[int], object]


def check_filter(job_filter: object, where: str) -> JobFilter:
    """Return *job_filter* if it is a :class:`JobFilter`, else raise ``TypeError`` naming *where*."""
    if not isinstance(job_filter, JobFilter):
        raise TypeError(
            f"{where}: expected a JobFilter (for example JobFilter(states='available', queue='emails')), "
            f"got {job_filter!r}"
        )
    return job_filter


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

    async def get_steps(self, job_id: int, *, limit: int | None = None) -> list[JobStep]:
        """Job *job_id*'s durable steps by position (the first *limit*); raises ``JobNotFound``,
        ``TypeError`` or ``ConfigurationError`` (a limit below 1)."""
        job_id = check_job_id(job_id, "get_steps")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigurationError(f"get_steps(limit={limit!r}): pass an int >= 1, or None for every step")
        steps = await self.driver.job_steps(job_id, limit=limit)
        if not steps and await self.driver.get_job(job_id) is None:
            raise JobNotFound(job_id)
        return steps

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

    async def run_now(self, job_id: int) -> Job:
        """Make a scheduled or retryable job available now, skipping the rest of its wait.

        Raises:
            JobNotFound: there is no such job.
            JobStateError: the job is not scheduled or retryable (the message says its state).
        """
        job_id = check_job_id(job_id, "run_now")
        job = await self.driver.run_job_now(job_id)
        if job is not None:
            return job
        current = await self.get_job(job_id)
        raise JobStateError(
            f"job {job_id} is {current.state.value}: only a scheduled or retryable job can be run now"
            + (" (it is already available)" if current.state is JobState.AVAILABLE else "")
        )

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

    async def count_jobs(self, job_filter: JobFilter) -> int:
        """How many jobs *job_filter* matches now; see ``App.count_jobs``."""
        return (await self.driver.count_jobs(check_filter(job_filter, "count_jobs").selection())).count

    async def delete_job(self, job_id: int) -> Job:
        """Delete one job that is not executing; return it as it was; see ``App.delete_job``."""
        job = await self.get_job(check_job_id(job_id, "delete_job"))
        if job.state is JobState.EXECUTING:
            raise JobStateError(
                f"job {job_id} is executing and cannot be deleted: a worker is running it; cancel it first "
                f"(app.cancel({job_id}) or `nursery-worker jobs cancel {job_id}`), then delete it"
            )
        deleted = await self.driver.delete_jobs([job.id], states=[job.state.value])
        if not deleted.changed:
            current = await self.get_job(job.id)  # moved meanwhile; JobNotFound if deleted by another
            raise JobStateError(f"job {job_id} moved to {current.state.value} while being deleted; try again")
        return job

    async def bulk(
        self,
        action: BulkAction,
        job_filter: JobFilter,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        progress: Progress | None = None,
    ) -> BulkResult:
        """Cancel, retry or delete every job *job_filter* matches, a chunk per transaction; see
        ``App.bulk_cancel``."""
        where = f"bulk_{action}"
        narrowed = check_filter(job_filter, where).for_action(action)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= _MAX_CHUNK:
            raise ConfigurationError(f"{where}(chunk_size={chunk_size!r}): must be an int from 1 to {_MAX_CHUNK}")
        if progress is not None and not callable(progress):
            raise TypeError(f"{where}(progress={progress!r}): must be a callable taking a count, or None")
        selection = narrowed.selection()
        counted = await self.driver.count_jobs(selection)
        if counted.max_id is None:
            return BulkResult(action=action, matched=0, changed=0)
        # Only the jobs counted: one inserted meanwhile has a higher id and is left alone.
        selection = attrs.evolve(selection, max_id=counted.max_id)
        states = selection.states or ()
        changed = requested = 0
        after = 0
        while True:
            ids = await self.driver.select_job_ids(selection, after_id=after, limit=chunk_size)
            if not ids:
                break
            change: BulkChange
            if action == "cancel":
                change = await self.driver.cancel_jobs(ids, states=states, error_cap=self._app.error_cap)
            elif action == "retry":
                change = await self.driver.retry_jobs(ids, states=states)
            else:
                change = await self.driver.delete_jobs(ids, states=states)
            changed += change.changed
            requested += change.requested
            after = ids[-1]
            if progress is not None:
                progress(len(ids))
        return BulkResult(
            action=action,
            matched=counted.count,
            changed=changed,
            requested=requested,
            skipped=max(0, counted.count - changed - requested),
        )

    @staticmethod
    def _prune_args(older_than: object, states: str | Iterable[str], where: str) -> tuple[float, list[str]]:
        if isinstance(older_than, dt.timedelta):
            older_than = older_than.total_seconds()
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
            raise ConfigurationError(f"{where}(older_than={older_than!r}): must be seconds >= 0 or a timedelta")
        chosen = [states] if isinstance(states, str) else list(states)
        for state in chosen:
            if state not in _FINAL:
                raise ConfigurationError(f"{where}(states=...): {state!r} is not a final state")
        return float(older_than), chosen

    async def prune(self, *, older_than: float | dt.timedelta, states: str | Iterable[str] = _FINAL) -> int:
        """Delete finished jobs older than *older_than*; return how many; see ``App.prune``."""
        seconds, chosen = self._prune_args(older_than, states, "prune")
        pruner = Pruner(self.driver, retention=dict.fromkeys(chosen, seconds), max_batches=1_000_000)
        return sum((await pruner.run_once()).values())

    async def count_prunable(
        self, *, older_than: float | dt.timedelta, states: str | Iterable[str] = _FINAL
    ) -> dict[str, int]:
        """How many jobs :meth:`prune` would delete now, by state; see ``App.count_prunable``."""
        seconds, chosen = self._prune_args(older_than, states, "count_prunable")
        out: dict[str, int] = {}
        for state in chosen:
            selection = JobSelection(states=(state,), finished_older_than=seconds)
            out[state] = (await self.driver.count_jobs(selection)).count
        return out

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

    # --- the dashboard's reads: under a time limit and a row cap ---------------------------------

    async def search_jobs(self, search: JobSearch, *, limit: int, time_limit: float) -> list[Job]:
        """Up to *limit* jobs matching *search*, newest first, the statement cut at *time_limit* seconds."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ConfigurationError(f"search_jobs(limit={limit!r}): must be an int from 1 to 10000")
        if search.queue is not None:
            check_queue(search.queue, where="search_jobs()")
        if search.task is not None:
            check_task_name(search.task, where="search_jobs()")
        return await self.driver.search_jobs(search, limit=limit, time_limit=time_limit)

    async def dashboard_counts(
        self, *, queue: str | None = None, cap: int, time_limit: float, finished: bool = True
    ) -> DashboardCounts:
        """Counts by queue and state, exact up to *cap* rows each and estimated beyond; see ``DashboardCounts``."""
        if queue is not None:
            check_queue(queue, where="dashboard_counts()")
        return await self.driver.dashboard_counts(queue=queue, cap=cap, time_limit=time_limit, finished=finished)

    async def job_dependants(self, job_id: int, *, limit: int, time_limit: float) -> list[Job]:
        """Up to *limit* jobs that depend on job *job_id*, by id."""
        job_id = check_job_id(job_id, "job_dependants")
        return await self.driver.job_dependants(job_id, limit=limit, time_limit=time_limit)

    async def list_workers(self) -> list[WorkerRow]:
        """Every registered worker, supervised ones first (by supervisor and slot)."""
        return await self.driver.list_workers()

    async def durable_overview(self, *, limit: int = 20) -> DurableOverview:
        """Up to *limit* executing jobs' progress, and how many jobs durable sleeps and event waits
        hold: what ``status`` and the overview show of durable jobs."""
        return await self.driver.durable_overview(limit=limit)

    async def database_health(self) -> DatabaseHealth:
        """The oldest open transaction on the server and the jobs table's dead tuples (PostgreSQL),
        or the write-ahead log's size (SQLite): what ``status`` and the overview show of bloat."""
        return await self.driver.database_health()

    def app_tasks(self) -> Mapping[str, Task[..., Any]]:
        """The tasks the app registers, by name."""
        return self._app.tasks

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

    # --- what the dashboard reads (see _insights.py) --------------------------------------------

    async def record_audit(
        self, *, actor: str, action: str, target: Mapping[str, Any] | str, count: int | None = 0
    ) -> AuditEntry:
        """Append an action to the audit table, stamped with the database's clock.

        Args:
            actor: who did it (the dashboard's user name, ``"cli"``, ...).
            action: what was done (``"retry"``, ``"cancel"``, ``"bulk_retry"``, ``"pause_queue"``, ...).
            target: what it was done to, as a JSON object: ``{"job_id": 7}``, ``{"queue": "mail"}``,
                or a bulk action's filter; a string is stored as ``{"target": string}``.
            count: how many jobs (or other things) it changed (None: not counted, stored as 0).

        Returns:
            The stored :class:`AuditEntry`.

        Raises:
            ValueError: an empty or over-long *actor* or *action*, or a negative *count*.
            TypeError: *target* is neither a JSON object nor a string.
        """
        return await _insights.record_audit(self._app, actor=actor, action=action, target=target, count=count)

    async def list_audit(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        """The audit entries, newest first.

        Args:
            limit: at most this many (1 to 500).
            before_id: only entries older than this one (the next page).

        Returns:
            The entries.

        Raises:
            ValueError: *limit* is out of range. TypeError: *before_id* is not an int.
        """
        return await _insights.list_audit(self._app, limit=limit, before_id=before_id)

    async def worker_health(self) -> list[WorkerHealth]:
        """Every registered worker and supervisor child: pid, host, state, uptime, heartbeat age
        (and whether it is stale), running jobs, processed/failed, restarts and the last exit
        reason of its slot. Supervised workers come first, by supervisor and slot.

        Returns:
            One :class:`~nursery_worker._insights.WorkerHealth` per worker.
        """
        return await _insights.worker_health(self._app)

    async def periodic_overview(self, *, runs: int = 5) -> list[PeriodicOverview]:
        """Every periodic schedule (as :meth:`list_periodic`) with its task's *runs* newest jobs and
        its completed and failed attempts over the last 24 hours.

        Args:
            runs: how many recent jobs to show per schedule (0 to 50).

        Returns:
            One :class:`~nursery_worker._insights.PeriodicOverview` per schedule, by name.

        Raises:
            ValueError: *runs* is out of range.
        """
        return await _insights.periodic_overview(self._app, runs=runs)

    async def job_graph(self, job_id: int) -> JobGraph:
        """Job *job_id*'s dependency graph: what it depends on and what depends on it, transitively,
        each job with its state (at most 200 jobs and 25 levels each way).

        Args:
            job_id: any job of the workflow.

        Returns:
            The :class:`~nursery_worker._insights.JobGraph`.

        Raises:
            JobNotFound: there is no such job. TypeError: *job_id* is not an int.
        """
        return await _insights.job_graph(self._app, check_job_id(job_id, "job_graph"))

    async def failures(self, *, window: str = "24h", recent: int = 50) -> FailureReport:
        """Failed and discarded attempts over *window*, grouped by task and by exception type, from
        the metric rollups, with the newest failed jobs (read through an index).

        Args:
            window: ``"1h"``, ``"24h"`` or ``"7d"``.
            recent: how many recent failed jobs to read (1 to 500).

        Returns:
            The :class:`~nursery_worker._insights.FailureReport`.

        Raises:
            ValueError: an unknown *window* or an out-of-range *recent*.
        """
        return await _insights.failures(self._app, window=window, recent=recent)

    async def metrics_history(self, *, period: str = "24h", task: str | None = None) -> MetricsHistory:
        """Per-task throughput, failure rate and p50/p95/p99 duration over *period*, one point per
        step, from the metric rollups the workers write (never from the jobs table).

        Args:
            period: ``"1h"`` and ``"6h"`` (per-minute rollups), ``"24h"``, ``"7d"`` or ``"30d"``
                (hourly rollups).
            task: only this task.

        Returns:
            The :class:`~nursery_worker._insights.MetricsHistory`.

        Raises:
            ValueError: an unknown *period*. TypeError: *task* is not a string.
        """
        return await _insights.metrics_history(self._app, period=period, task=task)

    async def _find_periodic(self, name: object, where: str) -> PeriodicInfo:
        """The schedule called *name* (the database's or the app's); ``PeriodicNotFound`` lists the others."""
        if not isinstance(name, str):
            raise TypeError(f"{where}: name must be a schedule's name (a str), got {name!r}")
        known = await self.list_periodic()
        for info in known:
            if info.name == name:
                return info
        names = ", ".join(repr(p.name) for p in known) or "none"
        raise PeriodicNotFound(
            f"{where}: no periodic schedule named {name!r}; known: {names} (a schedule reaches the database when a "
            "worker serving its queue starts; with the CLI, pass --app to include the app's own)"
        )

    async def _set_periodic_paused(self, name: str, *, paused: bool, where: str) -> bool:
        await self._find_periodic(name, where)
        changed = await self.driver.set_periodic_paused(name, paused=paused)
        if changed is None and paused:
            # Only the app defines it so far: register it as its workers will, then pause the row.
            await self.driver.register_periodic([self._app.schedules[name].entry()])
            changed = await self.driver.set_periodic_paused(name, paused=True)
        return bool(changed)

    async def pause_periodic(self, name: str) -> bool:
        """Pause schedule *name* for every worker; False if it was already paused; see ``App.pause_periodic``."""
        return await self._set_periodic_paused(name, paused=True, where="pause_periodic()")

    async def resume_periodic(self, name: str) -> bool:
        """Resume schedule *name*; False if it was not paused; see ``App.resume_periodic``."""
        return await self._set_periodic_paused(name, paused=False, where="resume_periodic()")

    async def trigger_periodic(self, name: str) -> Job:
        """Enqueue one run of schedule *name* now, as its tick would; see ``App.trigger_periodic``."""
        info = await self._find_periodic(name, "trigger_periodic()")
        schedule = self._app.schedules.get(name)
        if schedule is not None:  # the app's own: the very job its ticks enqueue (priority, unique key, ...)
            spec = schedule.job_for(info.now)
        else:  # only the database knows it: its task, queue and arguments as registered
            spec = self._app.job_by_name(info.task, dict(info.args), queue=info.queue)
        (job,) = await self.driver.insert_jobs([spec])
        logger.info("periodic %s triggered by hand: job %d (%s) in queue %r", name, job.id, job.task, job.queue)
        return job
